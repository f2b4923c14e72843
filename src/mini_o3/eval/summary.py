"""A run's whole summary: every metric of `eval.metrics`, with the search behaviour and rotation scores on top.

It sits above `metrics`, `behaviour` and `rotation` (both built on `metrics`), so imports flow one way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mini_o3.eval.behaviour import search_behaviour
from mini_o3.eval.metrics import (
    EpisodeResult,
    accuracy_by_budget,
    avg_at_k,
    breakdown,
    correct_turn_counts,
    distribution,
    group_by_sample,
    pass_at_k,
    status_counts,
    turn_stats,
)
from mini_o3.eval.rotation import rotation_score


def summarize(results: Iterable[EpisodeResult], max_turns: int) -> dict[str, Any]:
    """Every metric as JSON-ready data (string keys, no NaN); accuracy figures are None when there are no results."""
    results = list(results)
    if max_turns < 1:
        raise ValueError(f"max_turns must be at least 1, got {max_turns}")
    groups = group_by_sample(results)
    runs = sorted({len(runs) for runs in groups.values()})
    turn_counts = correct_turn_counts(results)
    beyond = [turn for turn in turn_counts if turn > max_turns]
    if beyond:
        raise ValueError(f"results answer at turn {max(beyond)}, beyond max_turns={max_turns}; pass the eval's turn budget")
    summary: dict[str, Any] = {
        "samples": len(groups),
        "episodes": len(results),
        "runs_per_sample": {"min": runs[0], "max": runs[-1]} if runs else None,
        "max_turns": max_turns,
        "avg_at_k": None,
        "pass_at_k": None,
        "pass_at": {},
        "by_split": breakdown(results, "split"),
        "by_category": breakdown(results, "category"),
        "accuracy_by_budget": None,
        "correct_turns": [turn_counts.get(turn, 0) for turn in range(1, max_turns + 1)],
        "status_counts": status_counts(results),
        "turns": distribution(result.num_turns for result in results),
        "turns_correct": distribution(result.num_turns for result in results if result.correct),
        "per_turn": turn_stats(results),
    }
    if results:
        summary["avg_at_k"] = avg_at_k(results)
        summary["pass_at_k"] = pass_at_k(results)
        ks = sorted({2**power for power in range(runs[0].bit_length()) if 2**power <= runs[0]} | {runs[0]})
        summary["pass_at"] = {str(k): pass_at_k(results, k) for k in ks}
        summary["accuracy_by_budget"] = accuracy_by_budget(results, max_turns)
    summary["search"] = search_behaviour(results) if results else None
    summary["rotation"] = rotation_score(results)
    return summary
