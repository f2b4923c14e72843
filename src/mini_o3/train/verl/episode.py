"""One Mini-o3 episode through verl's token-in/token-out server, as verl's agent-loop output record.

No verl import here: the server is anything with verl's `generate` signature
(verl/workers/rollout/llm_server.py, `LLMServerClient.generate(request_id, *, prompt_ids,
sampling_params, image_data=None, ...)`, returning an object with `token_ids`, `log_probs`
and `stop_reason` like verl's `TokenOutput`). The episode itself is `agent.loop.run_episode`
over `agent.env.ZoomEnv`, the same code as search, eval, collection and the TRL trainer; it
runs in a worker thread and each turn hops back to the event loop for the server call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping

from mini_o3.agent.env import Limits, ZoomEnv
from mini_o3.agent.images import DEFAULT_IMAGE_PIXEL_LIMIT, ImageLoadError, ResizePolicy, open_image
from mini_o3.agent.loop import Episode, EpisodeConfig, run_episode
from mini_o3.agent.policy import SamplingParams
from mini_o3.agent.sample import Sample
from mini_o3.agent.trajectory import Status
from mini_o3.policies.local import PromptEncoder
from mini_o3.train.masking import rollout_weights
from mini_o3.train.verl.server_policy import ServerPolicy
from mini_o3.train.verl.tokens import EpisodeTokens

ESTIMATE_SLACK = 16
"""Tokens kept free under the response budget for the environment's estimate of chat markup."""


@dataclass(frozen=True)
class VerlEpisodeSettings:
    """The loop's settings: the keys of its entry in verl's agent-loop config file."""

    max_turns: int = 6
    """Assistant turns per episode (the paper trains with 6; a row's extra_info.limits may override it)."""
    max_images: int | None = 12
    """Images per episode, the original included (the paper's 12)."""
    max_context_tokens: int = 32_768
    """The context window; also capped at the first prompt plus rollout.response_length."""
    context_reserve: int = 2_000
    """An episode ends over_context when its context gets this close to the window."""
    numbering: str = "reference"
    """Observation labels: "reference" (byte-compatible with the released checkpoint) or "consistent"."""
    max_pixels: int = 2_000_000
    """Every image shown is scaled down to at most this many pixels."""
    min_pixels: int = 40_000
    """... and up to at least this many."""
    max_new_tokens: int = 8_192
    """Per-turn generation limit."""
    pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT
    """Refuse originals larger than this many pixels."""
    mask_over_turn: bool = True
    """Zero the response mask of over-turn and over-context rollouts (the released ignore_exceed=True); errors always."""
    judge_url: str | None = None
    """An OpenAI-compatible judge for answers the rules call wrong (None: rules only)."""
    judge_model: str | None = None
    """The judge's model name."""
    sampling_extra: Mapping[str, Any] = field(default_factory=lambda: {"include_stop_str_in_output": True})
    """Extra sampling keys for the engine: vLLM's default keeps `</grounding>`; SGLang wants {no_stop_trim: true}."""
    episode_threads: int = 1024
    """Episodes in flight per agent-loop worker process, one thread each (mostly waiting on the
    server); keep it at least train_batch_size x rollout.n / rollout.agent.num_workers."""

    def limits(self, overrides: Mapping[str, int | None] | None = None) -> Limits:
        """The episode limits, with a row's overrides applied."""
        values = {
            "max_turns": self.max_turns,
            "max_images": self.max_images,
            "max_context_tokens": self.max_context_tokens,
            "context_reserve": self.context_reserve,
            **dict(overrides or {}),
        }
        return Limits(numbering=self.numbering, **values)  # type: ignore[arg-type]

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "VerlEpisodeSettings":
        """Take this class's fields out of `kwargs` (left with the rest)."""
        names = {f.name for f in dataclasses.fields(cls)}
        picked = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
        if "sampling_extra" in picked:
            picked["sampling_extra"] = dict(picked["sampling_extra"] or {})
        return cls(**picked)


@dataclass
class LoopResult:
    """One finished episode as verl's AgentLoopOutput wants it, and what it came from."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    """1 on sampled tokens; all 0 for an over-turn rollout when masking is on, and for an error."""
    response_logprobs: list[float] | None
    images: list[Any]
    """Every image shown, in order: the original, then each crop."""
    reward: float
    over_turn: bool
    """The episode hit the turn, image or context limit (the released `exceed`)."""
    episode: Episode
    generate_s: float = 0.0
    total_s: float = 0.0

    @property
    def status(self) -> Status:
        """How the episode ended."""
        return self.episode.trajectory.status

    @property
    def num_turns(self) -> int:
        """Chat turns as verl counts them: the first user turn, each assistant turn, each observation or error."""
        turns = self.episode.trajectory.turns
        return 1 + len(turns) + sum(1 for turn in turns if turn.feedback is not None)

    def extra_fields(self) -> dict[str, Any]:
        """What reaches the trainer's batch beside the tensors (verl puts these in non_tensor_batch)."""
        trajectory = self.episode.trajectory
        info = {
            "acc": self.reward,
            "over_turn": float(self.over_turn),
            "assistant_turns": float(trajectory.num_turns),
            "images": float(len(self.images)),
        }
        return {
            "over_turn": self.over_turn,
            "status": self.status.value,
            "assistant_turns": trajectory.num_turns,
            "answer": trajectory.answer,
            "reward_extra_info": info,
        }

    def output_fields(self) -> dict[str, Any]:
        """Keyword arguments for verl's AgentLoopOutput (metrics aside)."""
        return {
            "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids,
            "response_mask": self.response_mask,
            "response_logprobs": self.response_logprobs,
            "multi_modal_data": {"images": self.images},
            "reward_score": self.reward,
            "num_turns": self.num_turns,
            "extra_fields": self.extra_fields(),
        }


def trained_mask(mask: list[int], status: Status, mask_over_turn: bool = True) -> list[int]:
    """The response mask the trainer sees: all zeros for a rollout the TRL path leaves out of the loss.

    That is `train.masking.rollout_weights`' rule: over-turn and over-context rollouts when
    masking is on, error rollouts always. verl's loss mask is this response mask, while GRPO's
    group statistics read only the rewards, so such a rollout's reward (0) still counts in its
    group's mean and std and its tokens carry no loss: the released trainer's
    `response_mask[exceed_mask] = 0`.
    """
    return list(mask) if float(rollout_weights([status], mask_over_turn)[0]) else [0] * len(mask)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def episode_pool(threads: int) -> ThreadPoolExecutor:
    """The process-wide thread pool episodes run in (one per size)."""
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mini-o3-verl")
        return _POOLS[threads]


@functools.lru_cache(maxsize=8)
def _rewarder(judge_url: str | None, judge_model: str | None) -> Any:
    from mini_o3.train.rollouts import Rewarder

    return Rewarder(judge_url, judge_model)


async def run_verl_episode(
    server: Any,
    encoder: PromptEncoder,
    tokenizer: Any,
    settings: VerlEpisodeSettings,
    sample: Sample,
    sampling_params: Mapping[str, Any],
    response_length: int,
    limit_overrides: Mapping[str, int | None] | None = None,
) -> LoopResult:
    """Run one episode through `server` and score it; a failure after the first turn ends it as `error`."""
    event_loop = asyncio.get_running_loop()
    start = time.perf_counter()
    tokens = EpisodeTokens(encoder, tokenizer)
    policy = ServerPolicy(server, event_loop, encoder, tokens, sampling_params, settings.sampling_extra, response_length)

    def work() -> tuple[Episode, float]:
        config, in_memory = _prepare_episode(settings, limit_overrides, sample, tokens, policy, response_length)
        episode = run_episode(policy, in_memory, config, count_tokens=encoder.count_tokens)
        reward = _rewarder(settings.judge_url, settings.judge_model)(episode.trajectory)
        return episode, reward

    episode, reward = await event_loop.run_in_executor(episode_pool(settings.episode_threads), work)
    if not tokens.response_ids:
        # No turn came back (an unreadable image, a dead server): verl cannot train an empty
        # response, and its own loops raise here too; the trainer counts the group as failed.
        raise RuntimeError(f"sample {sample.id}: the episode produced no turn: {episode.trajectory.error}")
    over_turn = episode.trajectory.status.truncated
    response_ids, mask, logprobs = tokens.response_ids, tokens.response_mask, tokens.logprobs
    if len(response_ids) > response_length:  # never expected: the budget checks stop earlier
        response_ids, mask = response_ids[:response_length], mask[:response_length]
        logprobs = logprobs[:response_length] if logprobs is not None else None
        over_turn = True
    return LoopResult(
        prompt_ids=tokens.prompt_ids,
        response_ids=response_ids,
        response_mask=trained_mask(mask, Status.OVER_CONTEXT if over_turn else episode.trajectory.status, settings.mask_over_turn),
        response_logprobs=logprobs,
        images=list(tokens.images),
        reward=0.0 if over_turn else reward,
        over_turn=over_turn,
        episode=episode,
        generate_s=policy.generate_s,
        total_s=time.perf_counter() - start,
    )


def _prepare_episode(
    settings: VerlEpisodeSettings,
    overrides: Mapping[str, int | None] | None,
    sample: Sample,
    tokens: EpisodeTokens,
    policy: ServerPolicy,
    response_length: int,
) -> tuple[EpisodeConfig, Sample]:
    """The episode's config, its window capped to what verl's response tensor holds; encodes the first prompt."""
    limits = settings.limits(overrides)
    resize = ResizePolicy(max_pixels=settings.max_pixels, min_pixels=settings.min_pixels)
    sampling = SamplingParams(max_new_tokens=settings.max_new_tokens)
    try:
        original = open_image(sample.image, settings.pixel_limit)
    except (ImageLoadError, OSError):
        # run_episode turns the same failure into an error episode.
        return EpisodeConfig(limits, sampling, resize, settings.pixel_limit), sample
    in_memory = dataclasses.replace(sample, image=original)
    # The first prompt's length is needed for the window cap: encode it from a probe episode.
    probe = ZoomEnv(in_memory, limits, resize, policy.count_tokens, settings.pixel_limit, original, policy.image_tokens)
    tokens.sync(probe.messages())
    window = min(limits.max_context_tokens, len(tokens.prompt_ids) + response_length - ESTIMATE_SLACK)
    limits = dataclasses.replace(limits, max_context_tokens=window)
    return EpisodeConfig(limits, sampling, resize, settings.pixel_limit), in_memory
