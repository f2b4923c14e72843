"""How a policy searched: zooms per question, repeated crops, crops on the annotated target, accuracy against tokens.

Pure: `EpisodeResult`s in (their zoom, repeat, target and token counts come from the
trajectories, see `EpisodeResult.from_trajectory`), JSON-ready numbers out.

The token curve follows the turn-budget argument of mini_o3.eval.metrics: the prompt never
states a token budget, so an episode that wrote t tokens in all and was right would be right
under any cap of at least t generated tokens per episode, and would have been cut before its
answer (wrong) under a smaller one. One run at full length gives every cap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from mini_o3.eval.metrics import EpisodeResult, avg_at_k, distribution


def token_budgets(largest: int, smallest: int = 16) -> list[int]:
    """Powers of two from `smallest` up to the first one at or past `largest`."""
    budgets = [smallest]
    while budgets[-1] < largest:
        budgets.append(budgets[-1] * 2)
    return budgets


def accuracy_by_tokens(results: Iterable[EpisodeResult], budgets: list[int]) -> list[float]:
    """Avg@K under a cap of b generated tokens per episode, for every b in `budgets`."""
    results = list(results)
    curve = []
    for budget in budgets:
        capped = [_capped(result, budget) for result in results]
        curve.append(avg_at_k(capped))
    return curve


def _capped(result: EpisodeResult, budget: int) -> EpisodeResult:
    if not result.correct or result.generated_tokens <= budget:
        return result
    return EpisodeResult(result.sample_id, result.run, result.split, result.category, result.status, False, result.num_turns, result.answer_turn)


def search_behaviour(results: Iterable[EpisodeResult]) -> dict[str, Any]:
    """Zooms per episode, repeated crops, crops on the target (where the data has boxes) and accuracy against tokens."""
    results = list(results)
    if not results:
        raise ValueError("no results to describe")
    zooms = sum(result.zooms for result in results)
    repeated = sum(result.repeated_zooms for result in results)
    histogram = Counter(result.zooms for result in results)
    tokens = [result.generated_tokens for result in results]
    budgets = token_budgets(max(tokens) if tokens else 16)
    return {
        "zooms_per_episode": distribution(result.zooms for result in results),
        "zooms_per_correct_episode": distribution(result.zooms for result in results if result.correct),
        "zoom_histogram": [histogram.get(count, 0) for count in range(max(histogram) + 1)],
        "zooms": zooms,
        "repeated_zooms": repeated,
        "repeated_share": repeated / zooms if zooms else None,
        "episodes_with_a_repeat": sum(1 for result in results if result.repeated_zooms) / len(results),
        "target": _target_figures(results),
        "generated_tokens": distribution(tokens),
        "generated_tokens_correct": distribution(result.generated_tokens for result in results if result.correct),
        "token_budgets": budgets,
        "accuracy_by_tokens": accuracy_by_tokens(results, budgets),
    }


def _target_figures(results: list[EpisodeResult]) -> dict[str, Any] | None:
    """Crops on the annotated target, over the episodes whose sample has target boxes; None when none has."""
    boxed = [result for result in results if result.target_zooms is not None]
    if not boxed:
        return None
    zooms = sum(result.zooms for result in boxed)
    on_target = sum(result.target_zooms or 0 for result in boxed)
    found = [result for result in boxed if result.target_zooms]
    missed = [result for result in boxed if not result.target_zooms]
    return {
        "episodes": len(boxed),
        "zooms": zooms,
        "zooms_on_target": on_target,
        "share_of_zooms": on_target / zooms if zooms else None,
        "episodes_that_found_it": len(found) / len(boxed),
        "accuracy_when_found": sum(result.correct for result in found) / len(found) if found else None,
        "accuracy_when_not_found": sum(result.correct for result in missed) / len(missed) if missed else None,
    }
