"""End to end on each family (Qwen2.5-VL, Qwen3-VL, Qwen3.5), on real tiny models: search through a
served model, SFT steps, an RL step with the model's own rollouts, an evaluation; and a tiny
Qwen3-VL trained by `mini-o3 sft` answering through `mini-o3 search` with the settings it was
trained on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mini_o3.cli import app
from mini_o3.coldstart.collect import CollectConfig, collect
from mini_o3.coldstart.oracle import PatternMix
from mini_o3.data.synth import SynthOptions, synthesize
from mini_o3.models.families import read_backbone
from mini_o3.models.episode_settings import EPISODE_FILE, read_episode_settings
from mini_o3.models.tiny import build_tiny

pytestmark = pytest.mark.slow

FAMILIES = ("qwen2.5-vl", "qwen3-vl", "qwen3.5")
VIEW = 112 * 112


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp(request.param) / "ckpt", seed=1, family=request.param)


@pytest.fixture(scope="module")
def cold_start(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(synthetic set, SFT data): oracle trajectories collected with 112x112 views, as the demo collects."""
    root = tmp_path_factory.mktemp("coldstart")
    synthesize(root / "synth", 6, "easy", 448, 0, progress=False, options=SynthOptions(contact_sheet=0))
    collect(
        CollectConfig(
            data=f"synthetic:{root / 'synth'}", policy="oracle", max_turns=4, max_pixels=VIEW, min_pixels=56 * 56,
            max_new_tokens=160, out=str(root / "collect"), concurrency=2, max_one_turn_share=1.0, progress=False,
            oracle_mix=PatternMix(direct=1.0, depth_first=0.5, trial_and_error=0.0, goal_maintenance=0.0, max_depth=1),
        )
    )
    return root / "synth", root / "collect" / "sft"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_search_through_a_served_model_of_each_family(tiny: Path, tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mini_o3.cli", "serve", "--model-path", str(tiny), "--port", str(port), "--name", "tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mini-o3 serve did not start:\n{server.stdout.read().decode() if server.stdout else ''}")
                time.sleep(0.3)
        image = tmp_path / "scene.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8)).save(image)
        result = CliRunner().invoke(
            app,
            ["search", str(image), "What is in the corner?", "--api", f"http://127.0.0.1:{port}/v1", "--model", "tiny",
             "--max-turns", "2", "--max-new-tokens", "12", "--seed", "1", "--max-pixels", str(VIEW), "--out", str(tmp_path / "out")],
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert result.exit_code == 0, result.output
    trajectory = json.loads((tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()[0])
    assert trajectory["turns"] and trajectory["status"] in {"answered", "no_answer", "over_turn", "over_context"}
    assert trajectory["views"][0]["size"][0] * trajectory["views"][0]["size"][1] <= VIEW


def test_sft_steps_an_rl_step_and_an_eval_on_each_family(tiny: Path, cold_start: tuple[Path, Path], tmp_path: Path) -> None:
    from mini_o3.eval.runner import EvalConfig, run_eval
    from mini_o3.policies.local import LocalPolicy
    from mini_o3.train.config import RLJobConfig, load_preset, with_overrides
    from mini_o3.train.rl import LOG_FILE, run_rl
    from mini_o3.train.sft import run_sft

    synth, sft_data = cold_start
    family = read_backbone(tiny).name
    job = with_overrides(
        load_preset("tiny-cpu").sft, data=str(sft_data), model_path=str(tiny), output_dir=str(tmp_path / "sft"),
        max_steps=2, per_device_batch_size=2, gradient_accumulation_steps=1, save_steps=1, logging_steps=1,
    )
    sft_model = run_sft(job)
    log = [json.loads(line) for line in (tmp_path / "sft" / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log if "loss" in record] == [1, 2] and all(r["loss"] > 0 for r in log if "loss" in r)
    assert read_backbone(sft_model).name == family
    sft_settings = read_episode_settings(sft_model)
    assert sft_settings.view_max_pixels == VIEW and sft_settings.max_new_tokens == 160 and sft_settings.written_by == "sft"
    assert (tmp_path / "sft" / "checkpoint-1" / EPISODE_FILE).is_file()

    rl = RLJobConfig(
        data=f"synthetic:{synth}", model_path=str(sft_model), output_dir=str(tmp_path / "rl"), limit=4, steps=1,
        prompts_per_step=2, mini_batch_prompts=2, num_generations=2, micro_batch_size=2, max_turns=2, max_new_tokens=16,
        image_max_pixels=VIEW, image_min_pixels=56 * 56, learning_rate=1e-3, concurrency=4, policy_batch_size=4,
        dynamic_sampling=False, save_steps=1, freeze_vision=True,
    )
    rl_model = run_rl(rl)
    step = next(json.loads(line) for line in (tmp_path / "rl" / LOG_FILE).read_text().splitlines() if "reward" in json.loads(line))
    assert step["step"] == 1 and step["tokens/loss_tokens"] > 0
    rl_settings = read_episode_settings(rl_model)
    assert (rl_settings.view_max_pixels, rl_settings.max_new_tokens, rl_settings.train_max_turns) == (VIEW, 16, 2)
    assert rl_settings.max_turns == sft_settings.max_turns == 4  # the inference budget passes on from the data

    with LocalPolicy(rl_model, max_batch_size=4) as policy:
        result = run_eval(
            EvalConfig(data=f"synthetic:{synth}", out=tmp_path / "eval", samples=1, max_turns=2, max_new_tokens=16, limit=3,
                       concurrency=3, progress=False, report=False, max_pixels=VIEW, min_pixels=56 * 56),
            policy,
        )
    assert result.errors == 0 and result.episodes == 3 and result.turns >= 3


def test_a_tiny_qwen3_vl_trained_by_mini_o3_sft_answers_through_mini_o3_search(cold_start: tuple[Path, Path], tmp_path: Path) -> None:
    synth, sft_data = cold_start
    base = build_tiny(tmp_path / "base", seed=0, family="qwen3-vl")
    runner = CliRunner()
    trained = runner.invoke(
        app,
        ["sft", "--data", str(sft_data), "--model-path", str(base), "--out", str(tmp_path / "sft"),
         "--set", "max_steps=2", "--set", "per_device_batch_size=2", "--set", "gradient_accumulation_steps=1"],
    )
    assert trained.exit_code == 0, trained.output
    final = tmp_path / "sft" / "final"
    assert read_backbone(final).name == "qwen3-vl"
    image = sorted((synth / "images").iterdir())[0]
    answered = runner.invoke(
        app, ["search", str(image), "What colour is the small square?", "--model-path", str(final), "--seed", "0", "--out", str(tmp_path / "search")],
    )
    assert answered.exit_code == 0, answered.output
    source = f"({final / EPISODE_FILE})"
    for line in (f"view_max_pixels = {VIEW}", "max_turns = 4", "max_new_tokens = 160"):
        assert f"{line}  {source}" in answered.output, answered.output
    trajectory = json.loads((tmp_path / "search" / "trajectories.jsonl").read_text().splitlines()[0])
    assert all(view["size"][0] * view["size"][1] <= VIEW for view in trajectory["views"])
    assert len(trajectory["turns"]) <= 4 and all(turn["completion_tokens"] <= 160 for turn in trajectory["turns"])
    # A flag still wins over the checkpoint's file.
    flagged = runner.invoke(
        app, ["search", str(image), "What colour?", "--model-path", str(final), "--max-pixels", "40000", "--max-turns", "1",
              "--seed", "0", "--out", str(tmp_path / "flagged")],
    )
    assert flagged.exit_code == 0 and "view_max_pixels = 40000  (flag)" in flagged.output
    views = json.loads((tmp_path / "flagged" / "trajectories.jsonl").read_text().splitlines()[0])["views"]
    assert views[0]["size"][0] * views[0]["size"][1] > VIEW


def test_pretraining_steps_on_each_family(tiny: Path, tmp_path: Path) -> None:
    from mini_o3.demo.pretrain import PretrainConfig, run_pretrain

    family = read_backbone(tiny).name
    config = PretrainConfig(
        out=str(tmp_path / "base"), steps=2, batch_size=2, grids=(2,), image_sizes=(224,), n_eval=2, eval_every=2,
        log_every=1, save_every_s=0.0, warmup_steps=1, family=family,
    )
    out = run_pretrain(config)
    records = [json.loads(line) for line in (out / "pretrain_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2]
    assert read_backbone(out).name == family
    assert read_episode_settings(out).view_max_pixels == 112 * 112
