"""Job configurations for `mini-o3 sft` and `mini-o3 rl`, and the presets that fill them.

A preset is a YAML file with an `sft:` and an `rl:` section whose keys are the fields below
(see configs/tiny-cpu.yaml and configs/qwen2.5-vl-7b.yaml). `load_preset("tiny-cpu")` finds a
named preset among the shipped ones; any other argument is read as a path. Relative paths inside
a preset (the DeepSpeed file) are resolved against the preset's folder. The data, model and
output paths are left empty by presets: the command line fills them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIRS = (
    Path(__file__).resolve().parent.parent / "configs",  # installed with the package
    Path(__file__).resolve().parents[3] / "configs",  # the repository's configs/ (editable installs)
)
"""Where named presets are looked up, in order."""


@dataclass
class SFTJobConfig:
    """Supervised fine-tuning on cold-start trajectories (shared/reference/mini-o3.md section 6)."""

    data: str = ""
    """The SFT dataset folder (JSONL rows {"messages", "images"}, as `mini-o3 collect` writes)."""
    model_path: str = ""
    """The starting checkpoint (a Qwen2.5-VL-class folder, or a tiny one)."""
    output_dir: str = ""
    """Where checkpoints, logs and the final model go."""
    epochs: float = 3.0
    """Passes over the data (the paper: 3)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 runs the full epochs."""
    learning_rate: float = 1e-5
    """Peak learning rate (the paper: 1e-5)."""
    lr_scheduler: str = "cosine"
    """transformers scheduler name (the paper: cosine)."""
    warmup_ratio: float = 0.1
    """Share of steps spent warming up (the paper: 0.1)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    per_device_batch_size: int = 1
    """Conversations per device per forward pass (the paper: 1)."""
    gradient_accumulation_steps: int = 4
    """Forward passes per optimizer step (the paper: 4)."""
    max_length: int = 32_768
    """Token cutoff; longer conversations are left out (counted in the log), never cut mid-image."""
    freeze_vision: bool = True
    """Freeze the vision tower and the projector (merger); the paper trains the language model only."""
    bf16: bool = False
    """Train in bfloat16 mixed precision (GPUs)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    deepspeed: str | None = None
    """A DeepSpeed JSON config (e.g. ZeRO-3 with CPU offload); None trains without DeepSpeed."""
    save_steps: int = 50
    """Save a resumable checkpoint every this many optimizer steps."""
    save_total_limit: int | None = 2
    """Keep at most this many checkpoints (None keeps all)."""
    logging_steps: int = 1
    """Log every this many optimizer steps."""
    report_to: list[str] = field(default_factory=lambda: ["none"])
    """Extra loggers for transformers (e.g. ["tensorboard"]); the JSONL log is always written."""
    resume: bool = True
    """Resume from the last checkpoint in output_dir when there is one."""
    seed: int = 0
    """Seed for shuffling and initialisation."""
    dataloader_num_workers: int = 0
    """Worker processes that load and encode conversations."""
    limit: int | None = None
    """Use at most this many conversations (None uses all)."""


@dataclass
class RLJobConfig:
    """GRPO with over-turn masking (shared/reference/mini-o3.md sections 4-5)."""

    data: str = ""
    """A dataset spec for `mini_o3.data.loading.load_dataset` (e.g. synthetic:DIR, visualprobe:FILE)."""
    model_path: str = ""
    """The starting checkpoint, usually the SFT output."""
    output_dir: str = ""
    """Where checkpoints, logs, rollouts and the learning curve go."""
    limit: int | None = None
    """Use at most this many questions (None uses all)."""
    steps: int = 100
    """RL steps: each samples `prompts_per_step` questions and updates on them."""
    prompts_per_step: int = 256
    """Questions per RL step, after dynamic sampling (the paper: 256)."""
    mini_batch_prompts: int = 32
    """Questions per optimizer step (the paper: 32, so 8 optimizer steps per RL step)."""
    num_generations: int = 16
    """Rollouts per question, the GRPO group (the paper: 16)."""
    micro_batch_size: int = 4
    """Rollouts per forward/backward pass on one device (memory, not maths)."""
    old_logprobs: str = "recompute"
    """Where the PPO ratio's old log-probs come from when one RL step takes several optimizer steps:
    "recompute" (the release: one forward of the actor over the step's rollouts before the first
    update; verl/workers/fsdp_workers.py:683-692 at 8654dbf) or "rollout" (the log-probs the local
    engine recorded while sampling: the same weights and numbers, without that forward; needs the
    transformers policy, not vLLM, and temperature 1, where sampling and training read the same
    distribution). A rollout without recorded log-probs is recomputed either way."""
    chunked_logprobs: bool = True
    """Token log-probs through TRL's chunked LM head, which never holds the whole logits (a 150K
    vocabulary times 8K tokens would not fit). False computes the logits at once: several times
    faster on CPU for a small vocabulary (the tiny model's 1,024), the same numbers."""
    rollouts_per_forward: int = 0
    """Rollouts per model forward inside a micro-batch (speed, not maths); 0: the whole micro-batch.
    1 runs each rollout at its own length, unpadded, so attention takes SDPA's causal kernel
    instead of a masked one: faster on CPU. Old log-probs are recomputed in forwards as small."""
    ppo_epochs: int = 1
    """Passes over each RL step's rollouts (the paper: 1)."""
    learning_rate: float = 1e-6
    """The paper: 1e-6."""
    lr_scheduler: str = "constant"
    """transformers scheduler name (the paper: constant)."""
    warmup_ratio: float = 0.0
    """Share of steps spent warming up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (the paper: 1.0)."""
    clip_low: float = 0.2
    """Lower clip: ratios below 1 - clip_low stop pulling down (the paper: 0.2)."""
    clip_high: float = 0.3
    """Upper clip: ratios above 1 + clip_high stop pushing up (the paper: 0.3)."""
    overturn_mask: bool = True
    """Mask every token of over-turn and over-context rollouts (False for the ablation)."""
    loss_aggregation: str = "rollout_token_mean"
    """How token losses make the step's loss: "rollout_token_mean" (the released run: the mean over
    the optimizer step's rollouts of each rollout's token mean, a masked rollout counting as 0,
    whatever the micro-batching) or "token_mean" (DAPO: one token mean over the unmasked tokens)."""
    drop_failed_groups: bool = True
    """A rollout whose policy failed (status error) or whose judge failed removes its whole group
    from the step, which is refilled like dynamic sampling (the release drops a group whose judge
    failed). False keeps the group: the failed rollout is masked and scored 0 in its group."""
    void_unclosed_grounding: bool = True
    """A truncated rollout whose last turn opened <grounding> and never closed it (cut by the token
    limit) is void, as in the release: reward 0 and trained. False masks it as over-turn."""
    ignore_void: bool = False
    """Mask void rollouts (the last turn made no zoom and gave no complete answer, or was cut by the
    token limit) instead of training them with reward 0: the release's `ignore_void` switch
    (ppo_trainer.yaml:75, dp_actor.py:325-328), off in its launch. Their reward still counts in
    their group's statistics. The demo turns it on (docs/results.md says why)."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards all agree and sample more questions to refill the step."""
    uniform_std: float = 1e-4
    """Groups with a reward std below this count as uniform."""
    max_sampling_rounds: int = 4
    """Groups each slot of an RL step may roll out before giving up on refilling it (the slot is then
    filled with a rejected group, with no loss). A rejected group is replaced as soon as it finishes
    (`train.refill`)."""
    max_turns: int = 6
    """Assistant turns per rollout in training (the paper: 6)."""
    max_images: int | None = 12
    """Images per rollout, the original included (the paper: 12)."""
    max_context_tokens: int = 32_768
    """Context window of a rollout."""
    context_reserve: int = 2_000
    """A rollout is over-context once within this many tokens of the window."""
    max_new_tokens: int = 8_192
    """Tokens per assistant turn (the paper: 8,192)."""
    numbering: str = "reference"
    """Observation labels: "reference" (as the released checkpoint) or "consistent"."""
    temperature: float = 1.0
    """Sampling temperature of rollouts (the paper: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling of rollouts."""
    image_max_pixels: int = 2_000_000
    """Images are shown at most this many pixels (the paper: 2M)."""
    image_min_pixels: int = 40_000
    """Images are shown at least this many pixels."""
    concurrency: int = 64
    """Episodes in flight at once per process."""
    policy_batch_size: int = 32
    """Most turns decoded together by local transformers generation (the cached engine also keeps this many conversations' caches)."""
    rollout_engine: str = "auto"
    """LocalPolicy's engine for rollouts: auto, cached (per-episode KV cache, continuous batching) or generate (model.generate per batch)."""
    judge_url: str | None = None
    """An OpenAI-compatible endpoint for the optional LLM judge (rule-based scoring first; None: rules only)."""
    judge_model: str | None = None
    """The judge model's name."""
    freeze_vision: bool = False
    """Freeze the vision tower and the projector. The release's RL freezes nothing (only its SFT
    freezes them), so False is the paper's setting."""
    bf16: bool = False
    """Train in bfloat16 mixed precision (GPUs)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    deepspeed: str | None = None
    """A DeepSpeed JSON config; None trains without DeepSpeed."""
    use_vllm: bool = False
    """Generate rollouts with vLLM (colocated on each GPU) instead of transformers."""
    vllm_gpu_memory_utilization: float = 0.4
    """Share of GPU memory vLLM may take when colocated with training."""
    vllm_tensor_parallel_size: int = 1
    """Tensor parallelism of the colocated vLLM engine (1 is the supported setting)."""
    save_steps: int = 10
    """Save a resumable checkpoint every this many RL steps."""
    save_total_limit: int | None = 2
    """Keep at most this many checkpoints (None keeps all)."""
    report_to: list[str] = field(default_factory=lambda: ["none"])
    """Extra loggers for transformers (e.g. ["tensorboard"]); the JSONL log is always written."""
    save_rollouts: bool = True
    """Stream every rollout's trajectory (text, boxes, status, reward) to rollouts.jsonl."""
    save_token_ids: bool = False
    """Keep each turn's sampled token ids and log-probs in rollouts.jsonl (for audits; makes it large)."""
    resume: bool = True
    """Resume from the last checkpoint in output_dir when there is one."""
    seed: int = 0
    """Seed for sampling questions and rollouts."""

    def optimizer_steps_per_rl_step(self) -> int:
        """Optimizer steps each RL step takes (prompts_per_step / mini_batch_prompts, times ppo_epochs)."""
        return self.prompts_per_step // self.mini_batch_prompts * self.ppo_epochs

    def validate(self, num_processes: int = 1) -> None:
        """Raise ValueError naming the field when the batch sizes do not fit together."""
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 for group advantages, got {self.num_generations}")
        if self.prompts_per_step % self.mini_batch_prompts:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be a multiple of mini_batch_prompts ({self.mini_batch_prompts})"
            )
        if self.prompts_per_step % num_processes:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be a multiple of the number of processes ({num_processes}) "
                "so that every group of rollouts stays on one process"
            )
        rollouts = self.mini_batch_prompts * self.num_generations
        if rollouts % (self.micro_batch_size * num_processes):
            raise ValueError(
                f"mini_batch_prompts x num_generations ({rollouts}) must be a multiple of micro_batch_size x processes "
                f"({self.micro_batch_size} x {num_processes})"
            )
        if self.old_logprobs not in ("recompute", "rollout"):
            raise ValueError(f"old_logprobs must be recompute or rollout, got {self.old_logprobs!r}")
        if self.old_logprobs == "rollout" and (self.use_vllm or self.temperature != 1.0):
            raise ValueError(
                "old_logprobs: rollout needs the transformers policy at temperature 1 (the log-probs vLLM or another "
                f"temperature records are not the training forward's); got use_vllm={self.use_vllm}, temperature={self.temperature}. "
                "Use old_logprobs: recompute"
            )
        if self.rollouts_per_forward < 0:
            raise ValueError(f"rollouts_per_forward must be 0 (the whole micro-batch) or more, got {self.rollouts_per_forward}")
        if self.loss_aggregation not in ("rollout_token_mean", "token_mean"):
            raise ValueError(f"loss_aggregation must be rollout_token_mean or token_mean, got {self.loss_aggregation!r}")
        if self.rollout_engine not in ("auto", "cached", "generate"):
            raise ValueError(f"rollout_engine must be auto, cached or generate, got {self.rollout_engine!r}")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ValueError(f"clip bounds must satisfy 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.vllm_tensor_parallel_size != 1 and self.use_vllm:
            raise ValueError("vllm_tensor_parallel_size must be 1: rollouts call the colocated engine from each process on its own")


@dataclass
class Preset:
    """A named pair of job configurations."""

    name: str
    """The preset's name (its file name without .yaml)."""
    sft: SFTJobConfig
    """The SFT job."""
    rl: RLJobConfig
    """The RL job."""
    path: Path | None = None
    """The file it was read from."""


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    names: set[str] = set()
    for folder in PRESET_DIRS:
        if folder.is_dir():
            names.update(path.stem for path in folder.glob("*.yaml"))
    return sorted(names)


def find_preset(name_or_path: str | Path) -> Path:
    """The YAML file behind a preset name or path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    for folder in PRESET_DIRS:
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no preset or file named {name_or_path!r}; shipped presets: {', '.join(preset_names()) or 'none found'}, "
        "or give the path of a YAML file with sft: and rl: sections"
    )


def load_preset(name_or_path: str | Path) -> Preset:
    """Read a preset by name (tiny-cpu, qwen2.5-vl-7b) or from a YAML file."""
    import yaml

    path = find_preset(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read preset {path}: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"preset {path} must be a mapping with sft: and rl: sections")
    unknown = set(raw) - {"sft", "rl", "description"}
    if unknown:
        raise ValueError(f"preset {path} has unknown sections {sorted(unknown)}; use sft: and rl:")
    sft = _build(SFTJobConfig, raw.get("sft") or {}, path, "sft")
    rl = _build(RLJobConfig, raw.get("rl") or {}, path, "rl")
    return Preset(path.stem, sft, rl, path)


def _build(cls: type, values: dict[str, Any], path: Path, section: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{path}: section {section}: must be a mapping of field: value")
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{path}: section {section}: unknown fields {unknown}; known fields: {', '.join(sorted(names))}")
    values = dict(values)
    deepspeed = values.get("deepspeed")
    if deepspeed and not Path(deepspeed).is_absolute():
        values["deepspeed"] = str((path.parent / deepspeed).resolve())
    return cls(**values)


def override_value(text: str) -> Any:
    """A `--set FIELD=VALUE` value as JSON when it parses (numbers, true/false, null, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def with_overrides(config: Any, **overrides: Any) -> Any:
    """A copy of `config` with the given fields replaced; None is a value (`--set deepspeed=null` turns DeepSpeed off)."""
    names = {item.name for item in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{type(config).__name__} has no fields {unknown}")
    return dataclasses.replace(config, **overrides)


def require_backends(config: Any) -> None:
    """Raise ValueError naming the fix when the config asks for DeepSpeed or vLLM and the package is missing."""
    import importlib.util

    if getattr(config, "deepspeed", None) and importlib.util.find_spec("deepspeed") is None:
        raise ValueError(
            f"the config asks for DeepSpeed (deepspeed: {config.deepspeed}) but the deepspeed package is not installed: "
            "pip install deepspeed, or train without it on one GPU with --set deepspeed=null"
        )
    if getattr(config, "use_vllm", False) and importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "the config asks for vLLM rollouts (use_vllm: true) but the vllm package is not installed: "
            "pip install vllm, or generate with transformers with --set use_vllm=false"
        )


def config_json(config: Any) -> str:
    """The configuration as indented JSON (printed at start and saved beside the outputs)."""
    return json.dumps(dataclasses.asdict(config), indent=2, default=str)
