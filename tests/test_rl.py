"""GRPO on TRL through the shared episode engine: one step end to end, masking in the batch, ids that decode back."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.sample import Sample
from mini_o3.policies.scripted import ScriptedPolicy
from mini_o3.models.tiny import build_tiny, load_checkpoint
from mini_o3.train.config import RLJobConfig
from mini_o3.train.tokenize import ConversationEncoder
from mini_o3.agent.trajectory import Trajectory

pytestmark = pytest.mark.slow  # every test here builds a trainer (TRL alone takes seconds to import)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    folder = tmp_path_factory.mktemp("images")
    out = []
    for index, (colour, name) in enumerate([((220, 30, 30), "red"), ((30, 30, 220), "blue"), ((30, 200, 30), "green")]):
        image = Image.new("RGB", (448, 448), (200, 200, 200))
        image.paste(colour, (80 + 40 * index, 120, 140 + 40 * index, 180))
        path = folder / f"scene{index}.png"
        image.save(path)
        out.append(Sample(id=f"s{index}", image=path, question="What colour is the square?", answer=name))
    return out


def mixed_policy(seed: int = 0) -> ScriptedPolicy:
    """A scripted policy whose rollouts differ: zooms (often until over-turn), right and wrong answers."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def turn(messages: list[dict]) -> str:
        with lock:
            draw = rng.random()
        if draw < 0.6:
            return "<think>Closer.</think>" + protocol.render_zoom(protocol.Zoom((0.1, 0.1, 0.7, 0.7)))
        colour = ("red", "blue", "green")[int((draw - 0.6) / 0.4 * 3)]  # right about a third of the time
        return f"<think>It is {colour}.</think>" + protocol.render_answer(colour)

    return ScriptedPolicy(turn)


def job(tiny_dir: Path, out: Path, **overrides: object) -> RLJobConfig:
    values = dict(
        model_path=str(tiny_dir),
        output_dir=str(out),
        steps=1,
        prompts_per_step=2,
        mini_batch_prompts=2,
        num_generations=4,
        micro_batch_size=4,
        max_turns=3,
        max_new_tokens=24,
        image_max_pixels=224 * 224,
        image_min_pixels=56 * 56,
        learning_rate=1e-3,
        concurrency=8,
        policy_batch_size=8,
        save_steps=1,
        max_sampling_rounds=6,
    )
    values.update(overrides)
    return RLJobConfig(**values)


def rows(trainer: object, indices: list[int]) -> list[dict]:
    return [{"prompt": "q", "sample_index": index} for index in indices for _ in range(trainer.num_generations)]


def test_one_rl_step_end_to_end(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    from mini_o3.policies.local import LocalPolicy
    from mini_o3.train.rl import LOG_FILE, ROLLOUTS_FILE, run_rl

    before = load_checkpoint(tiny_dir)[0].state_dict()
    final = run_rl(job(tiny_dir, tmp_path / "out"), samples=samples, rollout_policy=mixed_policy())
    log = [json.loads(line) for line in (tmp_path / "out" / LOG_FILE).read_text().splitlines()]
    step = next(record for record in log if "reward" in record)
    assert step["step"] == 1 and step["groups/kept"] == 2 and step["tokens/loss_tokens"] > 0
    for key in ("rollouts/over_turn_share", "rollouts/turns_mean", "turns/1", "time/rollout_s", "time/update_s", "host_rss_mb"):
        assert key in step
    assert step["grad_norm"] > 0
    assert step["ratio_mean"] == pytest.approx(1.0, abs=1e-3)  # one PPO epoch: the update starts on-policy
    after = load_checkpoint(final)[0].state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    rollouts = [json.loads(line) for line in (tmp_path / "out" / ROLLOUTS_FILE).read_text().splitlines()]
    assert {record["meta"]["rl_step"] for record in rollouts} == {1}
    assert all(record["turns"][0]["token_ids"] is None for record in rollouts)
    assert (tmp_path / "out" / "learning_curve.png").stat().st_size > 0
    with LocalPolicy(final) as policy:  # the checkpoint loads unchanged for inference
        assert policy.count_tokens("<answer>red</answer>") > 0


def test_over_turn_rollouts_carry_no_loss_unless_masking_is_off(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    from mini_o3.train.rl import ROLLOUTS_FILE, build_trainer

    for overturn_mask in (True, False):
        out = tmp_path / f"mask-{overturn_mask}"
        # One episode at a time, so the scripted draws (and so the statuses) are the same every run.
        trainer = build_trainer(job(tiny_dir, out, overturn_mask=overturn_mask, concurrency=1), samples, mixed_policy(seed=3))
        batch = trainer._generate_and_score_completions(rows(trainer, [0, 1]))
        records = [json.loads(line) for line in (out / ROLLOUTS_FILE).read_text().splitlines()]
        in_batch = [record for record in records if record["meta"]["in_batch"]]
        assert len(in_batch) == len(batch["loss_mask"]) and records[: len(in_batch)] == in_batch
        statuses = [record["status"] for record in in_batch]
        assert "over_turn" in statuses, statuses
        for row, record in enumerate(in_batch):
            carries_loss = bool(batch["loss_mask"][row].sum() > 0)
            assert carries_loss == (record["status"] != "over_turn" or not overturn_mask), (record["status"], overturn_mask)
            assert carries_loss == record["meta"]["trained"]
        # Groups left out by dynamic sampling are logged too, and their rewards all agree.
        left_out = records[len(in_batch) :]
        for start in range(0, len(left_out), 4):
            group = left_out[start : start + 4]
            assert not any(record["meta"]["trained"] for record in group)
            assert len({record["meta"]["reward"] for record in group}) == 1
        # Dynamic sampling kept only groups whose rewards disagree.
        for group in range(2):
            rewards = batch["advantages"][group * 4 : (group + 1) * 4]
            assert rewards.abs().sum() > 0
        # Advantages are over the whole group, over-turn rollouts (reward 0) included.
        group_rewards = torch.tensor([[record["meta"]["reward"] for record in in_batch[g * 4 : (g + 1) * 4]] for g in range(2)])
        expected = (group_rewards - group_rewards.mean(1, keepdim=True)) / (group_rewards.std(1, keepdim=True) + 1e-6)
        assert torch.allclose(batch["advantages"].cpu(), expected.reshape(-1), atol=1e-5)
        # Our loss is TRL's own "dapo" loss with the over-turn and observation masks as its tool mask.
        from trl import GRPOTrainer

        trainer.model.train()
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
        ours = trainer._compute_loss(trainer.model, batch)
        theirs = GRPOTrainer._compute_loss(trainer, trainer.model, {**batch, "tool_mask": (batch["loss_mask"] > 0).long()})
        assert torch.allclose(ours, theirs, atol=1e-6) and ours.abs() > 0
        trainer.close()


def test_ids_trained_on_decode_to_the_recorded_conversation(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    from mini_o3.train.rl import ROLLOUTS_FILE, build_trainer

    out = tmp_path / "out"
    # The trainer's own model rolls out (LocalPolicy); a random model rarely answers, so keep every group.
    trainer = build_trainer(job(tiny_dir, out, dynamic_sampling=False, max_turns=2, save_token_ids=True), samples)
    trainer.model.train()  # as during training
    batch = trainer._generate_and_score_completions(rows(trainer, [0, 2]))
    assert trainer.model.training  # rollouts left the model in training mode
    trainer.close()
    _, tokenizer, image_processor = load_checkpoint(tiny_dir)
    encoder = ConversationEncoder(tokenizer, image_processor)
    trajectories = [Trajectory.from_dict(json.loads(line)) for line in (out / ROLLOUTS_FILE).read_text().splitlines()]
    grids = batch["image_grid_thw"].cpu()
    image_at = 0
    checked = 0
    for row, trajectory in enumerate(trajectories):
        ids = torch.cat([batch["prompt_ids"][row][batch["prompt_mask"][row] == 1], batch["completion_ids"][row][batch["completion_mask"][row] == 1]])
        count = batch["num_images"][row]
        image_tokens = [int(grid.prod()) // 4 for grid in grids[image_at : image_at + count]]
        image_at += count
        # The loss mask covers exactly the tokens the policy sampled, in order.
        completion = batch["completion_ids"][row][batch["loss_mask"][row] > 0].tolist()
        assert completion == [token for turn in trajectory.turns for token in turn.token_ids]
        # LocalPolicy's text drops special tokens a random model samples mid-turn (see
        # test_train_tokenize), and a turn it ended with <|endoftext|> instead of <|im_end|>
        # keeps that id before the template's <|im_end|>; where the text is the decoding of
        # the ids, the conversation matches.
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        faithful = all(
            encoder.decode([t for t in turn.token_ids if t not in encoder.end_ids]) == turn.text
            and all(t == im_end for t in turn.token_ids if t in encoder.end_ids)
            for turn in trajectory.turns
        )
        if faithful:
            decoded = encoder.decode(ids.tolist())
            assert decoded == encoder.expanded_rendering(trajectory, image_tokens), f"rollout {row}"
            checked += 1
    assert checked >= len(trajectories) // 2


def test_a_killed_run_resumes_without_repeating_steps(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    import shutil

    from mini_o3.train.rl import LOG_FILE, ROLLOUTS_FILE, run_rl

    out = tmp_path / "out"
    run_rl(job(tiny_dir, out, steps=2, save_total_limit=None), samples=samples, rollout_policy=mixed_policy())
    shutil.rmtree(out / "checkpoint-2")  # as if killed after step 2 was logged but before it was saved
    run_rl(job(tiny_dir, out, steps=2, save_total_limit=None), samples=samples, rollout_policy=mixed_policy())
    steps = [json.loads(line)["step"] for line in (out / LOG_FILE).read_text().splitlines() if "reward" in line]
    assert steps == [1, 2]
    rollout_steps = [json.loads(line)["meta"]["rl_step"] for line in (out / ROLLOUTS_FILE).read_text().splitlines()]
    assert rollout_steps == sorted(rollout_steps) and set(rollout_steps) == {1, 2}


def test_rollouts_repeat_with_the_seed_and_change_with_it(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    from mini_o3.train.rl import ROLLOUTS_FILE, build_trainer

    def rollouts(seed: int, name: str) -> list[tuple[str, list[list[int]]]]:
        out = tmp_path / name
        # The trainer's own model samples (LocalPolicy), eight episodes in flight, batched as they come.
        trainer = build_trainer(job(tiny_dir, out, seed=seed, dynamic_sampling=False, max_turns=2, save_token_ids=True), samples)
        trainer._generate_and_score_completions(rows(trainer, [0, 2]))
        trainer.close()
        records = [json.loads(line) for line in (out / ROLLOUTS_FILE).read_text().splitlines()]
        return sorted((record["sample_id"], [turn["token_ids"] for turn in record["turns"]]) for record in records)

    first = rollouts(7, "a")
    assert len(first) == 8
    assert rollouts(7, "b") == first
    assert rollouts(8, "c") != first
