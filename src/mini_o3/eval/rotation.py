"""HR-Bench's score over its four option rotations, as its authors compute it, beside stricter and plainer views.

HR-Bench ships every question four times with its options rotated (`cycle_category` 0-3).
Its authors' evaluation (DreamMr/HR-Bench, hrbench/vlmeval/dataset/image_mcq.py:90-108, with
hrbench_score in hrbench/vlmeval/dataset/utils/hrbench.py:78-103) groups the rows by
`cycle_category`, takes the accuracy of each group (overall and per category, single / cross),
and reports those and their mean over the groups ("avg"); lmms-eval's HR-Bench task does the
same (lmms_eval/tasks/hrbench/utils.py:80-99). That mean is `average` here. It equals plain
accuracy when every rotation holds the same questions; the per-rotation figures show how much
the option order moves the model.

`all_rotations` is not the authors' figure: the chance that a question is answered right in
every one of its rotations (MMBench's CircularEval idea), a stricter check of option-order
bias. With K runs each rotation's accuracy is its Avg@K, and a question's chance is their product.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from mini_o3.eval.metrics import EpisodeResult, avg_at_k, group_by_sample


def rotation_score(results: Iterable[EpisodeResult]) -> dict[str, Any] | None:
    """Accuracy per rotation and per category, the authors' mean over rotations, and all-rotations-right; None without rotations."""
    rotated = [result for result in results if result.cycle is not None]
    if not rotated:
        return None
    by_cycle: dict[int, list[EpisodeResult]] = defaultdict(list)
    for result in rotated:
        by_cycle[int(result.cycle)].append(result)  # type: ignore[arg-type]
    cycles = {str(cycle): avg_at_k(part) for cycle, part in sorted(by_cycle.items())}
    categories: dict[str, dict[str, float]] = {}
    for category in sorted({result.category for result in rotated}):
        per_cycle = {str(cycle): avg_at_k([r for r in part if r.category == category]) for cycle, part in sorted(by_cycle.items())
                     if any(r.category == category for r in part)}
        categories[category or "(none)"] = {**per_cycle, "average": sum(per_cycle.values()) / len(per_cycle)}
    return {
        "cycles": cycles,
        "average": sum(cycles.values()) / len(cycles),
        "by_category": categories,
        "plain": avg_at_k(rotated),
        "all_rotations": _all_rotations(rotated),
        "questions": len({result.group or result.sample_id for result in rotated}),
        "complete_groups": sum(1 for size in _group_sizes(rotated).values() if size == len(by_cycle)),
    }


def _group_sizes(results: list[EpisodeResult]) -> dict[str, int]:
    rotations: dict[str, set[int]] = defaultdict(set)
    for result in results:
        rotations[result.group or result.sample_id].add(int(result.cycle))  # type: ignore[arg-type]
    return {group: len(cycles) for group, cycles in rotations.items()}


def _all_rotations(results: list[EpisodeResult]) -> float:
    """Mean over questions of the product of their rotations' accuracies."""
    rotations: dict[str, list[list[EpisodeResult]]] = defaultdict(list)
    for runs in group_by_sample(results).values():
        rotations[runs[0].group or runs[0].sample_id].append(runs)
    chances = [math.prod(sum(run.correct for run in runs) / len(runs) for runs in members) for members in rotations.values()]
    return sum(chances) / len(chances)
