"""The Mini-o3 episode inside verl's agent loop, against a server that generates with the tiny model.

verl itself runs here only where it is installed (it pins transformers<5.11, so it does not go
into the project's environment): then the real `AgentLoopBase`, registry and `AgentLoopOutput`
are used. Elsewhere a double pinned from verl 0.9.1's source stands in for them:
verl/experimental/agent_loop/agent_loop.py:79-113 (AgentLoopMetrics, AgentLoopOutput),
:195-200 (DictConfigWrap), :224-256 (AgentLoopBase.__init__), :467-478 (the registry and
`register`). The server follows verl/workers/rollout/llm_server.py:225-236 (`generate`) and
replica.py:39-51 (`TokenOutput`): token ids in, token ids and log-probs out.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import types
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mini_o3.agent import protocol
from mini_o3.agent.sample import Sample
from mini_o3.agent.trajectory import Status
from mini_o3.models.tiny import build_processor, build_tiny, load_checkpoint
from mini_o3.policies.local import PromptEncoder
from mini_o3.train.tokenize import ConversationEncoder
from mini_o3.train.verl.episode import LoopResult, VerlEpisodeSettings, run_verl_episode, trained_mask
from mini_o3.train.verl.rows import export_rows, row_to_sample, sample_to_row, write_parquet

SMALL = dict(max_pixels=224 * 224, min_pixels=56 * 56, context_reserve=64, max_new_tokens=48)
ZOOM = "<think>Zoom in.</think>" + protocol.render_zoom(protocol.Zoom((0.1, 0.1, 0.6, 0.6)))
ZOOM_AGAIN = "<think>Closer.</think>" + protocol.render_zoom(protocol.Zoom((0.0, 0.0, 0.5, 0.5), "observation_1"))
BAD_ZOOM = '<think>Try.</think><grounding>{"bbox_2d": [0.5, 0.5]}</grounding>'
ANSWER = "<think>Red.</think>" + protocol.render_answer("red")
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


# ---------------------------------------------------------------- a server over the tiny model


class TinyServer:
    """verl's token-in/token-out `generate` over the tiny Qwen2.5-VL, on CPU.

    Free turns are sampled from the model (vision tokens suppressed, stopping at an end token
    or `</grounding>`); a `script` forces each turn's text instead, as constrained decoding
    would, and still reports the model's own log-probs of the forced tokens.
    """

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, script: list[str] | None = None, seed: int = 0) -> None:
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.script = list(script) if script is not None else None
        self.generator = torch.Generator().manual_seed(seed)
        self.image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.end_ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        self.banned = [tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")]
        self.calls: list[dict[str, Any]] = []

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        **kwargs: Any,
    ) -> Any:
        pixels = self.image_processor(images=list(image_data), return_tensors="pt") if image_data else None
        pads = sum(1 for token in prompt_ids if token == self.image_id)
        grid_pads = int(pixels["image_grid_thw"].prod(-1).sum()) // 4 if pixels is not None else 0
        assert pads == grid_pads, f"{pads} image pads in the prompt for images worth {grid_pads}"
        if self.script is not None:
            ids = self.tokenizer.encode(self.script.pop(0), add_special_tokens=False)
            if not ids[-1:] or not self._text(ids).endswith(protocol.STOP_STRING):
                ids.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        else:
            ids = self._sample(prompt_ids, pixels, sampling_params["max_tokens"], sampling_params["stop"])
        scored = [0 if token in self.banned else token for token in ids]  # a forced vision token has no image behind it
        logprobs = token_logprobs(self.model, prompt_ids + scored, pixels, self.image_id)[len(prompt_ids) :]
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids), "token_ids": ids, "images": len(image_data or []), "params": dict(sampling_params)})
        return types.SimpleNamespace(token_ids=ids, log_probs=logprobs, stop_reason="completed", num_preempted=None)

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _sample(self, prompt: list[int], pixels: Any, max_tokens: int, stops: list[str]) -> list[int]:
        ids: list[int] = []
        with torch.inference_mode():
            while len(ids) < max_tokens:
                logits = forward_logits(self.model, prompt + ids, pixels, self.image_id)[-1]
                logits[self.banned] = float("-inf")
                token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator))
                ids.append(token)
                if token in self.end_ids or any(self._text(ids).endswith(stop) for stop in stops):
                    break
        return ids


def forward_logits(model: Any, ids: list[int], pixels: Any, image_id: int) -> torch.Tensor:
    """Logits of one sequence, with every image's patches and the multimodal positions."""
    input_ids = torch.tensor([ids])
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if pixels is not None:
        inputs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"], mm_token_type_ids=(input_ids == image_id).long())
    with torch.inference_mode():
        return model(**inputs).logits[0].float()


def token_logprobs(model: Any, ids: list[int], pixels: Any, image_id: int) -> list[float]:
    """log p(token i | tokens < i) for every position (0.0 for the first)."""
    logits = forward_logits(model, ids, pixels, image_id)
    picked = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return [0.0] + picked.tolist()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return load_checkpoint(build_tiny(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def encoder(tiny: tuple) -> PromptEncoder:
    return PromptEncoder(tiny[1], tiny[2])


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    image = Image.new("RGB", (448, 320), (200, 200, 200))
    image.paste((220, 30, 30), (100, 90, 150, 140))
    path = tmp_path_factory.mktemp("images") / "scene.png"
    image.save(path)
    return Sample(id="s0", image=path, question="What is the colour of the square?", answer="red", source="unit")


def run(tiny: tuple, encoder: PromptEncoder, sample: Sample, script: list[str] | None, response_length: int = 4096, **settings: Any) -> tuple[LoopResult, TinyServer]:
    server = TinyServer(*tiny, script=script)
    config = VerlEpisodeSettings(**{**SMALL, **settings})
    result = asyncio.run(run_verl_episode(server, encoder, tiny[1], config, sample, SAMPLING, response_length))
    return result, server


def model_runs(result: LoopResult, value: int = 1) -> list[list[int]]:
    """The maximal runs of response ids whose mask equals `value`."""
    runs, current = [], []
    for token, bit in zip(result.response_ids, result.response_mask):
        if bit == value:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


# ---------------------------------------------------------------- the episode


def test_ids_are_continuous_across_turns_and_only_sampled_tokens_carry_the_mask(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    result, server = run(tiny, encoder, sample, [ZOOM, ZOOM_AGAIN, ANSWER])
    assert result.status is Status.ANSWERED and not result.over_turn and result.reward == 1.0
    full = result.prompt_ids + result.response_ids
    for call in server.calls:  # each turn was generated from exactly the ids so far
        start = len(call["prompt_ids"])
        assert full[:start] == call["prompt_ids"]
        assert full[start : start + len(call["token_ids"])] == call["token_ids"]
    assert server.calls[0]["prompt_ids"] == result.prompt_ids
    assert model_runs(result) == [call["token_ids"] for call in server.calls]
    assert [call["images"] for call in server.calls] == [1, 2, 3]
    assert len(result.images) == 3 and len(result.response_logprobs) == len(result.response_ids)
    assert all(lp == 0.0 for lp, bit in zip(result.response_logprobs, result.response_mask) if bit == 0)
    assert len({call["request_id"] for call in server.calls}) == 1
    assert server.calls[0]["params"]["stop"] == [protocol.STOP_STRING] and server.calls[0]["params"]["include_stop_str_in_output"]
    assert result.num_turns == 1 + 3 + 2
    fields = result.output_fields()
    assert fields["reward_score"] == 1.0 and fields["multi_modal_data"]["images"] == result.images
    assert fields["extra_fields"]["over_turn"] is False and fields["extra_fields"]["reward_extra_info"]["acc"] == 1.0


def test_the_trainer_forward_pass_reproduces_the_rollout_log_probs(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    # Prompt + response with every image, as verl's actor recomputes old log-probs: the pads,
    # the image order and the ids must line up for these to match the server's numbers.
    result, _ = run(tiny, encoder, sample, [ZOOM, BAD_ZOOM, ZOOM_AGAIN, ANSWER])
    model, _, image_processor = tiny
    pixels = image_processor(images=result.images, return_tensors="pt")
    recomputed = token_logprobs(model, result.prompt_ids + result.response_ids, pixels, encoder.image_token_id)[len(result.prompt_ids) :]
    sampled = [(a, b) for a, b, bit in zip(result.response_logprobs, recomputed, result.response_mask) if bit]
    assert len(sampled) == sum(result.response_mask) > 20
    assert max(abs(a - b) for a, b in sampled) < 1e-4


def test_the_ids_are_the_trl_paths_ids_for_the_same_episode(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    # BAD_ZOOM + " then" ends with <|im_end|> (the turn ran past the stop string): closed by "\n" alone.
    result, server = run(tiny, encoder, sample, [ZOOM, BAD_ZOOM + " then", BAD_ZOOM, ANSWER])
    assert server.calls[1]["token_ids"][-1] == tiny[1].convert_tokens_to_ids("<|im_end|>")
    assert [turn.feedback for turn in result.episode.trajectory.turns] == ["observation", "error", "error", None]
    assert result.episode.trajectory.turns[1].text == BAD_ZOOM  # the action ends at the stop string, as LocalPolicy's
    encoded = ConversationEncoder(tiny[1], tiny[2]).encode_episode(result.episode, with_pixels=False)
    ours = result.prompt_ids + result.response_ids
    assert encoded.input_ids[: len(ours)] == ours
    assert tiny[1].decode(encoded.input_ids[len(ours) :]) == "\n"  # the TRL path closes the last turn
    assert encoded.assistant_mask[len(result.prompt_ids) : len(ours)] == result.response_mask
    assert encoded.prompt_length == len(result.prompt_ids)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl", "qwen3.5"])
def test_each_familys_episode_is_in_its_markup_and_is_the_trl_paths_and_the_local_policys(family: str, tmp_path: Path, sample: Sample) -> None:
    from mini_o3.models.families import backbone_of

    model, tokenizer, image_processor = family_tiny = load_checkpoint(build_tiny(tmp_path / "model", family=family))
    backbone = backbone_of(model)
    encoder = PromptEncoder(tokenizer, image_processor, backbone=backbone)
    result, server = run(family_tiny, encoder, sample, [ZOOM, BAD_ZOOM + " then", ANSWER])
    ours = result.prompt_ids + result.response_ids
    # The TRL path's ids and mask for the same episode (closed by the same sampled_turn) ...
    encoded = ConversationEncoder(tokenizer, image_processor, backbone).encode_episode(result.episode, with_pixels=False)
    assert encoded.input_ids[: len(ours)] == ours and tokenizer.decode(encoded.input_ids[len(ours) :]) == "\n"
    assert encoded.assistant_mask[len(result.prompt_ids) : len(ours)] == result.response_mask
    # ... each prompt the server saw is the local policies' prompt for the conversation so far ...
    messages = result.episode.trajectory.messages(images=[view.image for view in result.episode.views])
    assistant_at = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    for call, index in zip(server.calls, assistant_at, strict=True):
        assert call["prompt_ids"] == encoder.encode(messages[:index]).input_ids
    # ... and the family's markup: Qwen3.5's header opens the thought, its template trims each message.
    header = tokenizer.decode(encoder.assistant_header())
    assert header == backbone.assistant_header and tokenizer.decode(ours).count(header) == 3
    assert header.endswith("<think>\n") == (family == "qwen3.5")


def test_observation_and_error_turn_tokens_are_masked(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    result, _ = run(tiny, encoder, sample, [BAD_ZOOM, ZOOM, ANSWER])
    hidden = [tiny[1].decode(run_) for run_ in model_runs(result, value=0)]
    assert "ERROR occurs during grounding" in hidden[0] and "<|im_start|>assistant\n" in hidden[0]
    assert "(Observation 2)" in hidden[1] and hidden[1].count("<|image_pad|>") > 0  # numbering counts the error turn
    shown = tiny[1].decode(result.response_ids)
    assert all(text not in tiny[1].decode(run_) for run_ in model_runs(result) for text in ("ERROR", "<|im_start|>"))
    assert shown.count("<|vision_start|>") == 1 and len(result.images) == 2


def test_an_over_turn_rollout_keeps_its_tokens_but_carries_no_loss_and_no_reward(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    result, server = run(tiny, encoder, sample, [ZOOM, ZOOM, ZOOM], max_turns=3)
    assert result.status is Status.OVER_TURN and result.over_turn and result.reward == 0.0
    assert len(server.calls) == 3 and len(result.images) == 3  # the last zoom is never executed
    assert result.response_ids[-len(server.calls[-1]["token_ids"]) :] == server.calls[-1]["token_ids"]
    assert set(result.response_mask) == {0} and len(result.response_mask) == len(result.response_ids)
    assert result.output_fields()["extra_fields"]["over_turn"] is True
    unmasked, _ = run(tiny, encoder, sample, [ZOOM, ZOOM, ZOOM], max_turns=3, mask_over_turn=False)
    assert sum(unmasked.response_mask) == sum(len(call["token_ids"]) for call in server.calls)


def test_the_image_budget_ends_an_episode_as_over_turn(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    result, server = run(tiny, encoder, sample, [ZOOM, ZOOM, ZOOM], max_turns=6, max_images=2)
    assert result.status is Status.OVER_TURN and result.over_turn and len(result.images) == 2 and len(server.calls) == 2


def test_the_response_never_outgrows_verls_response_length(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    result, _ = run(tiny, encoder, sample, [ZOOM] * 6, response_length=260)
    assert result.status is Status.OVER_CONTEXT and result.over_turn and set(result.response_mask) == {0}
    assert len(result.response_ids) <= 260


def test_a_row_can_raise_the_turn_limit_for_validation(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    server = TinyServer(*tiny, script=[ZOOM] * 4 + [ANSWER])
    config = VerlEpisodeSettings(**{**SMALL, "max_turns": 3})
    result = asyncio.run(run_verl_episode(server, encoder, tiny[1], config, sample, SAMPLING, 8192, {"max_turns": 12}))
    assert result.status is Status.ANSWERED and result.episode.trajectory.num_turns == 5


class PerEpisodeScript(TinyServer):
    """The same script for every episode, by the turn index of each request id."""

    def __init__(self, *args: Any, turns: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turns = turns

    async def generate(self, request_id: str, **kwargs: Any) -> Any:
        text = self.turns[sum(1 for call in self.calls if call["request_id"] == request_id)]
        await asyncio.sleep(0)  # let the other episodes' turns interleave with this one
        self.script = [text]  # the parent's generate never awaits: nothing runs between this and its pop
        return await super().generate(request_id, **kwargs)


def test_many_episodes_share_one_event_loop_and_keep_their_own_ids(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    # verl runs every rollout of a worker as a coroutine on one event loop; each episode's turns
    # hop from its thread to that loop and back.
    server = PerEpisodeScript(*tiny, turns=[ZOOM, ZOOM_AGAIN, ANSWER])
    config = VerlEpisodeSettings(**SMALL)

    async def many() -> list[LoopResult]:
        return await asyncio.gather(*(run_verl_episode(server, encoder, tiny[1], config, sample, SAMPLING, 4096) for _ in range(6)))

    results = asyncio.run(many())
    assert len({call["request_id"] for call in server.calls}) == 6 and len(server.calls) == 18
    finals = set()
    for request_id in {call["request_id"] for call in server.calls}:
        chain = [call for call in server.calls if call["request_id"] == request_id]
        for before, after in zip(chain, chain[1:]):  # each turn continues its own episode's ids
            assert after["prompt_ids"][: len(before["prompt_ids"]) + len(before["token_ids"])] == before["prompt_ids"] + before["token_ids"]
        finals.add(tuple(chain[-1]["prompt_ids"] + chain[-1]["token_ids"]))
    assert finals == {tuple(result.prompt_ids + result.response_ids) for result in results}
    assert all(result.status is Status.ANSWERED and len(result.images) == 3 and result.reward == 1.0 for result in results)
    assert len(finals) == 1  # the same script and image: every episode came out the same, none mixed with another


class FailingServer(TinyServer):
    """The tiny model's server, dead from call `fail_at` on."""

    def __init__(self, *args: Any, fail_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_at = fail_at

    async def generate(self, request_id: str, **kwargs: Any) -> Any:
        if len(self.calls) >= self.fail_at:
            raise ConnectionError("server gone")
        return await super().generate(request_id, **kwargs)


def test_a_server_failure_mid_episode_is_an_error_rollout_without_loss(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    server = FailingServer(*tiny, script=[ZOOM, ANSWER], fail_at=1)
    config = VerlEpisodeSettings(**SMALL)
    result = asyncio.run(run_verl_episode(server, encoder, tiny[1], config, sample, SAMPLING, 4096))
    assert result.status is Status.ERROR and "server gone" in result.episode.trajectory.error
    assert result.reward == 0.0 and not result.over_turn and set(result.response_mask) == {0}
    assert result.response_ids[: len(server.calls[0]["token_ids"])] == server.calls[0]["token_ids"]
    dead = FailingServer(*tiny, script=[ZOOM], fail_at=0)
    with pytest.raises(RuntimeError, match="no turn"):
        asyncio.run(run_verl_episode(dead, encoder, tiny[1], config, sample, SAMPLING, 4096))


def test_a_sampled_vision_token_ends_the_episode_as_an_error_before_that_token(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    result, server = run(tiny, encoder, sample, [ZOOM, "<think>See <|image_pad|> here</think><answer>red</answer>"])
    assert result.status is Status.ERROR and "vision token" in result.episode.trajectory.error
    assert encoder.image_token_id not in server.calls[1]["prompt_ids"][len(server.calls[0]["prompt_ids"]) :][: len(server.calls[0]["token_ids"])]
    assert tiny[1].decode(result.response_ids).endswith("<think>See ") and set(result.response_mask) == {0}
    assert sum(1 for token in result.prompt_ids + result.response_ids if token == encoder.image_token_id) == sum(
        encoder.image_tokens(*image.size) for image in result.images
    )


@pytest.mark.slow
def test_free_sampling_from_the_tiny_model_runs_whole_episodes(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    for seed in range(3):
        server = TinyServer(*tiny, seed=seed)
        config = VerlEpisodeSettings(**SMALL)
        result = asyncio.run(run_verl_episode(server, encoder, tiny[1], config, sample, SAMPLING, 1024))
        assert model_runs(result) == [call["token_ids"] for call in server.calls]
        assert result.status is not Status.ERROR and result.reward == 0.0
        assert len(result.response_ids) == len(result.response_mask) == len(result.response_logprobs)


def test_the_trained_mask_follows_the_trl_paths_rule() -> None:
    mask = [0, 1, 1, 0, 1]
    for status in (Status.OVER_TURN, Status.OVER_CONTEXT, Status.ERROR):
        assert trained_mask(mask, status) == [0] * 5
    for status in (Status.ANSWERED, Status.NO_ANSWER):
        assert trained_mask(mask, status) == mask
    assert trained_mask(mask, Status.OVER_TURN, mask_over_turn=False) == mask
    assert trained_mask(mask, Status.ERROR, mask_over_turn=False) == [0] * 5


# ---------------------------------------------------------------- rows and export


def test_rows_round_trip_a_sample_with_its_limit_overrides(sample: Sample) -> None:
    row = sample_to_row(Sample(**{**sample.__dict__, "options": {"A": "red", "B": "blue"}}), 7, {"max_turns": 12})
    assert row["agent_name"] == "mini_o3" and row["extra_info"]["index"] == 7 and row["data_source"] == "unit"
    back, limits = row_to_sample(row)
    assert (back.id, back.question, back.answer, back.options, back.image) == ("s0", sample.question, "red", {"A": "red", "B": "blue"}, Path(sample.image).resolve())
    assert limits == {"max_turns": 12}
    assert row_to_sample({**row, "extra_info": json.dumps(row["extra_info"])})[0] == back
    with pytest.raises(ValueError, match="unknown limit"):
        sample_to_row(sample, 0, {"turns": 3})


def test_only_the_registered_loop_module_imports_verl() -> None:
    import re

    source = Path(__file__).resolve().parents[1] / "src" / "mini_o3"
    importers = sorted(str(path.relative_to(source)) for path in source.rglob("*.py") if re.search(r"^\s*(from|import) verl\b", path.read_text(), re.M))
    assert importers == ["train/verl/loop.py"]


def test_export_writes_in_memory_images_beside_the_rows(tmp_path: Path) -> None:
    image = Image.new("RGB", (64, 48), (1, 2, 3))
    rows = export_rows([Sample(id="m", image=image, question="q?", answer="a")], tmp_path / "images")
    back, _ = row_to_sample(rows[0])
    assert Image.open(back.image).size == (64, 48)


def test_export_verl_command_writes_parquet_the_loop_reads(sample: Sample, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from mini_o3.cli import app

    Image.open(sample.image).save(tmp_path / "scene.png")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "s0", "image": "scene.png", "question": sample.question, "answer": "red"}) + "\n")
    out = tmp_path / "out" / "train.parquet"
    result = CliRunner().invoke(app, ["export", "verl", f"jsonl:{data}", str(out), "--max-turns", "12"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 1 and rows[0]["prompt"] == [{"role": "user", "content": sample.question}]
    back, limits = row_to_sample(rows[0])
    assert back.answer == "red" and back.image == (tmp_path / "scene.png").resolve() and limits == {"max_turns": 12}
    bad = CliRunner().invoke(app, ["export", "verl", str(tmp_path / "missing.jsonl"), str(out)])
    assert bad.exit_code == 2 and "missing.jsonl" in bad.output


# ---------------------------------------------------------------- the registered loop


def _verl_double() -> None:
    """Stand-ins for the verl names the loop uses, pinned from verl 0.9.1 (see the module docstring)."""
    from pydantic import BaseModel

    class AgentLoopMetrics(BaseModel):
        generate_sequences: float = 0.0
        tool_calls: float = 0.0
        compute_score: float = 0.0
        num_preempted: int = -1

    class AgentLoopOutput(BaseModel):
        prompt_ids: list[int]
        response_ids: list[int]
        response_mask: list[int]
        response_logprobs: Optional[list[float]] = None
        routed_experts: Optional[Any] = None
        multi_modal_data: Optional[dict[str, Any]] = None
        reward_score: Optional[float] = None
        num_turns: int = 0
        metrics: AgentLoopMetrics
        extra_fields: dict[str, Any] = {}

    class DictConfigWrap:
        def __init__(self, config: Any) -> None:
            self.config = config

    class AgentLoopBase:
        def __init__(self, trainer_config, server_manager, tokenizer, processor, dataset_cls, data_config, hf_model_type=None, **kwargs):
            self.config = trainer_config.config
            self.server_manager, self.tokenizer, self.processor = server_manager, tokenizer, processor
            self.dataset_cls, self.data_config = dataset_cls, data_config.config

    registry: dict[str, dict] = {}

    def register(agent_name: str):
        def decorator(subclass):
            registry[agent_name] = {"_target_": f"{subclass.__module__}.{subclass.__qualname__}"}
            return subclass

        return decorator

    module = types.ModuleType("verl.experimental.agent_loop.agent_loop")
    module.__dict__.update(
        AgentLoopMetrics=AgentLoopMetrics, AgentLoopOutput=AgentLoopOutput, DictConfigWrap=DictConfigWrap,
        AgentLoopBase=AgentLoopBase, register=register, _agent_loop_registry=registry,
    )
    for name in ("verl", "verl.experimental", "verl.experimental.agent_loop"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["verl.experimental.agent_loop.agent_loop"] = module


@pytest.fixture()
def verl_api(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    try:
        import verl.experimental.agent_loop.agent_loop as api  # noqa: F401
    except ImportError:
        for name in ("verl", "verl.experimental", "verl.experimental.agent_loop", "verl.experimental.agent_loop.agent_loop"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        _verl_double()
        api = sys.modules["verl.experimental.agent_loop.agent_loop"]
        monkeypatch.delitem(sys.modules, "mini_o3.train.verl.loop", raising=False)
        yield api
        for name in ("verl", "verl.experimental", "verl.experimental.agent_loop", "verl.experimental.agent_loop.agent_loop", "mini_o3.train.verl.loop"):
            sys.modules.pop(name, None)
        return
    yield api


def _config(response_length: int) -> tuple[Any, Any]:
    values = {"actor_rollout_ref": {"rollout": {"response_length": response_length, "prompt_length": 2048}}, "data": {}}
    try:
        from omegaconf import OmegaConf

        config = OmegaConf.create(values)
        return config, config.data
    except ImportError:
        def wrap(value: Any) -> Any:
            if isinstance(value, dict):
                namespace = types.SimpleNamespace(**{key: wrap(item) for key, item in value.items()})
                namespace.get = lambda key, default=None: getattr(namespace, key, default)
                return namespace
            return value

        config = wrap(values)
        return config, config.data


def test_the_loop_registers_and_returns_verls_output_record(verl_api: types.ModuleType, tiny: tuple, sample: Sample) -> None:
    importlib.import_module("mini_o3.train.verl.loop")
    entry = verl_api._agent_loop_registry["mini_o3"]
    assert entry["_target_"] == "mini_o3.train.verl.loop.MiniO3AgentLoop"
    module_name, _, class_name = entry["_target_"].rpartition(".")
    loop_class = getattr(importlib.import_module(module_name), class_name)
    model, tokenizer, image_processor = tiny
    config, data_config = _config(4096)
    server = TinyServer(*tiny, script=[ZOOM, ANSWER])
    # What verl's AgentLoopWorker passes (agent_loop.py:684-694), plus the keys of our config-file entry.
    loop = loop_class(
        trainer_config=verl_api.DictConfigWrap(config), server_manager=server, tokenizer=tokenizer,
        processor=build_processor(tokenizer, image_processor), dataset_cls=None, data_config=verl_api.DictConfigWrap(data_config),
        hf_model_type="qwen2_5_vl", name="mini_o3", **{**SMALL, "max_turns": 6, "max_images": 12},
    )
    row = sample_to_row(sample, 0)
    kwargs = {**row, "raw_prompt": row["prompt"], "index": 0, "tools_kwargs": {}, "interaction_kwargs": {}}
    output = asyncio.run(loop.run(dict(SAMPLING), **kwargs))
    assert isinstance(output, verl_api.AgentLoopOutput)
    assert output.reward_score == 1.0 and output.extra_fields["over_turn"] is False and output.num_turns == 4
    assert len(output.multi_modal_data["images"]) == 2 and len(output.response_ids) == len(output.response_mask)
    assert output.metrics.generate_sequences > 0
    assert loop.encoder.backbone.name == "qwen2.5-vl"
    if hasattr(output, "as_dict"):  # the real verl: the record the trainer stores
        record = output.as_dict()
        assert float(record["rm_scores"][-1]) == 1.0 and record["response_mask"].sum() == sum(output.response_mask)


def test_the_loop_reads_the_family_from_the_checkpoint_or_verls_model_type(verl_api: types.ModuleType, tmp_path: Path) -> None:
    loop = importlib.import_module("mini_o3.train.verl.loop")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_5"}))
    assert loop.model_backbone(str(tmp_path), "qwen2_5_vl").name == "qwen3.5"  # the checkpoint wins
    assert loop.model_backbone("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl").name == "qwen3-vl"  # a hub id has no folder to read
    with pytest.raises(ValueError, match="cannot tell the model's family"):
        loop.model_backbone("Qwen/Qwen3-VL-8B-Instruct", None)


def test_verls_own_postprocess_takes_the_record(tiny: tuple, encoder: PromptEncoder, sample: Sample) -> None:
    # verl 0.9.1's AgentLoopWorker._agent_loop_postprocess (agent_loop.py:728-866) re-runs the
    # processor on the decoded ids and the images, then computes the multimodal positions: the
    # pads must match its grids, its positions the model's, its pixels the rollout's log-probs.
    api = pytest.importorskip("verl.experimental.agent_loop.agent_loop")
    from omegaconf import OmegaConf
    from transformers.models.qwen2_5_vl import Qwen2_5_VLModel

    model, tokenizer, image_processor = tiny
    processor = build_processor(tokenizer, image_processor)
    processor.config = model.config  # as verl's hf_processor binds them (verl/utils/tokenizer/tokenizer.py:205-241)
    processor.get_rope_index = types.MethodType(Qwen2_5_VLModel.get_rope_index, processor)
    processor.get_vision_position_ids = types.MethodType(Qwen2_5_VLModel.get_vision_position_ids, processor)
    result, _ = run(tiny, encoder, sample, [ZOOM, BAD_ZOOM, ZOOM_AGAIN, ANSWER], response_length=2048)
    worker = object.__new__(api.AgentLoopWorker)
    worker.processor, worker.tokenizer, worker.mm_processor_kwargs = processor, tokenizer, {}
    worker.rollout_config = OmegaConf.create({"prompt_length": 1024, "response_length": 2048})
    worker.reward_loop_worker_handles, worker.distillation_enabled = None, False
    output = api.AgentLoopOutput(**result.output_fields(), metrics=api.AgentLoopMetrics())
    internal = asyncio.run(worker._agent_loop_postprocess(output, validate=False, raw_prompt=[]))
    inputs = internal.multi_modal_inputs
    pads = int((internal.input_ids == encoder.image_token_id).sum())
    assert pads == int(inputs["image_grid_thw"].prod(-1).sum()) // 4 and len(inputs["image_grid_thw"]) == 3
    ids = torch.tensor([result.prompt_ids + result.response_ids])
    own, _ = model.model.get_rope_index(
        input_ids=ids, image_grid_thw=inputs["image_grid_thw"], attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == encoder.image_token_id).long()
    )
    assert torch.equal(internal.position_ids[0, 1:, internal.attention_mask[0].bool()], own[:, 0, :])
    assert int(internal.response_mask.sum()) == sum(result.response_mask)
    recomputed = token_logprobs(model, ids[0].tolist(), inputs, encoder.image_token_id)[len(result.prompt_ids) :]
    assert max(abs(a - b) for a, b, bit in zip(result.response_logprobs, recomputed, result.response_mask) if bit) < 1e-4


# ---------------------------------------------------------------- the shipped config and launch line

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "verl"


def test_the_agent_loop_config_holds_the_papers_episode_settings() -> None:
    import yaml

    (entry,) = yaml.safe_load((CONFIGS / "agent_loop.yaml").read_text())
    assert entry["name"] == "mini_o3" and entry["_target_"] == "mini_o3.train.verl.loop.MiniO3AgentLoop"
    settings = VerlEpisodeSettings.from_kwargs({key: value for key, value in entry.items() if key not in ("name", "_target_")})
    assert (settings.max_turns, settings.max_images, settings.max_pixels, settings.mask_over_turn) == (6, 12, 2_000_000, True)


def _launch_overrides() -> list[str]:
    import shlex

    body = (CONFIGS / "run_rl.sh").read_text().split("python3 -m verl.trainer.main_ppo", 1)[1]
    values = {"$NNODES": "8", "$MODEL": "/ckpt/sft", "$TRAIN": "train.parquet", "$VAL": "val.parquet", "$NAME": "run", "$HERE": str(CONFIGS)}
    overrides = []
    for token in shlex.split(body.replace("\\\n", " ")):
        if token != "$@":
            for name, value in values.items():
                token = token.replace(name, value)
            overrides.append(token)
    return overrides


def test_the_launch_line_composes_and_validates_against_verls_own_config() -> None:
    pytest.importorskip("verl.trainer.main_ppo")
    import os

    import verl
    from hydra import compose, initialize_config_dir
    from verl.trainer.main_ppo import validate_config
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass

    with initialize_config_dir(config_dir=os.path.join(os.path.dirname(verl.__file__), "trainer", "config"), version_base=None):
        config = compose(config_name="ppo_trainer", overrides=_launch_overrides())
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert not need_reference_policy(config) and not need_critic(config)  # no KL: no reference model is loaded
    rollout, actor = omega_conf_to_dataclass(config.actor_rollout_ref.rollout), omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    assert (rollout.n, rollout.temperature, config.data.train_batch_size, config.trainer.nnodes) == (16, 1.0, 256, 8)
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.use_kl_loss, actor.entropy_coeff) == (0.2, 0.3, False, 0)
    assert actor.loss_agg_mode == "seq-mean-token-mean" and config.algorithm.filter_groups.enable
    assert config.actor_rollout_ref.rollout.agent.agent_loop_config_path == str(CONFIGS / "agent_loop.yaml")


def test_importing_the_loop_keeps_a_config_files_entry(verl_api: types.ModuleType) -> None:
    # verl registers the config file's entries before hydra imports the loop module to build one.
    entry = {"name": "mini_o3", "_target_": "mini_o3.train.verl.loop.MiniO3AgentLoop", "max_turns": 3}
    previous = verl_api._agent_loop_registry.get("mini_o3")
    verl_api._agent_loop_registry["mini_o3"] = entry
    try:
        module = importlib.import_module("mini_o3.train.verl.loop")
        importlib.reload(module)
        assert verl_api._agent_loop_registry["mini_o3"] is entry
    finally:
        if previous is None:
            verl_api._agent_loop_registry.pop("mini_o3")
        else:
            verl_api._agent_loop_registry["mini_o3"] = previous


def test_verl_builds_the_loop_from_the_config_file_as_its_worker_does(tiny: tuple, sample: Sample) -> None:
    # AgentLoopWorker.__init__ loads the file into the registry (agent_loop.py:533-538) and
    # _run_agent_loop builds each rollout's loop with hydra (:684-694); then run(**row).
    api = pytest.importorskip("verl.experimental.agent_loop.agent_loop")
    import hydra
    from omegaconf import OmegaConf

    model, tokenizer, image_processor = tiny
    (entry,) = OmegaConf.load(CONFIGS / "agent_loop.yaml")
    entry.max_pixels, entry.min_pixels, entry.context_reserve, entry.max_new_tokens = SMALL["max_pixels"], SMALL["min_pixels"], 64, 48
    previous = api._agent_loop_registry.get(entry.name)
    api._agent_loop_registry[entry.name] = entry
    try:
        config, data_config = _config(4096)
        loop = hydra.utils.instantiate(
            config=api._agent_loop_registry["mini_o3"], trainer_config=api.DictConfigWrap(config=config),
            server_manager=TinyServer(*tiny, script=[ZOOM, ANSWER]), tokenizer=tokenizer,
            processor=build_processor(tokenizer, image_processor), hf_model_type="qwen2_5_vl", dataset_cls=None,
            data_config=api.DictConfigWrap(data_config), tools=api.ToolListWrap([]),
        )
        assert api._agent_loop_registry["mini_o3"] is entry  # importing the module kept the file's entry
        assert (loop.settings.max_turns, loop.settings.max_pixels, dict(loop.settings.sampling_extra)) == (6, SMALL["max_pixels"], {"include_stop_str_in_output": True})
        row = sample_to_row(sample, 0)
        output = asyncio.run(loop.run(dict(SAMPLING), **{**row, "raw_prompt": row["prompt"], "index": 0, "uid": "u0", "session_id": 0}))
        assert output.reward_score == 1.0 and len(output.multi_modal_data["images"]) == 2
    finally:
        if previous is None:
            api._agent_loop_registry.pop("mini_o3", None)
        else:
            api._agent_loop_registry["mini_o3"] = previous
