"""Metrics on hand-built results with exact expected values, and the turn-budget equivalence against ZoomEnv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.sample import Sample
from mini_o3.agent.env import Limits, ZoomEnv
from mini_o3.eval.metrics import (
    EpisodeResult,
    accuracy_by_budget,
    avg_at_k,
    breakdown,
    correct_turn_counts,
    distribution,
    group_by_sample,
    pass_at_k,
    percentile,
    status_counts,
    truncate_trajectory,
    turn_stats,
)
from mini_o3.agent.policy import Generation
from mini_o3.eval.scoring import Score, score_trajectory
from mini_o3.eval.summary import summarize
from mini_o3.agent.trajectory import Status, Trajectory


def answered(sample: str, run: int, turn: int, correct: bool, split: str, category: str, **costs: list) -> EpisodeResult:
    return EpisodeResult(sample, run, split, category, "answered", correct, turn, turn, **costs)


def ended(sample: str, run: int, status: str, turns: int, split: str, category: str) -> EpisodeResult:
    return EpisodeResult(sample, run, split, category, status, False, turns, None)


# Three samples, four runs each. s1: right at turns 2 and 5, wrong once, cut once.
# s2: never right. s3: right at turns 1, 1, 3 and 8.
RESULTS = [
    answered("s1", 0, 2, True, "easy", "colour", completion_tokens=[10, 30], latency_s=[0.1, 0.3]),
    answered("s1", 1, 5, True, "easy", "colour"),
    answered("s1", 2, 3, False, "easy", "colour"),
    ended("s1", 3, "over_turn", 8, "easy", "colour"),
    answered("s2", 0, 1, False, "hard", "count", completion_tokens=[20], latency_s=[0.2]),
    ended("s2", 1, "no_answer", 2, "hard", "count"),
    ended("s2", 2, "over_context", 7, "hard", "count"),
    ended("s2", 3, "error", 0, "hard", "count"),
    answered("s3", 0, 1, True, "hard", "colour", completion_tokens=[40], prompt_tokens=[500], latency_s=[0.4]),
    answered("s3", 1, 1, True, "hard", "colour"),
    answered("s3", 2, 3, True, "hard", "colour"),
    answered("s3", 3, 8, True, "hard", "colour"),
]


def test_avg_at_k_is_the_mean_of_per_sample_accuracy() -> None:
    assert avg_at_k(RESULTS) == pytest.approx((2 / 4 + 0 + 4 / 4) / 3)


def test_avg_at_k_weights_samples_not_episodes() -> None:
    results = [answered("a", 0, 1, True, "", "")] + [answered("b", run, 1, False, "", "") for run in range(3)]
    assert avg_at_k(results) == pytest.approx(0.5)


def test_pass_at_k_any_correct_and_unbiased() -> None:
    assert pass_at_k(RESULTS) == pytest.approx(2 / 3)
    assert pass_at_k(RESULTS, 4) == pytest.approx(2 / 3)
    assert pass_at_k(RESULTS, 1) == pytest.approx(avg_at_k(RESULTS))
    # s1: n=4, c=2 -> 1 - C(2,2)/C(4,2) = 5/6; s2: 0; s3: 1.
    assert pass_at_k(RESULTS, 2) == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert pass_at_k(RESULTS, 3) == pytest.approx((1 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="has 4 runs"):
        pass_at_k(RESULTS, 5)
    with pytest.raises(ValueError):
        pass_at_k(RESULTS, 0)


def test_accuracy_by_budget_counts_an_answer_from_its_turn_on() -> None:
    curve = accuracy_by_budget(RESULTS, 8)
    expected = [
        (0 + 0 + 2 / 4) / 3,  # budget 1: s3's two first-turn answers
        (1 / 4 + 0 + 2 / 4) / 3,
        (1 / 4 + 0 + 3 / 4) / 3,
        (1 / 4 + 0 + 3 / 4) / 3,
        (2 / 4 + 0 + 3 / 4) / 3,
        (2 / 4 + 0 + 3 / 4) / 3,
        (2 / 4 + 0 + 3 / 4) / 3,
        (2 / 4 + 0 + 4 / 4) / 3,
    ]
    assert curve == pytest.approx(expected)
    assert curve[-1] == pytest.approx(avg_at_k(RESULTS))
    assert accuracy_by_budget(RESULTS, 2) == pytest.approx(expected[:2])


def test_correct_at_budget() -> None:
    result = answered("s", 0, 3, True, "", "")
    assert result.correct_at_budgets(5) == [False, False, True, True, True]
    assert answered("s", 0, 3, False, "", "").correct_at_budgets(4) == [False] * 4
    assert ended("s", 0, "over_turn", 6, "", "").correct_at(32) is False


def test_breakdowns_by_split_and_category() -> None:
    assert breakdown(RESULTS, "split") == {
        "easy": {"samples": 1, "episodes": 4, "avg_at_k": 0.5, "pass_at_k": 1.0},
        "hard": {"samples": 2, "episodes": 8, "avg_at_k": 0.5, "pass_at_k": 0.5},
    }
    assert breakdown(RESULTS, "category") == {
        "colour": {"samples": 2, "episodes": 8, "avg_at_k": 0.75, "pass_at_k": 1.0},
        "count": {"samples": 1, "episodes": 4, "avg_at_k": 0.0, "pass_at_k": 0.0},
    }
    with pytest.raises(ValueError, match="'split' or 'category'"):
        breakdown(RESULTS, "source")


def test_turns_of_correct_answers_and_statuses() -> None:
    assert correct_turn_counts(RESULTS) == {1: 2, 2: 1, 3: 1, 5: 1, 8: 1}
    assert status_counts(RESULTS) == {"answered": 8, "no_answer": 1, "over_turn": 1, "over_context": 1, "error": 1}
    assert status_counts([]) == {"answered": 0, "no_answer": 0, "over_turn": 0, "over_context": 0, "error": 0}


def test_percentiles_and_distributions() -> None:
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([7], 90) == 7
    assert percentile([1, 2, 3, 4, 5], 0) == 1 and percentile([1, 2, 3, 4, 5], 100) == 5
    assert distribution([1, None, 2, 3, 4]) == {"count": 4, "mean": 2.5, "p50": 2.5, "p90": pytest.approx(3.7), "max": 4.0}
    assert distribution([None]) == {"count": 0, "mean": None, "p50": None, "p90": None, "max": None}
    with pytest.raises(ValueError):
        percentile([], 50)


def test_turn_stats_use_every_turn_of_every_episode() -> None:
    stats = turn_stats(RESULTS)
    assert stats["completion_tokens"] == {"count": 4, "mean": 25.0, "p50": 25.0, "p90": pytest.approx(37.0), "max": 40.0}
    assert stats["prompt_tokens"] == {"count": 1, "mean": 500.0, "p50": 500.0, "p90": 500.0, "max": 500.0}
    assert stats["latency_s"]["mean"] == pytest.approx(0.25)
    assert stats["latency_s"]["p50"] == pytest.approx(0.25)


def test_summarize_is_json_ready_and_complete() -> None:
    summary = summarize(RESULTS, 8)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["samples"] == 3 and summary["episodes"] == 12
    assert summary["runs_per_sample"] == {"min": 4, "max": 4}
    assert summary["avg_at_k"] == pytest.approx(0.5)
    assert summary["pass_at_k"] == pytest.approx(2 / 3)
    assert summary["pass_at"] == pytest.approx({"1": 0.5, "2": 11 / 18, "4": 2 / 3})
    assert summary["accuracy_by_budget"] == pytest.approx(accuracy_by_budget(RESULTS, 8))
    assert summary["correct_turns"] == [2, 1, 1, 0, 1, 0, 0, 1]
    assert summary["status_counts"]["over_turn"] == 1
    assert summary["by_split"]["easy"]["avg_at_k"] == 0.5
    assert summary["turns"]["count"] == 12 and summary["turns"]["max"] == 8.0
    assert summary["turns_correct"]["mean"] == pytest.approx((2 + 5 + 1 + 1 + 3 + 8) / 6)
    assert summary["per_turn"]["completion_tokens"]["count"] == 4
    with pytest.raises(ValueError, match="beyond max_turns=6"):
        summarize(RESULTS, 6)


def test_summarize_of_nothing() -> None:
    summary = summarize([], 4)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["avg_at_k"] is None and summary["accuracy_by_budget"] is None
    assert summary["correct_turns"] == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="no results"):
        avg_at_k([])


def test_samples_are_keyed_by_split_and_duplicates_are_refused() -> None:
    results = [answered("0", 0, 1, True, "easy", ""), answered("0", 0, 1, False, "hard", "")]
    assert len(group_by_sample(results)) == 2
    assert avg_at_k(results) == 0.5
    with pytest.raises(ValueError, match="run 0 twice"):
        group_by_sample(results + [answered("0", 0, 2, True, "easy", "")])


def test_episode_result_checks_itself_and_round_trips() -> None:
    with pytest.raises(ValueError, match="status 'done'"):
        EpisodeResult("s", 0, status="done")
    with pytest.raises(ValueError, match="no answer_turn"):
        EpisodeResult("s", 0, status="answered", correct=True, num_turns=2)
    with pytest.raises(ValueError, match="outside 1..2"):
        EpisodeResult("s", 0, status="answered", num_turns=2, answer_turn=3)
    result = RESULTS[0]
    assert EpisodeResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


# ---------------------------------------------------------------- from trajectories, and the budget equivalence


def zoom(x0: float, y0: float, x1: float, y1: float, source: str = "original_image") -> str:
    return "<think>Look closer.</think>" + protocol.render_zoom(protocol.Zoom((x0, y0, x1, y1), source))


MIXED = [
    zoom(0, 0, 0.5, 0.5),
    '<think>Try again.</think><grounding>{"bbox_2d": [0.1, 0.1</grounding>',
    zoom(0.25, 0.25, 0.75, 0.75, "observation_1"),
    zoom(0.1, 0.1, 0.9, 0.9, "observation_7"),
    zoom(0.5, 0.5, 1.0, 1.0),
    "<think>It is red.</think><answer>Red</answer>",
]
NO_ANSWER = [zoom(0, 0, 0.5, 0.5), zoom(0, 0, 0.5, 0.5, "observation_1"), "<think>I cannot tell.</think>"]
ZOOMS_ONLY = [zoom(0.1 * i, 0.1 * i, 0.1 * i + 0.5, 0.1 * i + 0.5) for i in range(5)] + ["<answer>red</answer>"]


@pytest.fixture
def sample(tmp_path: Path) -> Sample:
    image = Image.new("RGB", (96, 64), (200, 200, 200))
    image.paste((220, 20, 20), (60, 40, 70, 50))
    path = tmp_path / "scene.png"
    image.save(path)
    return Sample(id="scene-0", image=path, question="What colour is the small square?", answer="red",
                  split="synthetic", category="colour")


def run_script(sample: Sample, script: list[str], limits: Limits, counted: bool = False) -> Trajectory:
    env = ZoomEnv(sample, limits)
    for index, text in enumerate(script):
        counts = {"prompt_tokens": 900 + 150 * index, "completion_tokens": 20 + index} if counted else {}
        if env.step(Generation(text=text, latency_s=0.5, **counts)):
            return env.trajectory
    raise AssertionError("the script ran out before the episode ended")


@pytest.mark.parametrize(
    ("script", "limits", "counted"),
    [
        (MIXED, Limits(max_turns=32), False),
        (MIXED, Limits(max_turns=32), True),
        (MIXED, Limits(max_turns=32, max_images=3), False),
        (MIXED, Limits(max_turns=32, numbering="consistent"), False),
        (NO_ANSWER, Limits(max_turns=32), False),
        (ZOOMS_ONLY, Limits(max_turns=4), False),
    ],
    ids=["mixed", "mixed-engine-counts", "mixed-image-budget", "mixed-consistent", "no-answer", "over-turn"],
)
def test_truncating_equals_running_with_a_smaller_budget(
    sample: Sample, script: list[str], limits: Limits, counted: bool
) -> None:
    full = run_script(sample, script, limits, counted)
    for budget in range(1, limits.max_turns + 1):
        budget_limits = Limits(**{**full.limits, "max_turns": budget})
        direct = run_script(sample, script, budget_limits, counted)
        assert truncate_trajectory(full, budget).to_dict() == direct.to_dict(), f"budget {budget}"
    assert truncate_trajectory(full, limits.max_turns).to_dict() == full.to_dict()


def test_truncating_a_run_cut_by_the_context_limit(sample: Sample) -> None:
    contexts = []
    env = ZoomEnv(sample, Limits(max_turns=32))
    for text in MIXED[:3]:
        env.step(Generation(text=text))
        contexts.append(env.context_tokens)
    # The observation after turn 3 reaches the window: the full run ends over_context at turn 3.
    limits = Limits(max_turns=32, max_context_tokens=contexts[2], context_reserve=0)
    full = run_script(sample, MIXED, limits)
    assert (full.status, full.num_turns) == (Status.OVER_CONTEXT, 3)
    for budget in range(1, 9):
        direct = run_script(sample, MIXED, Limits(**{**full.limits, "max_turns": budget}))
        assert truncate_trajectory(full, budget).to_dict() == direct.to_dict(), f"budget {budget}"
    assert truncate_trajectory(full, 3).status == Status.OVER_TURN


def test_budget_curve_from_one_run_matches_scoring_truncated_runs(sample: Sample) -> None:
    full = run_script(sample, MIXED, Limits(max_turns=32))
    result = EpisodeResult.from_trajectory(full, score_trajectory(full), run=0)
    assert (result.status, result.correct, result.num_turns, result.answer_turn) == ("answered", True, 6, 6)
    assert result.latency_s == [0.5] * 6
    for budget in range(1, 33):
        assert result.correct_at(budget) == score_trajectory(truncate_trajectory(full, budget)).correct


def test_truncation_keeps_only_the_crops_shown_before_the_cut(sample: Sample) -> None:
    full = run_script(sample, MIXED, Limits(max_turns=32))
    assert [view.index for view in full.views] == [0, 1, 2, 3]
    cut = truncate_trajectory(full, 3)
    assert [view.index for view in cut.views] == [0, 1]
    assert cut.turns[-1].feedback is None and cut.turns[-1].view is None
    assert (cut.answer, cut.limits["max_turns"]) == (None, 3)
    assert full.num_turns == 6 and full.status == Status.ANSWERED  # the original is untouched


def test_truncating_at_the_recorded_budget_keeps_the_recorded_context(sample: Sample) -> None:
    # A run whose env counted tokens its own way: nothing is cut, so nothing is recounted.
    env = ZoomEnv(sample, Limits(max_turns=4), count_tokens=len)
    for text in ZOOMS_ONLY:
        if env.step(Generation(text=text)):
            break
    full = env.trajectory
    assert full.status == Status.OVER_TURN
    assert truncate_trajectory(full, 4).to_dict() == full.to_dict()


def test_truncation_refuses_budgets_it_cannot_know(sample: Sample) -> None:
    full = run_script(sample, ZOOMS_ONLY, Limits(max_turns=4))
    with pytest.raises(ValueError, match="max_turns=4"):
        truncate_trajectory(full, 5)
    with pytest.raises(ValueError, match="at least 1"):
        truncate_trajectory(full, 0)


def test_only_answered_episodes_count_as_correct() -> None:
    trajectory = Trajectory(sample_id="x", question="q", image="x.png", image_size=(8, 8), status=Status.OVER_TURN)
    trajectory.turns = []
    result = EpisodeResult.from_trajectory(trajectory, Score(True, "red", "exact", "forced"), run=2)
    assert (result.correct, result.answer_turn, result.run, result.num_turns) == (False, None, 2, 0)


# ---------------------------------------------------------------- search behaviour and HR-Bench rotations

from mini_o3.eval import crops  # noqa: E402
from mini_o3.eval.behaviour import accuracy_by_tokens, search_behaviour, token_budgets  # noqa: E402
from mini_o3.eval.rotation import rotation_score  # noqa: E402
from mini_o3.agent.trajectory import TurnRecord, ViewRecord  # noqa: E402


def searched(boxes: list[tuple[int, int, int, int]], targets: list[list[float]] | None = None) -> Trajectory:
    """A trajectory on a 100x100 image whose crops have these boxes (in original pixels)."""
    views = [ViewRecord(0, (0, 0, 100, 100), (100, 100))] + [ViewRecord(i, box, (56, 56), 0) for i, box in enumerate(boxes, 1)]
    turns = [TurnRecord("<grounding>...</grounding>", "zoom", "observation", view=i, completion_tokens=10) for i in range(1, len(boxes) + 1)]
    turns.append(TurnRecord("<answer>x</answer>", "answer", completion_tokens=5))
    meta: dict = {"run": 0}
    if targets is not None:
        meta["target_boxes"] = targets
    return Trajectory("s", "q", "x.jpg", (100, 100), "x", status=Status.ANSWERED, answer="x", turns=turns, views=views, meta=meta)


def test_crop_geometry() -> None:
    assert crops.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert crops.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert crops.iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert crops.covers((0, 0, 50, 50), (10, 10, 20, 20))
    assert crops.covers((0, 0, 50, 50), (45, 10, 55, 20)) is False  # half of the target is outside
    assert crops.covers((0, 0, 50, 50), (46, 10, 50.4, 20))  # 4 of its 4.4 px inside (0.91): enough
    assert crops.covers((0, 0, 50, 50), (10, 10, 10, 20)) is False  # an empty target is never covered


def test_repeated_crops_count_boxes_already_seen_the_original_included() -> None:
    trajectory = searched([(0, 0, 50, 50), (1, 1, 50, 50), (50, 50, 100, 100), (0, 0, 100, 100), (0, 0, 50, 50)])
    # crop 2 repeats crop 1 (IoU 0.96), crop 4 is the whole image (view 0), crop 5 repeats crop 1 again
    assert crops.repeated_crops(trajectory) == 3
    assert crops.repeated_crops(searched([(0, 0, 50, 50), (0, 0, 40, 50)])) == 0  # IoU 0.8 is a new view


def test_crops_on_target_need_boxes() -> None:
    assert crops.crops_on_target(searched([(0, 0, 50, 50)])) is None
    trajectory = searched([(0, 0, 50, 50), (50, 50, 100, 100), (60, 60, 70, 70)], targets=[[55, 55, 65, 65], [5, 5, 6, 6]])
    assert crops.crops_on_target(trajectory) == 2  # the first holds target 2, the second target 1, the third neither whole


def test_episode_results_carry_search_counts_tokens_and_rotation() -> None:
    trajectory = searched([(0, 0, 50, 50), (0, 0, 50, 50)], targets=[[10, 10, 20, 20]])
    trajectory.meta.update(cycle_category=2, group="g1")
    trajectory.turns[0].completion_tokens = None  # no engine count: the env's estimate stands in
    result = EpisodeResult.from_trajectory(trajectory, Score(True, "x", "exact", ""), 0)
    estimate = len(trajectory.turns[0].text.encode()) * 2 // 7 + 1
    assert (result.zooms, result.repeated_zooms, result.target_zooms) == (2, 1, 2)
    assert result.generated_tokens == estimate + 10 + 5
    assert (result.cycle, result.group) == (2, "g1")
    assert EpisodeResult.from_dict(result.to_dict()) == result


def with_search(result: EpisodeResult, zooms: int, repeated: int, target: int | None, tokens: int) -> EpisodeResult:
    result.zooms, result.repeated_zooms, result.target_zooms, result.generated_tokens = zooms, repeated, target, tokens
    return result


SEARCHED = [
    with_search(answered("a", 0, 3, True, "", ""), 2, 1, 1, 100),
    with_search(answered("a", 1, 1, False, "", ""), 0, 0, 0, 20),
    with_search(answered("b", 0, 4, True, "", ""), 3, 0, 0, 300),
    with_search(ended("b", 1, "over_turn", 5, "", ""), 5, 2, None, 500),
]


def test_search_behaviour_has_exact_figures() -> None:
    figures = search_behaviour(SEARCHED)
    assert figures["zoom_histogram"] == [1, 0, 1, 1, 0, 1]
    assert (figures["zooms"], figures["repeated_zooms"]) == (10, 3)
    assert figures["repeated_share"] == pytest.approx(0.3)
    assert figures["episodes_with_a_repeat"] == 0.5
    assert figures["zooms_per_correct_episode"]["mean"] == 2.5
    target = figures["target"]  # over the three episodes whose sample has boxes
    assert (target["episodes"], target["zooms"], target["zooms_on_target"]) == (3, 5, 1)
    assert target["episodes_that_found_it"] == pytest.approx(1 / 3)
    assert (target["accuracy_when_found"], target["accuracy_when_not_found"]) == (1.0, 0.5)
    assert figures["token_budgets"] == [16, 32, 64, 128, 256, 512]
    # a is right once in two runs with 100 tokens; b once in two with 300
    assert figures["accuracy_by_tokens"] == [0.0, 0.0, 0.0, 0.25, 0.25, 0.5]
    assert search_behaviour([with_search(answered("c", 0, 1, True, "", ""), 0, 0, None, 4)])["target"] is None


def test_a_token_cap_equal_to_what_an_episode_wrote_keeps_it() -> None:
    exact = [with_search(answered("e", 0, 1, True, "", ""), 0, 0, None, 64)]
    assert accuracy_by_tokens(exact, [32, 63, 64, 65]) == [0.0, 0.0, 1.0, 1.0]


def test_accuracy_by_tokens_reaches_avg_at_k_and_never_falls() -> None:
    curve = accuracy_by_tokens(RESULTS, token_budgets(1000))
    assert curve == sorted(curve) and curve[-1] == avg_at_k(RESULTS)
    assert token_budgets(16) == [16] and token_budgets(17) == [16, 32]


def rotated(sample: str, run: int, cycle: int, correct: bool, category: str, group: str) -> EpisodeResult:
    result = answered(sample, run, 1, correct, "hr_bench_4k/" + category, category)
    result.cycle, result.group = cycle, group
    return result


def authors_hrbench_average(results: list[EpisodeResult]) -> dict[str, float]:
    """HR-Bench's own arithmetic at K=1: group rows by cycle_category, accuracy per group (all and per category), mean over groups."""
    sums: dict[str, float] = {}
    cycles = sorted({result.cycle for result in results})
    for cycle in cycles:
        rows = [result for result in results if result.cycle == cycle]
        for name in ["all"] + sorted({result.category for result in rows}):
            chosen = [result for result in rows if name in ("all", result.category)]
            sums[name] = sums.get(name, 0.0) + sum(result.correct for result in chosen) / len(chosen)
    return {name: total / len(cycles) for name, total in sums.items()}


def test_rotation_score_follows_the_hrbench_authors() -> None:
    # Question q (single) is right in rotations 0 and 1 only; question p (cross) in every rotation but 3.
    results = [rotated(f"q{c}", 0, c, c < 2, "single", "q") for c in range(4)] + [rotated(f"p{c}", 0, c, c != 3, "cross", "p") for c in range(4)]
    score = rotation_score(results)
    assert score["cycles"] == {"0": 1.0, "1": 1.0, "2": 0.5, "3": 0.0}
    authors = authors_hrbench_average(results)
    assert score["average"] == authors["all"] == 0.625
    assert score["by_category"]["single"]["average"] == authors["single"] == 0.5
    assert score["by_category"]["cross"]["average"] == authors["cross"] == 0.75
    assert score["plain"] == 0.625  # equal rotations: the authors' mean is plain accuracy
    assert score["all_rotations"] == 0.0  # neither question is right in all four
    assert (score["questions"], score["complete_groups"]) == (2, 2)


def test_rotation_score_with_k_runs_and_uneven_rotations() -> None:
    results = [rotated("q0", run, 0, True, "single", "q") for run in range(2)]
    results += [rotated("q1", 0, 1, True, "single", "q"), rotated("q1", 1, 1, False, "single", "q")]
    results += [rotated("p0", run, 0, run == 0, "single", "p") for run in range(2)]
    score = rotation_score(results)
    assert score["cycles"] == {"0": 0.75, "1": 0.5}
    assert score["average"] == 0.625 and score["plain"] == pytest.approx(2 / 3)  # rotation 0 holds two questions
    assert score["all_rotations"] == pytest.approx((1.0 * 0.5 + 0.5) / 2)  # q: 1.0 x 0.5; p has one rotation here
    assert score["complete_groups"] == 1
    assert rotation_score(RESULTS) is None
    # Right half the time in each of two rotations: one draw of each is right together a quarter of the time.
    halves = [rotated(f"h{c}", run, c, run == 0, "single", "h") for c in range(2) for run in range(2)]
    assert rotation_score(halves)["all_rotations"] == 0.25


def test_summarize_holds_search_and_rotation() -> None:
    summary = summarize(SEARCHED, 8)
    assert summary["search"]["zooms"] == 10 and summary["rotation"] is None
    json.dumps(summary, allow_nan=False)
    assert summarize([], 4)["search"] is None
