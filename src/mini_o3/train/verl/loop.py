"""The Mini-o3 agent loop for verl: registered as "mini_o3" (unless a config file already did).

verl imports it from the agent-loop config file (configs/verl/agent_loop.yaml names this
class as `_target_`), so only verl's workers ever import it; the rest of mini_o3 never does.
Read against verl 0.9.1 (verl/experimental/agent_loop/agent_loop.py): `AgentLoopBase.__init__`
(trainer_config, server_manager, tokenizer, processor, dataset_cls, data_config, ...),
`run(sampling_params, **row) -> AgentLoopOutput`, and `register(name)`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

try:
    from verl.experimental.agent_loop.agent_loop import (
        AgentLoopBase,
        AgentLoopMetrics,
        AgentLoopOutput,
        _agent_loop_registry,
        register,
    )
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(f"mini_o3.train.verl.loop runs inside verl; install it with pip install 'mini-o3[verl]' ({error})") from error

from mini_o3.models.backbone import Backbone
from mini_o3.models.families import backbone_for_model_type, read_backbone
from mini_o3.policies.local import PromptEncoder
from mini_o3.train.verl.episode import VerlEpisodeSettings, run_verl_episode
from mini_o3.train.verl.rows import AGENT_NAME, row_to_sample

_ENCODERS: dict[tuple[int, int], PromptEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def _encoder(tokenizer: Any, processor: Any, backbone: Backbone) -> PromptEncoder:
    # verl builds one loop object per rollout; the encoder (a tokenizer copy) is built once per worker.
    key = (id(tokenizer), id(processor))
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = PromptEncoder(tokenizer, processor.image_processor, backbone=backbone)
        return _ENCODERS[key]


def model_backbone(model_path: str | None, model_type: str | None) -> Backbone:
    """The family of the model verl trains: from its checkpoint's config.json, else the `hf_model_type` verl passes.

    Prompts must be in the family's markup (Qwen3.5 opens each assistant turn with "<think>\\n"),
    so an unknown family is an error, never a silent Qwen2.5-VL.
    """
    if model_path and (Path(model_path) / "config.json").is_file():
        return read_backbone(model_path)
    if model_type:
        return backbone_for_model_type(model_type, "verl's model")
    raise ValueError(
        f"the mini_o3 agent loop cannot tell the model's family: actor_rollout_ref.model.path ({model_path}) "
        "holds no config.json and verl passed no hf_model_type"
    )


class MiniO3AgentLoop(AgentLoopBase):
    """Runs one Mini-o3 zoom episode per dataset row and returns verl's output record."""

    def __init__(self, trainer_config: Any, server_manager: Any, tokenizer: Any, processor: Any, **kwargs: Any) -> None:
        self.settings = VerlEpisodeSettings.from_kwargs(kwargs)
        kwargs.pop("name", None)  # the config file's entry name, passed along by hydra
        model_path = getattr(getattr(getattr(trainer_config.config, "actor_rollout_ref", None), "model", None), "path", None)
        backbone = model_backbone(model_path, kwargs.get("hf_model_type"))
        super().__init__(trainer_config, server_manager, tokenizer, processor, **kwargs)
        if processor is None or getattr(processor, "image_processor", None) is None:
            raise ValueError("the mini_o3 agent loop needs a vision-language model with an image processor")
        self.response_length = int(self.config.actor_rollout_ref.rollout.response_length)
        self.encoder = _encoder(tokenizer, processor, backbone)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        """Run the episode of this row (a row written by `mini-o3 export verl`)."""
        sample, overrides = row_to_sample(kwargs)
        result = await run_verl_episode(
            self.server_manager, self.encoder, self.tokenizer, self.settings, sample,
            sampling_params, self.response_length, overrides,
        )
        metrics = AgentLoopMetrics(generate_sequences=result.generate_s, tool_calls=max(result.total_s - result.generate_s, 0.0))
        return AgentLoopOutput(**result.output_fields(), metrics=metrics)


# verl loads configs/verl/agent_loop.yaml into its registry first and imports this module while
# instantiating that entry; registering unconditionally would replace the entry, settings and
# all, with a bare one for every later rollout. So register only when no config did.
if AGENT_NAME not in _agent_loop_registry:
    register(AGENT_NAME)(MiniO3AgentLoop)
