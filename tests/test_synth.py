"""The synthetic probe generator: determinism, resume, the checks, legibility, records, loading, pictures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mini_o3.data.checks import check_problem, near_distractors, oracle_zooms
from mini_o3.data.contact_sheet import write_contact_sheet
from mini_o3.data.generate import first_view_scale, make_problem
from mini_o3.data.loading import load_dataset
from mini_o3.data.problems import LEGIBLE_PX, GridConfig, Problem, SynthError, SynthOptions, resolve
from mini_o3.data.scene import COLOURS, DIGITS, LETTERS, PATTERNS, SHAPES, WORDS, Scene, SceneObject, feature_px, label_layout, render
from mini_o3.data.synth import synthesize
from mini_o3.data.synth_loading import is_synthetic_dir, load_synthetic
from mini_o3.agent.images import ResizePolicy

FAST = SynthOptions(contact_sheet=0)


def _problem(kind: str, level: str = "medium", size: int = 2048, index: int = 0) -> Problem:
    options = replace(FAST, question_kinds=((kind, 1.0),))
    problem, _, _, _ = make_problem(11, index, level, size, options)
    return problem


def _free_box(problem: Problem, side: int) -> tuple[int, int, int, int]:
    """A spot that touches no object, frame or relation neighbourhood."""
    scene = problem.scene
    taken = [o.box for o in scene.objects] + [f.box for f in scene.frames]
    for y in range(0, scene.height - side, side):
        for x in range(0, scene.width - side, side):
            box = (x, y, x + side, y + side)
            grown = (x - 3 * side, y - 3 * side, x + 4 * side, y + 4 * side)
            if not any(b[0] < grown[2] and grown[0] < b[2] and b[1] < grown[3] and grown[1] < b[3] for b in taken):
                return box
    raise AssertionError("no free spot in the scene")


# ---------------------------------------------------------------- the checks


@pytest.mark.parametrize("kind", ["attribute", "inside", "relation"])
def test_checker_catches_a_planted_twin_of_the_target(kind: str) -> None:
    problem = _problem(kind)
    assert check_problem(problem)[0] == []
    resolution = resolve(problem.scene, problem.query)
    anchor = problem.scene.objects[resolution.referents[0]]
    spot = _free_box(problem, anchor.side)
    if kind == "inside":
        # A twin inside the same frame: move the spot into the frame's free area.
        frame = problem.scene.frames[problem.query.frame]
        inner = frame.inner
        spot = next(
            (x, y, x + anchor.side, y + anchor.side)
            for y in range(inner[1] + 2, inner[3] - anchor.side - 2, 3)
            for x in range(inner[0] + 2, inner[2] - anchor.side - 2, 3)
            if all(not (o.box[0] - 2 < x + anchor.side and x - 2 < o.box[2] and o.box[1] - 2 < y + anchor.side and y - 2 < o.box[3]) for o in problem.scene.objects)
        )
    problem.scene.objects.append(anchor.moved(spot))
    reasons, _ = check_problem(problem)
    assert reasons == ["ambiguous"]


def test_checker_catches_a_wrong_count() -> None:
    problem = _problem("count")
    assert check_problem(problem)[0] == []
    index = resolve(problem.scene, problem.query).referents[0]
    counted = problem.scene.objects[index]
    # Turn one counted object into a near miss: the scene's count no longer matches the answer.
    name, value = next(iter(problem.query.describe.items()))
    problem.scene.objects[index] = replace(counted, **{name: _other(name, value)})
    assert "ambiguous" in check_problem(problem)[0]


def _other(name: str, value: str) -> str:
    domain = {"shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS, "label": LETTERS + DIGITS + WORDS}[name]
    return next(v for v in domain if v != value)


def test_checker_catches_a_crowded_relation() -> None:
    problem = _problem("relation")
    anchor_index, neighbour_index = resolve(problem.scene, problem.query).referents
    anchor = problem.scene.objects[anchor_index]
    # A second object right beside the anchor, on the side away from the neighbour.
    dx = anchor.centre[0] - problem.scene.objects[neighbour_index].centre[0]
    dy = anchor.centre[1] - problem.scene.objects[neighbour_index].centre[1]
    shift_x, shift_y = int(np.sign(dx)) * int(1.5 * anchor.side), int(np.sign(dy)) * int(1.5 * anchor.side)
    box = (anchor.box[0] + shift_x, anchor.box[1] + shift_y, anchor.box[2] + shift_x, anchor.box[3] + shift_y)
    problem.scene.objects.append(SceneObject("circle", "red", "plain", "Z", box))
    assert "ambiguous" in check_problem(problem)[0]


def test_checker_catches_overlap() -> None:
    problem = _problem("attribute")
    first, second = problem.scene.objects[0], problem.scene.objects[1]
    problem.scene.objects[1] = second.moved((first.box[0] + 2, first.box[1] + 2, first.box[0] + 2 + second.side, first.box[1] + 2 + second.side))
    assert "overlap" in check_problem(problem)[0]


def test_checker_catches_a_distractor_too_small_to_rule_out() -> None:
    problem = _problem("attribute", level="hard", size=3072)
    resolution = resolve(problem.scene, problem.query)
    index, differs = near_distractors(problem.scene, problem.query, resolution.referents)[0]
    obj = problem.scene.objects[index]
    side = next(s for s in range(obj.side, 2, -1) if feature_px(obj.moved((0, 0, s, s)))[differs] < LEGIBLE_PX[differs])
    problem.scene.objects[index] = obj.moved((obj.box[0], obj.box[1], obj.box[0] + side, obj.box[1] + side))
    assert check_problem(problem)[0] == ["distractor_illegible_at_full_resolution"]


def test_checker_catches_two_right_options() -> None:
    problem = _problem("attribute")
    problem.options = {"A": problem.answer, "B": problem.answer, "C": "x", "D": "y"}
    assert "ambiguous_options" in check_problem(problem)[0]


# ---------------------------------------------------------------- legibility


def test_oracle_zoom_count_on_a_4096_image() -> None:
    policy, focus = ResizePolicy(), (2000, 2000, 2020, 2020)
    first = first_view_scale(4096, 4096, policy)
    assert first == pytest.approx(1414 / 4096)
    assert oracle_zooms(4096, 4096, focus, 0.3, policy) == 0
    assert oracle_zooms(4096, 4096, focus, 0.5, policy) == 1  # a 2048 crop is shown at 1414/2048 = 0.69
    assert oracle_zooms(4096, 4096, focus, 0.8, policy) == 2  # a 1024 crop is shown at full resolution
    assert oracle_zooms(4096, 4096, focus, 1.5, policy) is None


@pytest.mark.parametrize(("level", "size"), [("medium", 2048), ("hard", 3072)])
def test_medium_and_hard_answers_are_illegible_at_the_first_view(level: str, size: int) -> None:
    for index in range(4):
        problem, figures, _, _ = make_problem(3, index, level, size, FAST)
        assert not figures.legible_first_view and figures.legible_full_resolution
        assert figures.first_view_px < LEGIBLE_PX[figures.limiting] <= figures.limiting_px
        assert figures.zooms_needed == (1 if level == "medium" else 2)
        # Every needed feature of every referent is below its threshold at the first view for at least one.
        resolution = resolve(problem.scene, problem.query)
        scale = first_view_scale(size, size)
        worst = max(
            LEGIBLE_PX[name] / feature_px(problem.scene.objects[i])[name] for i, needs in zip(resolution.referents, resolution.needs) for name in needs
        )
        assert worst > scale


def test_label_ink_measured_from_the_font_matches_the_pixels() -> None:
    obj = SceneObject("circle", "blue", "striped", "K", (40, 40, 80, 80))
    image = np.asarray(render(Scene(120, 120, [obj], textured=False)), dtype=np.int32)
    patch = image[obj.box[1] : obj.box[3], obj.box[0] : obj.box[2]]
    ink_rows = np.flatnonzero((np.abs(patch - 250).sum(axis=2) < 60).any(axis=1))  # white text on blue
    measured = ink_rows.max() - ink_rows.min() + 1
    assert abs(measured - label_layout("circle", "K", 40).ink_height) <= 1
    assert feature_px(obj)["label"] == label_layout("circle", "K", 40).ink_height


def test_infeasible_level_names_a_size_that_works() -> None:
    with pytest.raises(SynthError, match="--size"):
        synthesize("/nonexistent-not-created", 1, "hard", 1024, 0, progress=False, options=FAST)


# ---------------------------------------------------------------- sets on disk


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "report.json"}


def test_same_seed_same_bytes_and_resume(tmp_path: Path) -> None:
    first = synthesize(tmp_path / "a", 3, "medium", 2048, 5, progress=False, options=FAST)
    assert first.written == 3 and first.skipped == 0
    partial = synthesize(tmp_path / "b", 1, "medium", 2048, 5, progress=False, options=FAST)
    assert partial.written == 1
    resumed = synthesize(tmp_path / "b", 3, "medium", 2048, 5, progress=False, options=FAST)
    assert resumed.written == 2 and resumed.skipped == 1
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    other = synthesize(tmp_path / "c", 1, "medium", 2048, 6, progress=False, options=FAST)
    assert other.n == 1 and _files(tmp_path / "c")["images/synthetic_medium_000000.jpg"] != _files(tmp_path / "a")["images/synthetic_medium_000000.jpg"]
    with pytest.raises(SynthError, match="other settings"):
        synthesize(tmp_path / "b", 3, "medium", 2048, 6, progress=False, options=FAST)


def test_workers_write_the_same_bytes(tmp_path: Path) -> None:
    synthesize(tmp_path / "one", 4, "medium", 2048, 9, workers=1, progress=False, options=FAST)
    synthesize(tmp_path / "two", 4, "medium", 2048, 9, workers=2, progress=False, options=FAST)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_records_are_mini_o3_json_and_load_as_samples(tmp_path: Path) -> None:
    options = replace(FAST, multiple_choice=0.5)
    report = synthesize(tmp_path, 6, "easy", 1024, 1, progress=False, options=options)
    assert report.figures["near_distractors"]["max"] <= 2
    records = json.loads((tmp_path / "data.json").read_text())
    assert len(records) == 6
    for record in records:
        assert set(record) == {"images", "doc_id", "problem", "solution", "data_source", "meta"}
        assert record["problem"].startswith("<image>\n") and record["data_source"] == "synthetic_easy"
        assert (tmp_path / record["images"][0]).is_file()
        meta = record["meta"]
        assert meta["boxes"] and all(len(box) == 4 for box in meta["boxes"])
        assert set(meta["figures"]) >= {"target_side_fraction", "near_distractors", "legible_first_view", "zooms_needed", "magnification_needed"}
        assert meta["seed"] == 1 and meta["level"] == "easy"
    assert is_synthetic_dir(tmp_path)
    samples = load_synthetic(tmp_path)
    assert [s.id for s in samples] == [r["doc_id"] for r in records]
    for sample, record in zip(samples, records):
        assert Path(sample.image).is_file() and sample.boxes
        assert not sample.question.startswith("<image>")
        if sample.options:
            assert sample.answer in sample.options and sample.options[sample.answer] == record["meta"]["answer"]
            assert sample.question.endswith("Answer with the option's letter from the given choices directly.")
            assert f"({sample.answer}) {record['meta']['answer']}" in sample.question
        else:
            assert sample.answer == record["meta"]["answer"]
    assert {s.is_multiple_choice for s in samples} == {True, False}
    assert [s.id for s in load_dataset(f"synthetic:{tmp_path}")] == [s.id for s in samples]
    assert [s.id for s in load_dataset(str(tmp_path))] == [s.id for s in samples]


def test_loader_names_the_file_and_record_of_a_bad_record(tmp_path: Path) -> None:
    synthesize(tmp_path, 2, "easy", 1024, 1, progress=False, options=FAST)
    records = json.loads((tmp_path / "data.json").read_text())
    records[1]["images"] = ["../outside.jpg"]
    (tmp_path / "data.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"data.json: record 1, id 'synthetic_easy_000001': .*outside the data folder"):
        load_synthetic(tmp_path)


def test_contact_sheet_writes_a_picture_and_a_page(tmp_path: Path) -> None:
    synthesize(tmp_path / "set", 2, "easy", 1024, 2, progress=False, options=FAST)
    sheet, page = write_contact_sheet(load_synthetic(tmp_path / "set"), tmp_path / "look", thumb=256)
    with Image.open(sheet) as image:
        assert image.width >= 512 and image.height >= 256
    text = page.read_text()
    assert "synthetic_easy_000000" in text and "answer:" in text and (tmp_path / "look" / "sheet" / "0000.jpg").is_file()


# ---------------------------------------------------------------- the grid world


def test_grid_world_one_coloured_target_hidden_until_its_cell_is_zoomed(tmp_path: Path) -> None:
    policy = ResizePolicy(max_pixels=224 * 224, min_pixels=56 * 56)
    grid = GridConfig(rows=3, cols=3, target_fraction=0.3, first_view_max_px=24, zoomed_min_px=48)
    options = replace(FAST, resize=policy, grid=grid)
    report = synthesize(tmp_path, 4, "grid", 672, 0, progress=False, options=options)
    assert report.rejections == {}
    for sample in load_synthetic(tmp_path):
        assert sample.options == {"A": "red", "B": "green", "C": "blue", "D": "yellow"}
        assert sample.meta["question"] == "What colour is the only shape that is not grey?"
        row, col = sample.meta["cell"]
        x0, y0, x1, y1 = sample.meta["cell_box"]
        box = sample.boxes[0]
        assert x0 <= box[0] and box[2] <= x1 and y0 <= box[1] and box[3] <= y1
        assert (x0, y0) == (col * 224, row * 224)
        assert sample.meta["figures"]["target_side_fraction"] * 672 * first_view_scale(672, 672, policy) <= 24


def test_synth_still_exports_the_names_it_held_before_the_split() -> None:
    import mini_o3.data.synth as synth

    names = (
        "ATTRIBUTES LEGIBLE_PX QUESTION_KINDS DIRECTIONS OPEN_INSTRUCTION DATA_FILE CONFIG_FILE REPORT_FILE SYNTH_VERSION "
        "SynthError PlacementError AmbiguousError LevelSpec LEVELS GridConfig SynthOptions Query Resolution Problem "
        "failed_predicates resolve shown_scale oracle_zooms Figures near_distractors measure overlaps check_problem "
        "first_view_scale image_size check_feasible generate_problem generate_grid_problem make_problem problem_record "
        "make_record SynthReport summarise_figures synthesize is_synthetic_dir iter_synthetic load_synthetic"
    ).split()
    assert [name for name in names + synth.__all__ if not hasattr(synth, name)] == []
    assert synth.load_synthetic is load_synthetic and synth.SynthOptions is SynthOptions and synth.make_problem is make_problem
