"""Per-turn sampling seeds: every turn of every episode samples with its own stable seed.

`turn_seed(seed, sample id, run, turn)` is a hash, so two runs of one question differ, the same
command repeats exactly, and a resumed run samples the episodes it reruns as the first run
would have. `SeededPolicy` wraps any policy and binds per episode like the oracle: the turn
index is the number of assistant messages already in the conversation, so wrap it outside any
wrapper that adds turns of its own to the prompt (in-context exemplars).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from mini_o3.agent.sample import Sample
from mini_o3.agent.policy import Generation, Policy, SamplingParams


def turn_seed(seed: int, sample_id: str, run: int, turn: int) -> int:
    """The sampling seed of one turn: a stable hash of (seed, sample id, run, turn) below 2**31."""
    digest = hashlib.blake2b(f"{seed}\x00{sample_id}\x00{run}\x00{turn}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**31 - 1)


class SeededPolicy:
    """Wraps a policy so that every turn samples with `turn_seed(seed, sample id, run, turn)`.

    `bind(sample, run)` gives the wrapper of one episode (binding the inner policy too, when it
    binds); an unbound wrapper seeds as sample "" run 0. Other attributes (count_tokens and
    the like) come from the inner policy.
    """

    def __init__(self, inner: Policy, seed: int, sample_id: str = "", run: int = 0) -> None:
        self.inner = inner
        self.seed = seed
        self.sample_id = sample_id
        self.run = run

    def bind(self, sample: Sample, run: int = 0) -> "SeededPolicy":
        """The wrapper for run `run` of `sample`."""
        inner = self.inner.bind(sample, run=run) if hasattr(self.inner, "bind") else self.inner
        return SeededPolicy(inner, self.seed, sample.id, run)

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """The inner policy's turn, sampled with this turn's seed."""
        turn = sum(1 for message in messages if message["role"] == "assistant")
        return self.inner.generate(messages, replace(sampling, seed=turn_seed(self.seed, self.sample_id, self.run, turn)))

    def __repr__(self) -> str:
        return f"SeededPolicy({self.inner!r}, seed={self.seed})"

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the wrapper lacks; "inner" itself is guarded so that a
        # half-built or unpickled instance raises AttributeError instead of recursing.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


__all__ = ["SeededPolicy", "turn_seed"]
