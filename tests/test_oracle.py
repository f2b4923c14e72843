"""The oracle: always right, re-executes to the same crops, all patterns, 1 to >10 turns, the grid scan."""

from __future__ import annotations

import collections
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mini_o3.agent import protocol
from mini_o3.agent.loop import EpisodeConfig, run_episode
from mini_o3.agent.sample import Sample
from mini_o3.coldstart.exemplars import classify_patterns
from mini_o3.data.synth import GridConfig, SynthOptions, load_synthetic, synthesize
from mini_o3.agent.env import Limits, ZoomEnv
from mini_o3.agent.policy import Generation, PolicyError
from mini_o3.coldstart.oracle import PATTERNS, OraclePolicy, PatternMix, grid_layout, oracle_answer
from mini_o3.eval.scoring import score_answer
from mini_o3.agent.trajectory import Status

LIMITS = Limits(max_turns=16)
CONFIG = EpisodeConfig(limits=LIMITS)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    """Real generator output: easy and medium scenes (every question kind) and the grid world."""
    root = tmp_path_factory.mktemp("synth")
    options = SynthOptions(contact_sheet=0)
    samples = []
    for level, size, count in (("easy", 1024, 6), ("medium", 1664, 4), ("grid", 448, 4)):
        synthesize(root / level, count, level, size, seed=5, progress=False, options=options)
        samples += load_synthetic(root / level)
    return samples


@pytest.fixture(scope="module")
def plain_samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    """Samples with only Sample.boxes (no generator metadata), targets near the edges included."""
    root = tmp_path_factory.mktemp("plain")
    rng = np.random.default_rng(0)
    samples = []
    for index, (width, height, side, corner) in enumerate(
        [(1600, 1200, 12, False), (900, 1400, 30, True), (2000, 1000, 9, False), (1200, 1200, 400, False)]
    ):
        image = Image.new("RGB", (width, height), (200, 200, 190))
        draw = ImageDraw.Draw(image)
        for _ in range(40):
            x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            draw.rectangle((x, y, x + 8, y + 8), fill=(120, 120, 120))
        x, y = (width - side, height - side) if corner else (int(rng.integers(0, width - side)), int(rng.integers(0, height - side)))
        draw.rectangle((x, y, x + side - 1, y + side - 1), fill=(220, 30, 30))
        path = root / f"plain_{index}.png"
        image.save(path)
        options = {"A": "blue", "B": "red"} if index % 2 else {}
        samples.append(
            Sample(
                id=f"plain/{index}",
                image=path,
                question="What colour is the small square?" + ("\n(A) blue\n(B) red" if options else ""),
                answer="B" if options else "red",
                options=options,
                boxes=[(x, y, x + side, y + side)],
            )
        )
    return samples


def _replayed(sample: Sample, texts: list[str]) -> ZoomEnv:
    env = ZoomEnv(sample, LIMITS)
    for text in texts:
        env.step(Generation(text))
    return env


def test_oracle_is_always_right_and_replays_to_the_same_crops(synthetic: list[Sample], plain_samples: list[Sample]) -> None:
    oracle = OraclePolicy(seed=1, max_turns=LIMITS.max_turns)
    nested = 0
    for sample in synthetic + plain_samples:
        for run in range(2):
            episode = run_episode(oracle, sample, CONFIG, run=run)  # the agent binds the oracle itself
            trajectory = episode.trajectory
            assert trajectory.status is Status.ANSWERED, (sample.id, trajectory.error)
            assert score_answer(trajectory.answer, sample.answer, sample.options or None).correct, (sample.id, trajectory.answer)
            assert all(turn.kind in ("zoom", "answer") and turn.feedback != "error" for turn in trajectory.turns)
            assert trajectory.turns[-1].kind == "answer"
            assert all(turn.text.startswith("<think>") and "</think>" in turn.text for turn in trajectory.turns)
            nested += any(view.source not in (None, 0) for view in trajectory.views)
            replayed = _replayed(sample, [turn.text for turn in trajectory.turns])
            assert [view.record.box for view in replayed.views] == [view.box for view in trajectory.views]
            for original, again in zip(episode.views, replayed.views):
                assert original.image.size == again.image.size
                assert original.image.tobytes() == again.image.tobytes()
    assert nested > 0


def test_every_search_ends_on_a_view_holding_the_target(synthetic: list[Sample], plain_samples: list[Sample]) -> None:
    oracle = OraclePolicy(seed=2, max_turns=LIMITS.max_turns)
    for sample in synthetic + plain_samples:
        for run in range(3):
            plan = oracle.plan(sample, run)
            assert plan.turns[-1].role == "answer"
            if plan.num_turns == 1:
                continue
            last = plan.views[-1]
            x0, y0, x1, y1 = plan.target
            width, height = plan.views[0][2], plan.views[0][3]
            # A crop never includes its source's last row and column: allow for each level of nesting.
            slack = len(plan.views)
            assert last[0] <= x0 and last[1] <= y0, (sample.id, last, plan.target)
            assert last[2] >= min(x1, width - slack) and last[3] >= min(y1, height - slack), (sample.id, last, plan.target)
            for turn in plan.turns[:-1]:
                box = turn.box
                assert box is not None and box[2] > box[0] and box[3] > box[1]


def test_plans_are_deterministic_per_run_and_differ_between_runs(synthetic: list[Sample]) -> None:
    oracle = OraclePolicy(seed=3)
    sample = synthetic[6]
    assert oracle.plan(sample, 0).texts == oracle.plan(sample, 0).texts
    assert OraclePolicy(seed=3).bind(sample, 4).oracle.plan(sample, 4).texts == oracle.plan(sample, 4).texts
    texts = {tuple(oracle.plan(sample, run).texts) for run in range(8)}
    assert len(texts) >= 6
    assert oracle.plan(sample, 0).texts != OraclePolicy(seed=4).plan(sample, 0).texts


def test_all_patterns_appear_in_the_configured_mix_and_the_classifier_agrees(plain_samples: list[Sample]) -> None:
    sample = plain_samples[3]  # a large target, legible in the first view: direct answers are allowed
    size = (1200, 1200)
    mix = PatternMix(direct=0.1, depth_first=0.3, trial_and_error=0.3, goal_maintenance=0.3)
    oracle = OraclePolicy(mix, seed=0)
    plans = [oracle.plan(sample, run, size) for run in range(400)]
    counts = collections.Counter(plan.pattern for plan in plans)
    assert set(counts) == set(PATTERNS)
    for name in PATTERNS:
        assert abs(counts[name] / len(plans) - mix.weights()[name]) < 0.07, counts
    only = OraclePolicy(PatternMix(direct=0, depth_first=1, trial_and_error=0, goal_maintenance=0), seed=0)
    assert {only.plan(sample, run, size).pattern for run in range(20)} == {"depth_first"}


def test_trajectories_show_the_pattern_they_were_planned_with(synthetic: list[Sample]) -> None:
    oracle = OraclePolicy(seed=5, max_turns=LIMITS.max_turns)
    seen = collections.Counter()
    for sample in [s for s in synthetic if s.split != "grid"]:
        for run in range(6):
            trajectory = run_episode(oracle, sample, CONFIG, run=run).trajectory
            planned = oracle.plan(sample, run).pattern
            shown = classify_patterns(trajectory)
            seen[planned] += 1
            if planned == "direct":
                assert shown == ["direct"]
            else:
                assert planned in shown or (planned == "depth_first" and trajectory.num_zooms == 1), (planned, shown)
    assert {"depth_first", "trial_and_error", "goal_maintenance"} <= set(seen)


def test_turn_counts_span_one_to_more_than_ten_and_respect_the_limits(plain_samples: list[Sample]) -> None:
    sample = plain_samples[3]
    size = (1200, 1200)
    mix = PatternMix(direct=0.2, depth_first=0.2, trial_and_error=0.3, goal_maintenance=0.3, long_share=0.5)
    turns = [OraclePolicy(mix, seed=0, max_turns=20).plan(sample, run, size).num_turns for run in range(200)]
    assert min(turns) == 1 and max(turns) > 10 and max(turns) <= 20
    assert len(set(turns)) >= 8
    short = PatternMix(long_share=0.0)
    assert max(OraclePolicy(short, seed=0, max_turns=20).plan(plain_samples[0], run).num_turns for run in range(100)) <= 10
    capped = [OraclePolicy(mix, seed=0, max_turns=6).plan(plain_samples[0], run).num_turns for run in range(100)]
    assert max(capped) <= 6
    assert OraclePolicy(mix, seed=0, max_turns=1).plan(plain_samples[0], 0).num_turns == 1


def test_wording_varies_between_plans(synthetic: list[Sample]) -> None:
    oracle = OraclePolicy(seed=0)
    sample = synthetic[0]
    first_thoughts = {oracle.plan(sample, run).texts[0].split("</think>")[0] for run in range(40)}
    assert len(first_thoughts) >= 20
    answers = {oracle.plan(sample, run).texts[-1].split("</think>")[0] for run in range(40)}
    assert len(answers) >= 8


def test_grid_world_scans_cells_row_by_row_until_the_target(synthetic: list[Sample]) -> None:
    oracle = OraclePolicy(seed=0, max_turns=LIMITS.max_turns)
    grids = [sample for sample in synthetic if sample.split == "grid"]
    assert grids
    for sample in grids:
        cells, target, rows, cols = grid_layout(sample, Image.open(sample.image).size)
        trajectory = run_episode(oracle, sample, CONFIG).trajectory
        assert trajectory.status is Status.ANSWERED and trajectory.answer == oracle_answer(sample)
        assert trajectory.num_turns == target + 2
        for index, view in enumerate(trajectory.views[1:]):
            assert view.source == 0
            cell = cells[index]
            assert view.box[0] <= cell[0] and view.box[1] <= cell[1]
            assert view.box[2] >= min(cell[2], trajectory.image_size[0] - 1) and view.box[3] >= min(cell[3], trajectory.image_size[1] - 1)
        for turn in trajectory.turns[1:-1]:
            assert "the only shape that is not grey" in turn.text  # the goal, restated after each wrong cell
        assert "goal_maintenance" in classify_patterns(trajectory) or trajectory.num_turns <= 3


def test_multiple_choice_answers_are_letters_and_open_answers_the_ground_truth(synthetic: list[Sample]) -> None:
    for sample in synthetic:
        answer = oracle_answer(sample)
        if sample.options:
            assert answer in sample.options
        else:
            assert answer == sample.answer
        assert score_answer(answer, sample.answer, sample.options or None).correct


def test_the_oracle_notices_when_the_conversation_leaves_its_plan(plain_samples: list[Sample]) -> None:
    sample = plain_samples[0]
    oracle = OraclePolicy(PatternMix(direct=0, depth_first=1, trial_and_error=0, goal_maintenance=0), seed=0)
    bound = oracle.bind(sample, 0)
    env = ZoomEnv(sample, LIMITS)
    env.step(bound.generate(env.messages()))
    other = ZoomEnv(sample, LIMITS)
    other.step(Generation("<think>elsewhere</think>" + protocol.render_zoom(protocol.Zoom((0.0, 0.0, 0.5, 0.5)))))
    with pytest.raises(PolicyError, match="disagree"):
        bound.generate(other.messages())
    errored = ZoomEnv(sample, LIMITS)
    errored.step(Generation("<think>oops</think><grounding>{}</grounding>"))
    with pytest.raises(PolicyError, match="expected 2 images"):
        bound.generate(errored.messages())


def test_unbound_use_and_samples_without_boxes_fail_clearly(plain_samples: list[Sample]) -> None:
    with pytest.raises(PolicyError, match="bind"):
        OraclePolicy().generate([])
    boxless = replace(plain_samples[0], boxes=[], id="no-boxes")
    trajectory = run_episode(OraclePolicy(), boxless, CONFIG).trajectory
    assert trajectory.status is Status.ERROR and "no target boxes" in trajectory.error
    with pytest.raises(ValueError, match="weights"):
        PatternMix(direct=0, depth_first=0, trial_and_error=0, goal_maintenance=0)


def test_grid_layout_matches_the_generator_cells(tmp_path: Path) -> None:
    options = SynthOptions(contact_sheet=0, grid=GridConfig(rows=2, cols=4))
    synthesize(tmp_path / "g", 2, "grid", 500, seed=1, progress=False, options=options)
    for sample in load_synthetic(tmp_path / "g"):
        cells, target, rows, cols = grid_layout(sample, Image.open(sample.image).size)
        assert (rows, cols) == (2, 4) and list(cells[target]) == sample.meta["cell_box"]


def test_terse_grid_wording_uses_the_base_models_phrases(tmp_path) -> None:
    from mini_o3.agent.loop import EpisodeConfig
    from mini_o3.data.synth import GridConfig, SynthOptions, load_synthetic, synthesize
    from mini_o3.agent.env import Limits
    from mini_o3.agent.images import ResizePolicy

    resize = ResizePolicy(max_pixels=112 * 112, min_pixels=3136)
    synthesize(tmp_path / "grid", 6, "grid", 672, 4, progress=False, options=SynthOptions(grid=GridConfig(rows=3, cols=3), resize=resize, contact_sheet=0))
    oracle = OraclePolicy(max_turns=10, resize=resize, grid_wording="terse")
    for sample in load_synthetic(tmp_path / "grid"):
        trajectory = run_episode(oracle, sample, EpisodeConfig(limits=Limits(max_turns=10), resize=resize)).trajectory
        colour = sample.options[sample.answer]
        assert trajectory.status is Status.ANSWERED and trajectory.answer == colour and score_answer(colour, sample.answer, sample.options).correct
        cell = sample.meta["cell"][0] * 3 + sample.meta["cell"][1] + 1
        assert trajectory.num_turns == cell + 1
        assert trajectory.turns[0].text.startswith("<think>Cell 1.</think><grounding>")
        assert all(turn.text.startswith(f"<think>No coloured shape. Cell {n}.</think>") for n, turn in enumerate(trajectory.turns[1:-1], 2))
        assert trajectory.turns[-1].text == f"<think>Found a {colour} shape.</think>\n<answer>{colour}</answer>"
    with pytest.raises(ValueError, match="grid_wording"):
        OraclePolicy(grid_wording="chatty")


@pytest.mark.parametrize("wording", ["terse", "natural"])
def test_impatient_grid_scans_give_up_before_the_target_and_guess(tmp_path, wording) -> None:
    from mini_o3.agent.loop import EpisodeConfig
    from mini_o3.data.synth import GridConfig, SynthOptions, load_synthetic, synthesize
    from mini_o3.agent.env import Limits
    from mini_o3.agent.images import ResizePolicy

    resize = ResizePolicy(max_pixels=112 * 112, min_pixels=3136)
    synthesize(tmp_path / "grid", 12, "grid", 448, 7, progress=False, options=SynthOptions(grid=GridConfig(rows=3, cols=3), resize=resize, contact_sheet=0))
    samples = [s for s in load_synthetic(tmp_path / "grid") if s.meta["cell"] != [0, 0]]
    assert samples
    config = EpisodeConfig(limits=Limits(max_turns=10), resize=resize)
    patient = OraclePolicy(max_turns=10, resize=resize, grid_wording=wording)
    impatient = OraclePolicy(PatternMix(grid_give_up=1.0), max_turns=10, resize=resize, grid_wording=wording)
    guesses = set()
    for sample in samples:
        target = sample.meta["cell"][0] * 3 + sample.meta["cell"][1]
        assert run_episode(patient, sample, config).trajectory.num_turns == target + 2
        for run in range(3):
            trajectory = run_episode(impatient, sample, config).trajectory
            assert trajectory.status is Status.ANSWERED
            assert 2 <= trajectory.num_turns <= target + 1  # 1..target wrong cells, then the guess
            if wording == "terse":  # the terse oracle answers with the option's text
                assert trajectory.answer in sample.options.values()
                assert trajectory.turns[-1].text == f"<think>No coloured shape. Guess {trajectory.answer}.</think>\n<answer>{trajectory.answer}</answer>"
            else:
                assert trajectory.answer in sample.options
            guesses.add(trajectory.answer)
    assert len(guesses) > 1  # guesses are drawn, not the truth
    with pytest.raises(ValueError, match="grid_give_up"):
        PatternMix(grid_give_up=1.5)
