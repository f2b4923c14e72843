"""The pretraining stage: a few real steps on the tiny model, a loadable checkpoint, and resume."""

from __future__ import annotations

import json
import math

import pytest

from mini_o3.agent import protocol
from mini_o3.agent.policy import SamplingParams
from mini_o3.policies.local import LocalPolicy
from mini_o3.demo.pretrain import TASKS, PretrainConfig, PretrainError, lr_at, main, make_example, run_pretrain
from mini_o3.models.tiny import load_checkpoint


def _config(out, steps: int) -> PretrainConfig:
    return PretrainConfig(
        out=str(out), steps=steps, batch_size=2, grids=(2,), image_sizes=(224,), n_eval=2,
        eval_every=2, log_every=1, save_every_s=0.0, warmup_steps=1,
    )


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "pretrain_log.jsonl").read_text().splitlines()]


def test_examples_are_deterministic_and_cover_every_task() -> None:
    config = PretrainConfig(grids=(2,), image_sizes=(224,))
    for task in TASKS:
        for positive in (True, False):
            a, b = make_example(config, 3, 11, task, positive), make_example(config, 3, 11, task, positive)
            assert a.target == b.target and a.task == b.task
            assert a.task.startswith(task)
            assert a.messages[0] == protocol.system_message()
    assert make_example(config, 3, 11, "describe", False).target == "<think>No coloured shape.</think>\n<answer>none</answer>"
    recognised = make_example(config, 3, 11, "recognise")
    assert recognised.target.startswith("<think>Found a ") and "(A) red\n(B) green\n(C) blue\n(D) yellow" in recognised.messages[1]["content"][1]["text"]


def test_lr_warms_up_holds_and_decays() -> None:
    config = PretrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.5, min_lr_ratio=0.1)
    assert lr_at(config, 5) == pytest.approx(0.5)
    assert lr_at(config, 50) == pytest.approx(1.0)
    assert lr_at(config, 100) == pytest.approx(0.1)


def test_pretrain_saves_a_loadable_checkpoint_and_resumes(tmp_path, capsys) -> None:
    out = tmp_path / "base"
    run_pretrain(_config(out, 2))
    records = _log(out)
    losses = [r["loss"] for r in records if r["event"] == "train"]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2]
    assert all(math.isfinite(loss) for loss in losses)
    evals = [r for r in records if r["event"] == "eval"]
    assert set(evals[-1]["exact"]) == {"describe_pos", "describe_neg", "context_pos", "context_neg", "recognise", "locate"}
    assert (out / "trainer_state" / "state.pt").is_file() and (out / "PRETRAIN.md").is_file()
    assert not (out / ".staging").exists()

    model, tokenizer, image_processor = load_checkpoint(out)
    example = make_example(_config(out, 2), 0, 1, "recognise")
    with LocalPolicy((model, tokenizer, image_processor)) as policy:
        generation = policy.generate(example.messages, SamplingParams(temperature=0.0, max_new_tokens=8))
    assert isinstance(generation.text, str) and len(generation.token_ids) >= 1

    run_pretrain(_config(out, 3))  # resume: one more step, not three
    records = _log(out)
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3]
    assert [r["resumed"] for r in records if r["event"] == "start"] == [False, True]

    with pytest.raises(PretrainError, match="other settings"):
        run_pretrain(PretrainConfig(**{**vars(_config(out, 4)), "lr": 1e-4}))
    capsys.readouterr()
    assert main(["--out", str(out), "--steps", "3", "--batch-size", "2", "--grids", "2", "--image-sizes", "224",
                 "--n-eval", "2", "--eval-every", "2", "--log-every", "1", "--save-every-s", "0", "--warmup-steps", "1"]) == 0
    shown = capsys.readouterr()
    # the records are in the log, not on the console; the weight bars stay off it
    assert '"event"' not in shown.out and "it/s]" not in shown.err and "pretrain" in shown.err
