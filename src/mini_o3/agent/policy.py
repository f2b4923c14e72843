"""What a policy is: a conversation in, one assistant turn out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from mini_o3.agent.protocol import STOP_STRING


class PolicyError(RuntimeError):
    """A policy that could not produce a turn (a dead server after retries, a bad checkpoint)."""


@dataclass
class Generation:
    """One assistant turn as the policy produced it.

    `text` ends with `</grounding>` when generation stopped there (policies put the stop
    string back where their engine strips it). Token counts are the engine's own when it
    reports them; `token_ids` and `logprobs` are filled by local policies for training.
    """

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplingParams:
    """How a policy samples one turn."""

    temperature: float = 1.0
    """1.0 is the paper's setting for evaluation and RL; 0 means greedy."""
    top_p: float = 1.0
    max_new_tokens: int = 8192
    """Per-turn generation limit (the reference's 8,192)."""
    stop: tuple[str, ...] = (STOP_STRING,)
    seed: int | None = None


@runtime_checkable
class Policy(Protocol):
    """Anything that writes the next assistant turn of a Mini-o3 conversation.

    `messages` are chat messages as `mini_o3.agent.protocol` builds them: content parts of type
    "text" and "image", where an image part's "image" is a `mini_o3.agent.env.View` (with `.image`,
    the resized PIL image the model sees, and `.data_url()`), or a PIL image. Policies must be
    safe to call from many threads at once; batching policies gather concurrent calls.
    """

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams) -> Generation:
        """Write the next assistant turn for `messages`."""
        ...


def restore_stop_string(text: str, finish_reason: str, stop: str = STOP_STRING) -> str:
    """Put back a stop string that the engine stripped from a turn that stopped on it."""
    if finish_reason == "stop" and "<grounding>" in text and not text.rstrip().endswith(stop):
        tail = text[text.rfind("<grounding>") :]
        if stop not in tail:
            return text + stop
    return text
