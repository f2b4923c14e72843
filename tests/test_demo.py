"""`mini-o3 demo`: the shortened demo runs every stage end to end, resumes, and reports per level."""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rich.cells import cell_len
from rich.console import Console

from mini_o3.demo.pipeline import LEVELS, demo_config, level_of, print_summary, rl_job_config, rl_runs

STAGES = ("base", "data", "collect", "sft", "rl", "rl_no_mask", "eval_oracle", "eval_start", "eval_sft", "eval_rl", "eval_rl_no_mask")


def _demo(out: Path, *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mini_o3", "demo", "--preset", "smoke", "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": str(columns)})


def readable_at_80_columns(text: str) -> list[str]:
    """What keeps console output from being read on an 80-column terminal: long lines, cut cells, raw dicts, library bars."""
    problems = [f"{cell_len(line)} columns: {line!r}" for line in text.splitlines() if cell_len(line) > 80]
    problems += [f"cut: {line!r}" for line in text.splitlines() if "…" in line]
    problems += [f"log dict: {line!r}" for line in text.splitlines() if line.lstrip().startswith("{'")]
    problems += [f"tqdm bar: {line!r}" for line in text.splitlines() if "it/s]" in line]
    problems += [f"library warning: {line!r}" for line in text.splitlines() if "Warning:" in line or "warnings.warn" in line]
    return problems


def _summary(names: list[str]) -> dict:
    """A summary as the demo writes it, for an ablation with repeats (the widest model names)."""
    config = demo_config("long")
    curve = [0.25 * (budget / 10) for budget in range(1, 11)]
    row = {
        "run": "", "episodes": 384, "accuracy": 0.8412, "accuracy_by_budget": curve, "status_counts": {"answered": 300, "over_turn": 84},
        "turns_correct": {"mean": 3.214, "max": 10}, "beyond_train_turns": 0.125,
        "by_level": {level: {"accuracy": 0.5, "accuracy_by_budget": curve} for level in LEVELS},
    }
    models = {"chance": {"accuracy": 0.25, "accuracy_by_budget": [0.25] * 10, "by_level": {}}, "sft": {**row, "training": {
        "steps": 600, "step": list(range(1, 601)), "loss": [2.0 / (1 + step / 50) for step in range(600)], "token_accuracy": [0.5] * 600}}}
    for index, name in enumerate(names):
        steps = list(range(1, config.rl_steps + 1))
        models[name] = {**row, "training": {
            "steps": len(steps), "step": steps, "reward": [0.5 + 0.01 * step for step in steps],
            "masked_share": [0.1 * (index % 2 == 0)] * len(steps), "over_turn_share": [0.1] * len(steps), "over_turn_share_mean": 0.1,
            "turns_mean": [3.0] * len(steps),
        }}
    masking = {
        label: {"runs": names[i::2], "accuracy": 0.84, "accuracy_runs": [0.84, 0.82], "hard": 0.61, "over_turn_share_train": 0.125,
                "turns_correct_mean": 3.21, "turns_correct_max": 10, "beyond_train_turns": 0.125}
        for i, label in enumerate(("on", "off"))
    }
    return {
        "config": {**config.__dict__}, "eval_turns": config.eval_turns, "levels": {"easy": 32, "medium": 16, "hard": 48},
        "models": models, "masking": masking, "stage_seconds": {"base": 1.0, "sft": 300.0}, "total_seconds": 301.0,
    }


def test_levels_split_by_the_training_turn_limit() -> None:
    # a reading-order scan that opens d cells needs d + 1 turns
    assert [level_of(depth, 6) for depth in range(1, 10)] == ["easy"] * 3 + ["medium"] * 2 + ["hard"] * 4
    assert [level_of(depth, 4) for depth in range(1, 5)] == ["easy", "easy", "medium", "hard"]


def test_the_ablation_trains_each_way_per_repeat_from_one_config() -> None:
    assert rl_runs(demo_config()) == [("rl", True, 0)]
    assert rl_runs(demo_config(overturn_mask=False)) == [("rl", False, 0)]
    assert rl_runs(demo_config(ablation=True)) == [("rl", True, 0), ("rl_no_mask", False, 0), ("rl_r1", True, 1), ("rl_no_mask_r1", False, 1)]
    with pytest.raises(ValueError, match="preset"):
        demo_config("huge")


def test_the_summary_tables_fit_80_columns_with_every_ablation_run() -> None:
    names = [name for name, _, _ in rl_runs(demo_config("long"))]
    assert "rl_no_mask_r1" in names
    console = Console(width=80, record=True, file=io.StringIO())
    print_summary(_summary(names), console)
    text = console.export_text()
    assert readable_at_80_columns(text) == []
    for header in ("model", "easy", "medium", "hard", "masking", "accuracy", "in training"):
        assert header in text
    assert "rl_no_mask_r1" in text and "0.84 0.82" in text


def test_the_page_has_the_reports_style_and_the_training_curves_beside_the_accuracy(tmp_path: Path) -> None:
    from mini_o3.demo.pipeline import _write_page
    from mini_o3.eval.report import CONTENT_SECURITY_POLICY, STYLE

    names = [name for name, _, _ in rl_runs(demo_config("long"))]
    summary = _summary(names)
    summary["models"]["<script>x</script>"] = summary["models"].pop("chance")
    _write_page(tmp_path, summary)
    page = (tmp_path / "index.html").read_text()
    assert STYLE in page and html.escape(CONTENT_SECURITY_POLICY, quote=True) in page
    plots = page[page.index("<div class=plots>"):]
    plots = plots[: plots.index("</div>")]
    assert "accuracy_by_budget.png" in plots and "training_curves.png" in plots  # side by side, in one row
    for figure in ("accuracy_by_budget.png", "training_curves.png", "over_turn_share.png"):
        assert (tmp_path / figure).stat().st_size > 10_000
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page


def test_without_any_training_log_the_page_shows_the_accuracy_alone(tmp_path: Path) -> None:
    from mini_o3.demo.pipeline import _write_page

    summary = _summary([])
    del summary["models"]["sft"]["training"]
    summary["masking"] = {}
    _write_page(tmp_path, summary)
    page = (tmp_path / "index.html").read_text()
    assert "accuracy_by_budget.png" in page and "training_curves.png" not in page and not (tmp_path / "training_curves.png").exists()


@pytest.mark.slow
def test_the_smoke_demo_runs_every_stage_resumes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = _demo(out, columns=80)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # a person can read it: one line a stage (and its progress line), nothing wider than 80 columns
    console = first.stdout + first.stderr
    assert readable_at_80_columns(console) == []
    assert len(console.splitlines()) < 60
    for line in ("SFT ", "RL ", "eval sft ", "✓ sft", "✓ eval_rl_no_mask"):
        assert line in console
    assert "SFT job configuration" in (out / "sft" / "stage.log").read_text()  # what the stages printed is kept
    assert json.loads((out / "sft" / "train" / "log.jsonl").read_text().splitlines()[0])["loss"] > 0  # and the step records
    for stage in STAGES:
        assert (out / stage / "stage.json").exists(), stage
    summary = json.loads((out / "summary.json").read_text())
    config = summary["config"]
    assert sum(summary["levels"].values()) == config["test_scenes"]
    models = summary["models"]
    assert set(models) == {"chance", "oracle", "start", "sft", "rl", "rl_no_mask"}
    assert models["oracle"]["accuracy_by_budget"][-1] == 1.0  # the ceiling: every scan ends on the target
    assert models["oracle"]["accuracy_by_budget"][0] == 0.0  # and never answers before zooming
    for name in ("start", "sft", "rl", "rl_no_mask"):
        row = models[name]
        assert row["episodes"] == config["test_scenes"] * config["eval_samples"]
        assert len(row["accuracy_by_budget"]) == config["grid"] ** 2 + 1
        assert all(0.0 <= value <= 1.0 for value in row["accuracy_by_budget"])
        assert row["accuracy_by_budget"] == sorted(row["accuracy_by_budget"])  # a larger budget never loses a correct answer
        assert set(row["by_level"]) <= set(LEVELS)
    for name in ("rl", "rl_no_mask"):
        assert models[name]["training"]["steps"] == config["rl_steps"]
    assert set(summary["masking"]) == {"on", "off"}
    for name in ("rl", "rl_no_mask"):
        assert len(models[name]["training"]["masked_share"]) == config["rl_steps"]
    assert len(models["sft"]["training"]["loss"]) == config["sft_steps"]  # the SFT curve, one point a step
    page = (out / "index.html").read_text()
    for figure in ("accuracy_by_budget.png", "over_turn_share.png", "training_curves.png"):
        assert figure in page and (out / figure).stat().st_size > 1000
    assert "Over-turn masking on against off" in page and "hard" in page
    assert "stage times" in first.stdout
    tables = (out / "summary.md").read_text()
    assert "| rl_no_mask |" in tables and "| masking |" in tables and f"{models['oracle']['accuracy']:.2f}" in tables

    # the cold start holds oracle scans, and SFT trained on it
    messages = (out / "collect" / "sft" / "messages.jsonl").read_text()
    assert "Found a" in messages
    assert (Path(json.loads((out / "sft" / "stage.json").read_text())["result"]["model"]) / "config.json").exists()

    # running again skips every finished stage and rewrites the same report
    again = _demo(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before") == len(STAGES)
    assert json.loads((out / "summary.json").read_text())["models"] == models

    # other settings in the same folder are refused, naming what changed
    clash = _demo(out, "--seed", "3")
    assert clash.returncode != 0 and "seed" in (clash.stdout + clash.stderr)

    # an RL sweep from the same SFT model: the stages up to SFT come from the first run
    sweep = tmp_path / "sweep"
    second = _demo(sweep, "--sft-from", str(out), "--rl-steps", "2", "--no-ablation")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count(f"done before in {out}") == 4
    assert f"the stages up to SFT ran in {out}" in second.stdout
    assert "sft" not in json.loads((sweep / "summary.json").read_text())["stage_seconds"]  # none of this run's time
    swept = json.loads((sweep / "summary.json").read_text())["models"]
    assert set(swept) == {"chance", "oracle", "start", "sft", "rl"} and swept["rl"]["training"]["steps"] == 2
    assert swept["sft"]["accuracy_by_budget"] == models["sft"]["accuracy_by_budget"]  # the same model, seeded evaluation
    refused = _demo(tmp_path / "refused", "--sft-from", str(out), "--seed", "3")
    assert refused.returncode != 0 and "seed 0 there, 3 here" in (refused.stdout + refused.stderr)
    assert not (tmp_path / "refused" / "demo_config.json").exists()


def test_another_seed_makes_other_scenes_and_train_never_meets_test(tmp_path: Path) -> None:
    from mini_o3.demo.pipeline import _stage_data

    def digests(folder: Path) -> set[str]:
        return {hashlib.sha256(path.read_bytes()).hexdigest() for path in (folder / "images").iterdir()}

    sets = {}
    for seed in (0, 1):
        data = _stage_data(demo_config("smoke", seed=seed), tmp_path / f"s{seed}")
        sets[seed] = (digests(Path(data["train"])), digests(Path(data["test"])))
    for seed in (0, 1):
        assert not sets[seed][0] & sets[seed][1]
    assert not sets[0][1] & sets[1][1] and not sets[0][0] & sets[1][0]


def test_a_stage_shows_one_line_and_keeps_what_it_printed_in_its_log(tmp_path: Path, capsys) -> None:
    import logging
    import warnings

    from mini_o3.demo.pipeline import STAGE_LOG, Stages

    shown = io.StringIO()
    stages = Stages(tmp_path, Console(file=shown, width=200))

    def work(folder: Path) -> dict:
        print("SFT job configuration: {...}")
        warnings.warn("a deprecated argument", FutureWarning)
        logging.getLogger("transformers.trainer").warning("a library record")
        return {"steps": 3}

    assert stages.run("sft", work, lambda result: f"{result['steps']} steps") == {"steps": 3}
    assert re.fullmatch(r"✓ sft \(\d+ s\): 3 steps\n", shown.getvalue())
    log = (tmp_path / "sft" / STAGE_LOG).read_text()
    assert "SFT job configuration" in log and "FutureWarning: a deprecated argument" in log and "a library record" in log
    assert capsys.readouterr().err == ""

    assert stages.run("sft", work) == {"steps": 3}  # done: not run again
    assert re.fullmatch(r"sft: done before \(\d+ s\), skipped", shown.getvalue().splitlines()[-1])

    def broken(folder: Path) -> dict:
        print("what went on before")
        raise RuntimeError("no such file")

    with pytest.raises(RuntimeError, match="no such file"):
        stages.run("rl", broken)
    assert shown.getvalue().splitlines()[-1] == f"rl did not finish; what it printed: {tmp_path / 'rl' / STAGE_LOG}"
    assert "what went on before" in (tmp_path / "rl" / STAGE_LOG).read_text()
    assert not (tmp_path / "rl" / "stage.json").exists()


def test_the_demo_settings_reach_the_rl_job(tmp_path: Path) -> None:
    config = demo_config(rl_steps=3, rl_max_turns=7, rl_ppo_epochs=2, rl_mini_batch_prompts=2, rl_learning_rate=3e-4, rl_ignore_void=False)
    job = rl_job_config(config, tmp_path, "train-folder", "model-folder", overturn_mask=True)
    assert (job.steps, job.max_turns, job.ppo_epochs, job.mini_batch_prompts) == (3, 7, 2, 2)
    assert (job.learning_rate, job.ignore_void, job.overturn_mask) == (3e-4, False, True)
    assert job.loss_aggregation == "rollout_token_mean"  # the released objective


def test_the_default_demo_trains_every_test_turn_and_the_long_preset_fewer() -> None:
    # RL at fewer training turns than the test lost the untrained levels here (docs/results.md);
    # the masking ablation needs fewer, as the paper's 6 against 12-32.
    default, long = demo_config(), demo_config("long")
    assert default.rl_max_turns == default.eval_turns
    assert long.rl_max_turns < long.eval_turns and long.ablation
    assert level_of(default.grid**2, default.rl_max_turns) != "hard"
    assert level_of(long.grid**2, long.rl_max_turns) == "hard"
