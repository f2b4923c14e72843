"""The no-zoom baseline: the same model answering from the first view, with a prompt that offers no zoom.

`--max-turns 1` alone is not a baseline: the released system prompt still invites a zoom, and a
model that takes it on its only turn is cut off without an answer. The baseline run
(`EvalConfig(prompt="direct", max_turns=1)`, `mini-o3 eval --prompt direct`) swaps the
system prompt for `protocol.DIRECT_SYSTEM_PROMPT`: the released prompt without its zoom
sentence, keeping its <think> and <answer> format, so the answer is read and scored exactly
as in a zoom run. Everything else (model, image, question, pixels, sampling, scoring) is the
zoom run's. `mini-o3 eval compare BASELINE RUN` then shows per question what zooming gained
and lost (mini_o3.eval.compare).
"""

from __future__ import annotations

from typing import Any

from mini_o3.agent import protocol
from mini_o3.agent.policy import Generation, Policy, SamplingParams
from mini_o3.agent.sample import Sample


def direct_system_message() -> dict[str, Any]:
    """The baseline's system message."""
    return {"role": "system", "content": [protocol.text_part(protocol.DIRECT_SYSTEM_PROMPT)]}


class DirectPromptPolicy:
    """Wraps a policy so that it sees the no-zoom system prompt instead of the released one.

    The episode loop builds the released conversation; this swaps its system message just
    before the model sees it. Other attributes (count_tokens, bind's partners) come from the
    inner policy.
    """

    def __init__(self, inner: Policy) -> None:
        self.inner = inner

    def bind(self, sample: Sample, run: int = 0) -> "DirectPromptPolicy":
        """The wrapper for one episode (binding the inner policy when it binds)."""
        return DirectPromptPolicy(self.inner.bind(sample, run=run) if hasattr(self.inner, "bind") else self.inner)

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """The inner policy's turn for `messages` with the system message replaced."""
        swapped = [direct_system_message() if message["role"] == "system" else message for message in messages]
        return self.inner.generate(swapped, sampling)

    def __repr__(self) -> str:
        return f"DirectPromptPolicy({self.inner!r})"

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # a half-built instance must raise, not recurse
            raise AttributeError(name)
        return getattr(self.inner, name)
