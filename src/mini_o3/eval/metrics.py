"""Evaluation metrics over per-episode results: Avg@K, pass@k, breakdowns, the turn-budget curve, statuses, costs.

Everything here is pure: results in, numbers out. A sample is identified by (split, sample_id),
since benchmarks such as VisualProbe's easy, medium and hard sets may reuse ids.

The turn-budget curve comes from one run at the largest budget. The prompt never states the
budget, so a run with budget k is the same conversation as the first k turns of a run with a
larger budget, ending as over_turn if turn k was a zoom (`truncate_trajectory`, proved against
`ZoomEnv` in tests/test_metrics.py). An episode answered correctly at turn t therefore counts as
correct for every budget >= t and wrong below it.

`mini_o3.eval.summary.summarize` puts them together with how the policy searched
(mini_o3.eval.behaviour) and, for HR-Bench, the score over its option rotations
(mini_o3.eval.rotation); both build on this module.
"""

from __future__ import annotations

import copy
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from mini_o3.agent import protocol
from mini_o3.agent.env import approximate_tokens, image_tokens, message_tokens
from mini_o3.eval import crops
from mini_o3.eval.scoring import Score
from mini_o3.agent.trajectory import Status, Trajectory, TurnRecord

STATUSES = tuple(status.value for status in Status)


@dataclass
class EpisodeResult:
    """What one episode (one sample, one of its K runs) contributes to the metrics."""

    sample_id: str
    run: int
    """Which of the sample's K runs this is (0-based)."""
    split: str = ""
    category: str = ""
    status: str = Status.NO_ANSWER.value
    """answered, over_turn, over_context, no_answer or error."""
    correct: bool = False
    num_turns: int = 0
    answer_turn: int | None = None
    """The turn (1-based) that gave the final answer; None when the episode gave none."""
    extracted: str | None = None
    """What the scorer read from the answer."""
    matched_by: str = "none"
    """How the scorer matched it (see mini_o3.eval.scoring.Score)."""
    prompt_tokens: list[int | None] = field(default_factory=list)
    """Per turn, the prompt length the engine reported (None when it reported none)."""
    completion_tokens: list[int | None] = field(default_factory=list)
    """Per turn, the tokens the model wrote."""
    latency_s: list[float] = field(default_factory=list)
    """Per turn, seconds spent generating."""
    zooms: int = 0
    """Crops the model was shown."""
    repeated_zooms: int = 0
    """Crops whose box repeats a view already seen in the episode (mini_o3.eval.crops.repeated_crops)."""
    target_zooms: int | None = None
    """Crops that hold an annotated target; None when the sample has no target boxes."""
    generated_tokens: int = 0
    """Tokens the model wrote over the whole episode (the engine's counts, else the env's estimate)."""
    cycle: int | None = None
    """HR-Bench's option rotation (cycle_category 0-3); None for other data."""
    group: str = ""
    """The question a rotation belongs to (the same for its four rotations); empty for other data."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"{self.sample_id} run {self.run}: status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.correct and self.answer_turn is None:
            raise ValueError(f"{self.sample_id} run {self.run}: correct but with no answer_turn")
        if self.answer_turn is not None and not 1 <= self.answer_turn <= self.num_turns:
            raise ValueError(f"{self.sample_id} run {self.run}: answer_turn {self.answer_turn} outside 1..{self.num_turns}")

    def correct_at(self, budget: int) -> bool:
        """Whether a run with this turn budget would have been correct."""
        return self.correct and self.answer_turn is not None and self.answer_turn <= budget

    def correct_at_budgets(self, max_turns: int) -> list[bool]:
        """`correct_at(b)` for every budget b from 1 to `max_turns`."""
        return [self.correct_at(budget) for budget in range(1, max_turns + 1)]

    @classmethod
    def from_trajectory(cls, trajectory: Trajectory, score: Score, run: int) -> "EpisodeResult":
        """The result of a finished, scored trajectory (only an answered episode can be correct)."""
        answered = trajectory.status == Status.ANSWERED and trajectory.num_turns > 0
        return cls(
            sample_id=trajectory.sample_id,
            run=run,
            split=trajectory.split,
            category=trajectory.category,
            status=trajectory.status.value,
            correct=bool(score.correct and answered),
            num_turns=trajectory.num_turns,
            answer_turn=trajectory.num_turns if answered else None,
            extracted=score.extracted,
            matched_by=score.matched_by,
            prompt_tokens=[turn.prompt_tokens for turn in trajectory.turns],
            completion_tokens=[turn.completion_tokens for turn in trajectory.turns],
            latency_s=[turn.latency_s for turn in trajectory.turns],
            zooms=trajectory.num_zooms,
            repeated_zooms=crops.repeated_crops(trajectory),
            target_zooms=crops.crops_on_target(trajectory),
            generated_tokens=sum(
                turn.completion_tokens if turn.completion_tokens is not None else approximate_tokens(turn.text) for turn in trajectory.turns
            ),
            cycle=trajectory.meta.get("cycle_category"),
            group=str(trajectory.meta.get("group") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "EpisodeResult":
        """Rebuild a result written by `to_dict`."""
        return cls(**record)


# ---------------------------------------------------------------- accuracy


def group_by_sample(results: Iterable[EpisodeResult]) -> dict[tuple[str, str], list[EpisodeResult]]:
    """Results grouped by (split, sample_id), refusing a run recorded twice."""
    groups: dict[tuple[str, str], list[EpisodeResult]] = defaultdict(list)
    seen: set[tuple[str, str, int]] = set()
    for result in results:
        key = (result.split, result.sample_id, result.run)
        if key in seen:
            raise ValueError(
                f"sample {result.sample_id!r} (split {result.split!r}) has run {result.run} twice; "
                f"keep one record per run (a resumed eval must not append finished runs again)"
            )
        seen.add(key)
        groups[(result.split, result.sample_id)].append(result)
    return dict(groups)


def _groups(results: Iterable[EpisodeResult]) -> list[list[EpisodeResult]]:
    groups = list(group_by_sample(results).values())
    if not groups:
        raise ValueError("no results to measure")
    return groups


def avg_at_k(results: Iterable[EpisodeResult], budget: int | None = None) -> float:
    """Avg@K: the mean over samples of each sample's accuracy over its runs (at a turn budget, if given)."""
    total = 0.0
    groups = _groups(results)
    for runs in groups:
        hits = sum(run.correct if budget is None else run.correct_at(budget) for run in runs)
        total += hits / len(runs)
    return total / len(groups)


def pass_at_k(results: Iterable[EpisodeResult], k: int | None = None) -> float:
    """pass@k: the chance that one of k runs is correct, by the unbiased estimator over n >= k runs; None means k = n (any run correct)."""
    groups = _groups(results)
    total = 0.0
    for runs in groups:
        n, c = len(runs), sum(run.correct for run in runs)
        draws = n if k is None else k
        if not 1 <= draws <= n:
            raise ValueError(f"pass@{k} needs 1 <= k <= runs per sample, but sample {runs[0].sample_id!r} has {n} runs")
        total += 1.0 - math.comb(n - c, draws) / math.comb(n, draws)
    return total / len(groups)


def accuracy_by_budget(results: Iterable[EpisodeResult], max_turns: int) -> list[float]:
    """Avg@K at every turn budget 1..max_turns (index 0 is budget 1), all from the same runs."""
    results = list(results)
    return [avg_at_k(results, budget) for budget in range(1, max_turns + 1)]


def breakdown(results: Iterable[EpisodeResult], by: str) -> dict[str, dict[str, Any]]:
    """Samples, episodes, Avg@K and pass@K (any run correct) per value of `by` ("split" or "category")."""
    if by not in ("split", "category"):
        raise ValueError(f"breakdown by {by!r}: choose 'split' or 'category'")
    parts: dict[str, list[EpisodeResult]] = defaultdict(list)
    for result in results:
        parts[getattr(result, by)].append(result)
    return {
        name: {
            "samples": len(group_by_sample(part)),
            "episodes": len(part),
            "avg_at_k": avg_at_k(part),
            "pass_at_k": pass_at_k(part),
        }
        for name, part in sorted(parts.items())
    }


# ---------------------------------------------------------------- turns, statuses, costs


def correct_turn_counts(results: Iterable[EpisodeResult]) -> dict[int, int]:
    """How many correct episodes answered at each turn (turns with none left out)."""
    counts = Counter(result.answer_turn for result in results if result.correct)
    return dict(sorted(counts.items()))


def status_counts(results: Iterable[EpisodeResult]) -> dict[str, int]:
    """Episodes per status, every status listed."""
    counts = Counter(result.status for result in results)
    return {status: counts.get(status, 0) for status in STATUSES}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """count, mean, p50, p90 and max of the values that are not None (None figures when there are none)."""
    present = [float(value) for value in values if value is not None]
    if not present:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "max": None}
    return {
        "count": len(present),
        "mean": sum(present) / len(present),
        "p50": percentile(present, 50),
        "p90": percentile(present, 90),
        "max": max(present),
    }


def turn_stats(results: Iterable[EpisodeResult]) -> dict[str, dict[str, float | int | None]]:
    """Prompt tokens, completion tokens and latency, each turn of each episode one value."""
    results = list(results)
    return {
        "prompt_tokens": distribution(value for result in results for value in result.prompt_tokens),
        "completion_tokens": distribution(value for result in results for value in result.completion_tokens),
        "latency_s": distribution(value for result in results for value in result.latency_s),
    }


# ---------------------------------------------------------------- cutting a trajectory to a budget


def truncate_trajectory(trajectory: Trajectory, budget: int) -> Trajectory:
    """The trajectory `ZoomEnv` would have recorded with `max_turns=budget` (everything else equal).

    A zoom or malformed action on turn `budget` ends the episode as over_turn, with no feedback
    for that turn and no crop from it. `context_tokens` follows the env's arithmetic: the
    engine's counts of the last turn when recorded, else the env's default estimate (exact when
    the run used that estimate, as runs against servers that report no usage do).
    """
    limit = trajectory.limits.get("max_turns")
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    if limit is not None and budget > limit:
        raise ValueError(f"cannot read a budget of {budget} turns off a run recorded with max_turns={limit}")
    cut = copy.deepcopy(trajectory)
    cut.limits = {**cut.limits, "max_turns": budget}
    if cut.num_turns < budget or cut.turns[budget - 1].kind in ("answer", "none"):
        return cut
    # Turn `budget` is a zoom or malformed action. Where it was already the last turn and got no
    # feedback, the recorded context is the env's own figure; otherwise it is recounted.
    recount = cut.num_turns > budget or cut.turns[budget - 1].feedback is not None
    cut.turns = cut.turns[:budget]
    last = cut.turns[-1]
    last.feedback = last.error = last.view = last.label = None
    shown = {turn.view for turn in cut.turns if turn.view is not None}
    cut.views = [view for view in cut.views if view.index == 0 or view.index in shown]
    cut.status, cut.answer, cut.error = Status.OVER_TURN, None, None
    if recount:
        cut.context_tokens = _context_after(cut)
    return cut


def _context_after(trajectory: Trajectory) -> int:
    """The context after the last turn, as ZoomEnv counts it (its default token estimate for text)."""
    sizes = {view.index: view.size for view in trajectory.views}
    tokens = _message_tokens(protocol.system_message(), sizes) + _message_tokens(
        protocol.first_user_message(0, trajectory.question), sizes
    )
    for turn in trajectory.turns:
        tokens = _turn_context(tokens, turn)
        if turn.feedback == "observation":
            tokens += _message_tokens(protocol.observation_message(turn.view, *turn.label), sizes)
        elif turn.feedback == "error":
            tokens += _message_tokens(protocol.error_message(turn.error), sizes)
    return tokens


def _turn_context(before: int, turn: TurnRecord) -> int:
    if turn.prompt_tokens is not None and turn.completion_tokens is not None:
        return turn.prompt_tokens + turn.completion_tokens
    return before + 5 + (turn.completion_tokens or approximate_tokens(turn.text))


def _message_tokens(message: dict[str, Any], sizes: dict[int, tuple[int, int]]) -> int:
    return message_tokens([message], approximate_tokens, lambda index: image_tokens(*sizes[index]))
