"""Dynamic sampling as one chain per batch slot: a rejected group is replaced the moment it finishes.

An RL step needs `prompts_per_step` groups whose rewards disagree (and whose rollouts all ran).
Slot i starts with the step's i-th question; when its group finishes and is rejected (uniform
rewards, or a failed rollout or judge call), the slot draws its next question from its own
random stream and rolls out a new group at once, while other slots' groups are still running,
up to `max_rounds` groups per slot. Rounds with a barrier (roll out every missing group, wait
for all, count again) leave the engine decoding a handful of episodes while the round's last
ones finish; chains keep it full.

Everything is decided by (slot, attempt), never by which group finished first, so a rerun of
the step samples the same groups in the same order: the slot's questions come from
`draw(slot)`, and run numbers encode (attempt, slot, rollout) (`run_number`), which seed each
episode's turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from mini_o3.agent.loop import Episode
from mini_o3.train.rollouts import RolloutGroup

KEEP, SPARE, FAILED, UNUSABLE = "keep", "spare", "failed", "unusable"
"""What a finished group is: kept in the batch, uniform (a spare filler), failed (the last filler), or
unusable (an episode never showed its image: it cannot be encoded, not even as a filler)."""


def run_number(attempt: int, slot: int, rollout: int, slots: int, n: int) -> int:
    """The episode run number of rollout `rollout` of slot `slot`'s `attempt`-th group (attempt 1 is slot * n + rollout)."""
    return ((attempt - 1) * slots + slot) * n + rollout


def run_position(run: int, slots: int, n: int) -> tuple[int, int, int]:
    """(attempt, slot, rollout) of a run number (inverse of `run_number`)."""
    group, rollout = divmod(run, n)
    attempt, slot = divmod(group, slots)
    return attempt + 1, slot, rollout


@dataclass
class RefillChains:
    """The groups of one RL step, slot by slot; `finished` takes each episode and says what runs next."""

    indices: Sequence[int]
    """The step's first question (a sample index) per slot."""
    n: int
    """Rollouts per group."""
    max_rounds: int
    """Groups a slot may roll out before it gives up (its slot is then filled with a rejected group)."""
    draw: Callable[[int], int]
    """The next question of a slot whose group was rejected (each slot its own deterministic stream)."""
    score: Callable[[Episode], float | None]
    """An episode's reward (None: the judge failed)."""
    judge: Callable[[RolloutGroup], str]
    """KEEP, SPARE, FAILED or UNUSABLE for a finished group."""
    kept: dict[int, RolloutGroup] = field(default_factory=dict)
    """Slot -> its accepted group."""
    rejected: dict[tuple[int, int], tuple[str, RolloutGroup]] = field(default_factory=dict)
    """(attempt, slot) -> (SPARE, FAILED or UNUSABLE, group)."""
    attempts: dict[int, int] = field(default_factory=dict)
    """Slot -> groups rolled out so far."""
    _running: dict[tuple[int, int], tuple[int, list[Episode | None]]] = field(default_factory=dict)

    def first_jobs(self) -> list[tuple[int, int]]:
        """(question index, run) of every rollout of every slot's first group."""
        return [job for slot, index in enumerate(self.indices) for job in self._start(slot, index)]

    def finished(self, episode: Episode) -> list[tuple[int, int]]:
        """Record a finished episode; when it completes a rejected group, the (question, run) jobs of the slot's next group."""
        attempt, slot, rollout = run_position(episode.run, len(self.indices), self.n)
        index, episodes = self._running[(attempt, slot)]
        episodes[rollout] = episode
        if any(done is None for done in episodes):
            return []
        del self._running[(attempt, slot)]
        group = RolloutGroup(index, list(episodes), [self.score(done) for done in episodes])  # type: ignore[arg-type]
        verdict = self.judge(group)
        if verdict == KEEP:
            self.kept[slot] = group
            return []
        self.rejected[(attempt, slot)] = (verdict, group)
        if attempt >= self.max_rounds:
            return []
        return self._start(slot, self.draw(slot))

    def sampled(self) -> list[RolloutGroup]:
        """Every finished group, by attempt then slot (the order a rerun gives)."""
        by_place = {(self.attempts[slot], slot): group for slot, group in self.kept.items()}  # a kept group is its slot's last
        by_place.update({place: group for place, (_, group) in self.rejected.items()})
        return [by_place[place] for place in sorted(by_place)]

    def rounds(self) -> int:
        """The most groups any slot rolled out."""
        return max(self.attempts.values(), default=0)

    def _start(self, slot: int, index: int) -> list[tuple[int, int]]:
        attempt = self.attempts.get(slot, 0) + 1
        self.attempts[slot] = attempt
        self._running[(attempt, slot)] = (index, [None] * self.n)
        return [(index, run_number(attempt, slot, rollout, len(self.indices), self.n)) for rollout in range(self.n)]
