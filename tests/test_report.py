"""The report: plots, the static page (escaped, script-free, checked in headless Chromium) and run comparison."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.eval.runner import EvalConfig, run_eval
from mini_o3.policies.scripted import ScriptedPolicy
from mini_o3.eval.report import (
    ACCURACY_PLOT,
    REPORT_DIR,
    TOKENS_PLOT,
    TURNS_PLOT,
    compare_runs,
    compare_runs_text,
    plot_accuracy_by_budget,
    plot_turn_histogram,
    summary_rows,
    write_report,
)

CHROMIUM = next((path for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "") if path and Path(path).exists()), None)

PLANTED = (
    "<think>Nothing here.</think><script>document.title='pwned';document.body.setAttribute('data-pwned','1')</script>"
    "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\"></pre></details><marquee>moving</marquee>"
)
ZOOM = "<think>Look at the corner & the <sign>.</think>" + protocol.render_zoom(protocol.Zoom((0.5, 0.5, 1.0, 1.0)))
NESTED = "<think>Closer.</think>" + protocol.render_zoom(protocol.Zoom((0.0, 0.0, 0.5, 0.5), "observation_1"))


def make_dataset(folder: Path, count: int = 3) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(folder / f"img{index}.png")
        records.append({"id": f"q{index}", "image": f"img{index}.png", "question": "What is on the <sign>?",
                        "answer": "red" if index % 2 else "blue", "split": "easy" if index < 2 else "hard"})
    (folder / "data.json").write_text(json.dumps(records))
    return f"json:{folder / 'data.json'}"


def evaluate(tmp_path: Path, name: str, script: list[str], **overrides: Any) -> Path:
    settings: dict[str, Any] = dict(data=make_dataset(tmp_path / "data"), out=tmp_path / name, samples=2, max_turns=5,
                                    concurrency=2, progress=False, max_pixels=160 * 120, min_pixels=28 * 28)
    settings.update(overrides)
    run_eval(EvalConfig(**settings), ScriptedPolicy(script))
    return tmp_path / name


@pytest.fixture()
def planted_run(tmp_path: Path) -> Path:
    return evaluate(tmp_path, "run", [ZOOM, NESTED, PLANTED + "<answer>red</answer>"])


class Elements(HTMLParser):
    """Every start tag and its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def elements(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(page)
    return parser.tags


def test_report_has_plots_metrics_and_every_turn_crop_and_box(planted_run: Path) -> None:
    index = planted_run / "index.html"
    page = index.read_text()
    for plot in (ACCURACY_PLOT, TURNS_PLOT):
        with Image.open(planted_run / REPORT_DIR / plot) as image:
            assert image.format == "PNG" and image.width > 300
    assert "Avg@2" in page and "33.3%" in page  # q1 answers red: 1 of 3 questions
    assert "<th>easy</th>" in page and "<th>hard</th>" in page
    tags = elements(page)
    sources = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert all((planted_run / source).is_file() for source in sources)
    # per episode: the boxes picture, observation_1 and observation_2; two plots on top
    assert sum("views/" in source for source in sources) == 12 and sum("boxes/" in source for source in sources) == 6
    assert len([tag for tag, _ in tags if tag == "details"]) == 6
    assert page.count("turn 3</b>") == 6 and "observation_2: [0.0, 0.0, 0.5, 0.5] of observation_1" in page
    with Image.open(planted_run / REPORT_DIR / "boxes" / "q0__r0.jpg") as boxes:
        assert boxes.size == (160, 120)  # drawn on the saved view 0, in its own pixels


def test_report_shows_the_protocol_card_and_how_the_policy_searched(planted_run: Path) -> None:
    page = (planted_run / "index.html").read_text()
    metrics = json.loads((planted_run / "metrics.json").read_text())
    card = metrics["protocol"]
    assert page.index("<h2>Protocol</h2>") < page.index("<h2>Metrics</h2>")
    for name in ("model", "prompt", "pixels", "K, temperature", "turns, tokens", "scoring", "data", "data sha256", "option order"):
        assert f"<th>{name}</th>" in page, name
    assert card["data"]["sha256"][:16] in page and "K=2, temperature 1.0" in page and "shown at most 19,200" in page
    assert "<th>zooms per episode</th><td>mean 2," in page and "0 of 12 zooms (0.0%) repeat" in page
    assert "crops on the target" not in page  # the data has no boxes
    with Image.open(planted_run / REPORT_DIR / TOKENS_PLOT) as image:
        assert image.format == "PNG" and image.width > 300
    assert f'src="{REPORT_DIR}/{TOKENS_PLOT}"' in page


def test_rotation_and_target_rows_from_hand_built_metrics() -> None:
    metrics = dict(METRICS, rotation={"cycles": {"0": 1.0, "1": 0.5}, "average": 0.75, "plain": 0.7, "all_rotations": 0.5, "questions": 2,
                                      "complete_groups": 2, "by_category": {"single": {"0": 1.0, "1": 0.5, "average": 0.75}}},
                   search={"zooms_per_episode": {"mean": 1.5, "p90": 2, "max": 2}, "zoom_histogram": [1, 0, 1], "zooms": 3, "repeated_zooms": 1,
                           "repeated_share": 1 / 3, "episodes_with_a_repeat": 0.5, "generated_tokens": {"count": 0},
                           "target": {"episodes": 2, "zooms": 3, "zooms_on_target": 2, "share_of_zooms": 2 / 3, "episodes_that_found_it": 1.0,
                                      "accuracy_when_found": 0.5, "accuracy_when_not_found": None}})
    rows = dict(summary_rows(metrics))
    assert rows["HR-Bench score (mean over rotations)"] == "75.0% (per rotation 0: 100.0%, 1: 50.0%); plain Avg@K 70.0%"
    assert rows["right in all rotations"].startswith("50.0% of 2 questions") and rows["HR-Bench single"].startswith("75.0%")
    assert rows["repeated crops"].startswith("1 of 3 zooms (33.3%)")
    assert rows["crops on the target"].startswith("2 of 3 zooms (66.7%) hold an annotated target; 100.0% of 2 episodes")


def test_all_model_text_is_escaped_and_the_page_holds_no_script(planted_run: Path) -> None:
    page = (planted_run / "index.html").read_text()
    tags = elements(page)
    assert not [tag for tag, _ in tags if tag in ("script", "iframe", "object", "embed", "marquee")]
    assert not [name for _, attrs in tags for name in attrs if name.startswith("on")]
    assert [attrs["src"] for tag, attrs in tags if tag == "img" and attrs["src"] == "x"] == []
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;" in page
    assert "&lt;/pre&gt;&lt;/details&gt;" in page and "&lt;sign&gt;" in page and "corner &amp; the" in page
    assert "Content-Security-Policy" in page and "default-src &#x27;none&#x27;" in page


def run_chromium(page: Path, tmp_path: Path) -> str:
    """The DOM of `page` after Chromium loaded it (and ran whatever scripts it was allowed to)."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=2000", "--dump-dom", page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium); the escaping is still checked by test_all_model_text_is_escaped_and_the_page_holds_no_script")
def test_a_planted_script_does_not_run_in_headless_chromium(planted_run: Path, tmp_path: Path) -> None:
    # Control: the same payload written raw into a page does run, so this harness can see it.
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><html><head><title>control</title></head><body><pre>{PLANTED}</pre></body></html>")
    ran = run_chromium(control, tmp_path)
    assert "<title>pwned</title>" in ran and 'data-pwned="' in ran

    dom = run_chromium(planted_run / "index.html", tmp_path)
    assert "<title>mini-o3 eval: json:" in dom and "pwned</title>" not in dom
    assert 'data-pwned="' not in dom
    assert "&lt;script&gt;document.title='pwned'" in dom  # shown as text
    assert "<script" not in dom.replace("&lt;script", "")


def test_report_limits_the_viewer_and_draws_boxes_on_the_original_without_views(tmp_path: Path) -> None:
    run = evaluate(tmp_path, "run", [ZOOM, "<answer>red</answer>"], save_views=False, report_episodes=2)
    page = (run / "index.html").read_text()
    assert "showing 2 of 6 episodes" in page and page.count("<details") == 2
    assert not (run / "views").exists()
    with Image.open(run / REPORT_DIR / "boxes" / "q0__r0.jpg") as boxes:
        assert boxes.size == (160, 120)
    write_report(run, max_episodes=0)
    assert "<details" not in (run / "index.html").read_text()


METRICS: dict[str, Any] = {
    "samples": 2, "episodes": 4, "runs_per_sample": {"min": 2, "max": 2}, "max_turns": 3, "avg_at_k": 0.5,
    "pass_at_k": 0.75, "pass_at": {"1": 0.5, "2": 0.75}, "by_split": {"": {"samples": 2, "episodes": 4, "avg_at_k": 0.5, "pass_at_k": 0.75}},
    "by_category": {}, "accuracy_by_budget": [0.0, 0.25, 0.5], "correct_turns": [0, 1, 1],
    "status_counts": {"answered": 3, "no_answer": 0, "over_turn": 1, "over_context": 0, "error": 0},
    "turns": {"count": 4, "mean": 2.5, "p50": 2.5, "p90": 3.0, "max": 3.0},
    "turns_correct": {"count": 2, "mean": 2.5, "p50": 2.5, "p90": 2.9, "max": 3.0},
    "per_turn": {"latency_s": {"count": 10, "mean": 0.5, "p50": 0.5, "p90": 0.9, "max": 1.0}},
}


def test_plots_and_summary_rows_from_hand_built_metrics(tmp_path: Path) -> None:
    for draw, name in ((plot_accuracy_by_budget, "a.png"), (plot_turn_histogram, "t.png")):
        path = draw(METRICS, tmp_path / name)
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (640, 400)
    rows = dict(summary_rows(METRICS))
    assert rows["Avg@2"] == "50.0%" and rows["pass@2"] == "75.0%" and rows["pass@1"] == "50.0%"
    assert rows["status: over_turn"] == "1" and rows["turns per episode"].startswith("mean 2.5")


def test_compare_runs_side_by_side(tmp_path: Path) -> None:
    run_a = evaluate(tmp_path, "a", [ZOOM, "<answer>red</answer>"], report=False)
    run_b = evaluate(tmp_path, "b", ["<answer>blue</answer>"], report=False)
    table = compare_runs(run_a, run_b)
    assert [column.header for column in table.columns] == ["metric", "A", "B", "B - A"]
    text = compare_runs_text(run_a, run_b, width=140)
    row = next(line for line in text.splitlines() if "Avg@K " in line and "split" not in line and "turns" not in line)
    assert "33.3%" in row and "66.7%" in row and "+33.3 pp" in row
    assert any("Avg@K split=easy" in line for line in text.splitlines())
    assert any("turns mean" in line and "-1" in line for line in text.splitlines())
    with pytest.raises(ValueError, match="no metrics.json"):
        compare_runs(run_a, tmp_path / "missing")


def test_question_changes_split_the_net_change_into_gains_and_losses() -> None:
    from mini_o3.eval.compare import question_changes

    def records(correct: dict[str, list[bool]], zooms: int = 0) -> dict[tuple[str, int], dict[str, Any]]:
        return {(sample, run): {"sample_id": sample, "run": run, "split": "", "ground_truth": "A", "zooms": zooms * run,
                                "score": {"correct": right, "extracted": "A" if right else "B"}}
                for sample, runs in correct.items() for run, right in enumerate(runs)}

    a = records({"same": [True, False], "up": [False, False], "down": [True, True], "right": [True, True], "only_a": [True, True]})
    b = records({"same": [False, True], "up": [True, False], "down": [False, True], "right": [True, True], "only_b": [False, False]})
    changes = question_changes(a, b)
    assert [change.sample_id for change in changes["gained"]] == ["up"]
    assert [change.sample_id for change in changes["lost"]] == ["down"]
    assert (changes["common"], changes["only_a"], changes["only_b"], changes["both_right"], changes["same_partly"]) == (4, 1, 1, 1, 1)
    assert changes["gain_pp"] == 12.5 and changes["loss_pp"] == -12.5  # +0.5 and -0.5 over four questions
    assert changes["gained"][0].answers_a == "B x2" and changes["gained"][0].answers_b == "A, B"
    # Nothing zoomed in B: the gain and the loss came without the tool.
    assert (changes["gained_after_a_zoom"], changes["lost_after_a_zoom"]) == (0, 0)
    b_zoomed = question_changes(a, records({"same": [False, True], "up": [True, False], "down": [False, True]}, zooms=1))
    # Only run 1 of each question zoomed: "up" was right in run 0 (no zoom), "down" zoomed in run 1.
    assert (b_zoomed["gained_after_a_zoom"], b_zoomed["lost_after_a_zoom"]) == (0, 1)
    assert b_zoomed["gained"][0].zoomed_runs_b == 1 and b_zoomed["gained"][0].right_after_zoom_b == 0
    # Runs recorded before "zooms": more than one turn means a zoom.
    old = {key: {k: v for k, v in record.items() if k != "zooms"} | {"turns": 3} for key, record in b_zoomed_records().items()}
    assert question_changes(a, old)["gained_after_a_zoom"] == 1


def b_zoomed_records() -> dict[tuple[str, int], dict[str, Any]]:
    return {("up", 0): {"sample_id": "up", "run": 0, "split": "", "ground_truth": "A", "score": {"correct": True, "extracted": "A"}}}


def test_a_run_made_before_cards_is_rescored_and_reported_without_one(tmp_path: Path) -> None:
    from mini_o3.eval.runner import rescore

    run = evaluate(tmp_path, "old", ["<answer>red</answer>"])
    config = json.loads((run / "config.json").read_text())
    del config["protocol"]
    (run / "config.json").write_text(json.dumps(config))
    metrics = rescore(run)
    assert metrics["protocol"] == {} and metrics["avg_at_k"] == pytest.approx(1 / 3)
    assert "this run has no protocol card" in (run / "index.html").read_text()
