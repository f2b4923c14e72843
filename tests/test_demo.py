"""`mini-o3 demo`: the shortened demo runs every stage end to end, resumes, and reports per level."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mini_o3.demo.pipeline import LEVELS, demo_config, level_of, rl_runs

STAGES = ("base", "data", "collect", "sft", "rl", "rl_no_mask", "eval_oracle", "eval_start", "eval_sft", "eval_rl", "eval_rl_no_mask")


def _demo(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mini_o3", "demo", "--preset", "smoke", "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})


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


@pytest.mark.slow
def test_the_smoke_demo_runs_every_stage_resumes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
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
    page = (out / "index.html").read_text()
    for figure in ("accuracy_by_budget.png", "over_turn_share.png"):
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
