"""GRPO on TRL through the shared episode engine: one step end to end, masking in the batch, ids that decode back,
the released objective over several mini-batches, sampled log-probs equal to the training forward's, failed groups."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.policy import Generation, PolicyError
from mini_o3.agent.sample import Sample
from mini_o3.policies.scripted import ScriptedPolicy
from mini_o3.models.tiny import build_tiny, load_checkpoint
from mini_o3.train.config import RLJobConfig, load_preset
from mini_o3.train.tokenize import ConversationEncoder
from mini_o3.agent.trajectory import Status, Trajectory

slow = pytest.mark.slow  # a test that builds a trainer (TRL alone takes seconds to import)


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


@pytest.fixture(scope="module")
def many_samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    """Eight questions: enough for eight groups in one RL step."""
    folder = tmp_path_factory.mktemp("many")
    out = []
    for index in range(8):
        colour, name = [((220, 30, 30), "red"), ((30, 30, 220), "blue"), ((30, 200, 30), "green")][index % 3]
        image = Image.new("RGB", (448, 448), (200, 200, 200))
        image.paste(colour, (40 + 40 * index, 60 + 30 * index, 100 + 40 * index, 120 + 30 * index))
        path = folder / f"scene{index}.png"
        image.save(path)
        out.append(Sample(id=f"m{index}", image=path, question="What colour is the square?", answer=name))
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


@slow
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


@slow
@pytest.mark.parametrize("aggregation", ["rollout_token_mean", "token_mean"])
def test_over_turn_rollouts_carry_no_loss_unless_masking_is_off(tiny_dir: Path, samples: list[Sample], tmp_path: Path, aggregation: str) -> None:
    from mini_o3.train.rl import ROLLOUTS_FILE, build_trainer

    for overturn_mask in (True, False):
        out = tmp_path / f"mask-{overturn_mask}"
        # One episode at a time, so the scripted draws (and so the statuses) are the same every run.
        config = job(tiny_dir, out, overturn_mask=overturn_mask, concurrency=1, loss_aggregation=aggregation)
        trainer = build_trainer(config, samples, mixed_policy(seed=3))
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
        # Our loss is TRL's own with the over-turn and observation masks as its tool mask: its "grpo"
        # loss type is the released objective (each rollout's token mean, averaged over rollouts),
        # its "dapo" the token mean.
        from trl import GRPOTrainer

        assert trainer.loss_type == {"rollout_token_mean": "grpo", "token_mean": "dapo"}[aggregation]
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
        ours = trainer._compute_loss(trainer.model, batch)
        theirs = GRPOTrainer._compute_loss(trainer, trainer.model, {**batch, "tool_mask": (batch["loss_mask"] > 0).long()})
        assert torch.allclose(ours, theirs, atol=1e-6) and ours.abs() > 0
        trainer.close()


@slow
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


@slow
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


@slow
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


# ---------------------------------------------------------------- the released objective


def test_the_default_and_the_presets_use_the_released_objective() -> None:
    from mini_o3.train.config import preset_names

    assert {"qwen2.5-vl-7b", "tiny-cpu"} <= set(preset_names())
    for rl in (RLJobConfig(), *(load_preset(name).rl for name in preset_names())):
        assert rl.loss_aggregation == "rollout_token_mean"
        assert rl.drop_failed_groups and rl.void_unclosed_grounding
        assert not rl.freeze_vision  # the release's RL trains the whole model
    with pytest.raises(ValueError, match="loss_aggregation"):
        RLJobConfig(loss_aggregation="seq_mean").validate()
    with pytest.raises(ValueError, match="rollout_engine"):
        RLJobConfig(rollout_engine="cache").validate()  # before any model is loaded


def _snapshot(trainer: Any, model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the trainer's model that runs as its own weights.

    TRL patches the model's forward with a closure over the model it patched, so a plain deep copy
    would run the original's forward outside TRL's chunked head; patch the copy afresh instead.
    """
    from trl.trainer.utils import add_fused_lm_head

    copied = copy.deepcopy(model)
    copied.__dict__.pop("forward", None)
    add_fused_lm_head(copied, temperature=trainer.temperature, cast_lm_head_to_fp32=trainer.args.cast_lm_head_to_fp32, outputs=("log_probs", "entropy"))
    return copied


def _gradients(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()])


@slow
@pytest.mark.parametrize(("aggregation", "per_forward"), [("rollout_token_mean", 0), ("token_mean", 0), ("rollout_token_mean", 1)])
def test_several_optimizer_steps_per_rl_step_follow_the_objective(
    tiny_dir: Path, many_samples: list[Sample], tmp_path: Path, aggregation: str, per_forward: int
) -> None:
    """The 7B preset's shape: more questions per RL step than per mini-batch, so old log-probs are recomputed.

    With `rollouts_per_forward` 1 and whole logits (the demo's), each rollout runs alone and
    unpadded; the gradients must be those of the objective written out on whole padded micro-batches.
    """
    from transformers import TrainerCallback

    from mini_o3.train.rl import build_trainer

    config = job(
        tiny_dir, tmp_path / "out", prompts_per_step=8, mini_batch_prompts=1, num_generations=4, micro_batch_size=2,
        max_grad_norm=1e9, learning_rate=1e-2, concurrency=1, max_sampling_rounds=12, save_steps=100,
        loss_aggregation=aggregation, rollouts_per_forward=per_forward, chunked_logprobs=per_forward == 0,
    )
    with pytest.raises(ValueError, match="at least prompts_per_step"):
        build_trainer(config, many_samples[:7], mixed_policy(seed=11))
    trainer = build_trainer(config, many_samples, mixed_policy(seed=11))
    accumulation = trainer.args.gradient_accumulation_steps
    assert (accumulation, trainer.args.steps_per_generation, trainer.args.max_steps) == (2, 16, 8)
    start = _snapshot(trainer, trainer.model)
    seen: list[dict[str, Any]] = []

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            k = len(seen)
            seen.append({
                "model": _snapshot(trainer, trainer.model),  # the weights this mini-batch was evaluated at
                "gradient": _gradients(trainer.model).clone(),
                "inputs": trainer._buffered_inputs[k * accumulation : (k + 1) * accumulation],
                "all": list(trainer._buffered_inputs),
            })

    trainer.add_callback(Capture())
    trainer.train()
    trainer.close()
    assert len(seen) == 8 and trainer.state.global_step == 8  # one RL step, eight optimizer steps
    every = seen[0]["all"]
    # Old log-probs were recomputed once, at the weights before the first update: the first
    # mini-batch starts exactly on-policy (ratio 1), later ones do not.
    with torch.no_grad():
        for micro in every:
            mask = micro["loss_mask"] > 0
            now = trainer._logprobs(start, micro)
            assert mask.sum() == 0 or (now - micro["old_per_token_logps"])[mask].abs().max() < 1e-5
        later = seen[1]["inputs"][0]
        moved = trainer._logprobs(seen[1]["model"], later) - later["old_per_token_logps"]
        assert moved[later["loss_mask"] > 0].abs().max() > 1e-4
    # Some mini-batch mixes masked (over-turn) and trained rollouts, so renormalising would show.
    carries = [bool(row.sum() > 0) for step in seen for micro in step["inputs"] for row in micro["loss_mask"]]
    assert any(carries) and not all(carries)
    # The objective written out: per mini-batch (optimizer step), the mean over its rollouts of
    # each rollout's token mean (a masked rollout counts as 0), or the token sum over the RL
    # step's mean tokens per mini-batch (DAPO, as TRL's normaliser); one PPO clip 0.2 / 0.3.
    step_tokens = sum(float(micro["loss_mask"].sum()) for micro in every) / len(seen)
    compared = 0
    for step in seen:
        model = _snapshot(trainer, step["model"])
        model.zero_grad(set_to_none=True)
        model.train()
        rollouts = sum(len(micro["advantages"]) for micro in step["inputs"])
        for micro in step["inputs"]:
            mask = micro["loss_mask"]
            advantages = micro["advantages"].unsqueeze(1)
            logprobs = trainer._logprobs(model, micro)
            ratio = torch.exp((logprobs - micro["old_per_token_logps"]) * (mask > 0))
            per_token = -torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.3) * advantages) * mask
            if aggregation == "rollout_token_mean":
                loss = (per_token.sum(1) / mask.sum(1).clamp(min=1.0)).sum() / rollouts
            else:
                loss = per_token.sum() / step_tokens
            loss.backward()
        expected = _gradients(model)
        if expected.norm() == 0:  # nothing to train: every rollout masked, no advantage, or every ratio clipped
            assert step["gradient"].norm() == 0
            continue
        assert (step["gradient"] - expected).norm() / expected.norm() < 1e-4
        compared += 1
    assert compared >= 5


@slow
def test_sampled_logprobs_equal_the_training_forwards_on_a_multi_turn_multi_image_rollout(
    tiny_dir: Path, samples: list[Sample], tmp_path: Path
) -> None:
    from mini_o3.policies.local import LocalPolicy
    from mini_o3.train.rl import ROLLOUTS_FILE, build_trainer

    out = tmp_path / "out"
    config = job(tiny_dir, out, dynamic_sampling=False, overturn_mask=False, max_turns=4, max_new_tokens=16, save_token_ids=True)
    trainer = build_trainer(config, samples)
    sampler = LocalPolicy((trainer.model, trainer.mini_tokenizer, trainer.image_processor), max_batch_size=8)
    zooms = [
        protocol.render_zoom(protocol.Zoom((0.0, 0.0, 0.6, 0.6))),
        protocol.render_zoom(protocol.Zoom((0.2, 0.2, 0.8, 0.8), "observation_1")),
    ]

    class ZoomTwiceThenSample:
        """Two scripted zooms (three images in context), then the trainer's own model samples every later turn."""

        def generate(self, messages: list[dict], sampling: Any) -> Generation:
            turn = sum(1 for message in messages if message["role"] == "assistant")
            if turn < len(zooms):
                return Generation(text=f"<think>Look {turn}.</think>" + zooms[turn])
            return sampler.generate(messages, sampling)

        def count_tokens(self, text: str) -> int:
            return sampler.count_tokens(text)

        def image_tokens(self, width: int, height: int) -> int:
            return sampler.image_tokens(width, height)

    trainer.rollout_policy = ZoomTwiceThenSample()
    trainer.model.eval()
    batch = trainer._generate_and_score_completions(rows(trainer, [0, 2]))
    sampler.close()
    trainer.close()
    with torch.no_grad():
        trained = trainer._logprobs(trainer.model, batch)
    records = [json.loads(line) for line in (out / ROLLOUTS_FILE).read_text().splitlines()]
    compared, worst = 0, 0.0
    for row, record in enumerate(records):
        assert len(record["views"]) == 3  # the original and two crops before the first sampled turn
        sampled = [(t, lp) for turn in record["turns"] if turn["logprobs"] for t, lp in zip(turn["token_ids"], turn["logprobs"])]
        assert sampled and record["status"] != "error"
        # The sampled turns come last, so they are the last loss-carrying positions.
        positions = (batch["loss_mask"][row] > 0).nonzero().flatten()[-len(sampled) :]
        assert batch["completion_ids"][row][positions].tolist() == [token for token, _ in sampled]
        recorded = torch.tensor([logprob for _, logprob in sampled])
        worst = max(worst, float((trained[row][positions] - recorded).abs().max()))
        compared += len(sampled)
    # float32 on CPU, batched sampling with a KV cache against one padded forward: 1e-4 is ample.
    assert compared >= 8 and worst < 1e-4, worst


@slow
def test_old_logprobs_from_the_rollout_are_the_recompute_without_its_forward(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    from mini_o3.train.rl import build_trainer

    # Two mini-batches per RL step, so old log-probs are needed; the trainer's own model samples.
    config = job(tiny_dir, tmp_path / "out", dynamic_sampling=False, overturn_mask=False, mini_batch_prompts=1, micro_batch_size=2,
                 max_new_tokens=12, old_logprobs="rollout")
    trainer = build_trainer(config, samples)
    trainer.model.eval()
    batch = trainer._generate_and_score_completions(rows(trainer, [0, 2]))
    with torch.no_grad():
        recomputed = trainer._old_logprobs(batch)
        # TRL's chunked LM head and whole logits give the same log-probs.
        chunked = trainer._logprobs(trainer.model, batch)
        trainer.job = dataclasses.replace(trainer.job, chunked_logprobs=False)
        whole = trainer._logprobs(trainer.model, batch)
    trainer.close()
    assert float((chunked - whole)[batch["completion_mask"] > 0].abs().max()) < 1e-5
    live = batch["loss_mask"] > 0
    assert live.any()
    gap = float((batch["old_per_token_logps"] - recomputed)[live].abs().max())
    # Recomputing is deterministic; the sampled values differ from it by float noise only (batched,
    # cached decoding against one forward), so a nonzero gap shows they came from the sampling.
    assert 0 < gap < 1e-4, gap
    for bad in (dict(use_vllm=True), dict(temperature=0.7), dict(old_logprobs="sampled")):
        with pytest.raises(ValueError, match="old_logprobs"):
            job(tiny_dir, tmp_path / "x", **{"old_logprobs": "rollout", **bad}).validate()


# ---------------------------------------------------------------- failures, void turns, placeholders


def flaky_policy(seed: int, failure_share: float = 1 / 12) -> ScriptedPolicy:
    """`mixed_policy`, except that a turn fails (PolicyError) now and then."""
    base = mixed_policy(seed)
    rng = random.Random(seed + 100)
    lock = threading.Lock()

    def turn(messages: list[dict]) -> str:
        with lock:
            draw = rng.random()
        if draw < failure_share:
            raise PolicyError("the server went away")
        return base.script(messages)

    return ScriptedPolicy(turn)


@slow
def test_a_failed_rollout_removes_its_group_unless_told_otherwise(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    from mini_o3.train.rl import ROLLOUTS_FILE, build_trainer

    for drop in (True, False):
        out = tmp_path / f"drop-{drop}"
        config = job(tiny_dir, out, concurrency=1, drop_failed_groups=drop, max_sampling_rounds=12)
        trainer = build_trainer(config, samples, flaky_policy(seed=8, failure_share=0.15))
        batch = trainer._generate_and_score_completions(rows(trainer, [0, 1]))
        trainer.close()
        records = [json.loads(line) for line in (out / ROLLOUTS_FILE).read_text().splitlines()]
        in_batch = [record for record in records if record["meta"]["in_batch"]]
        groups = [in_batch[start : start + 4] for start in range(0, len(in_batch), 4)]
        trained = [group for group in groups if any(record["meta"]["trained"] for record in group)]
        with_error = [group for group in trained if any(record["status"] == "error" for record in group)]
        assert any(record["status"] == "error" for record in records)
        if drop:
            assert not with_error  # its group left the step; others refilled it
            assert len(trained) == 2 and trainer._metrics["train"]["groups/failed"][-1] > 0
        else:
            assert with_error
            for group in with_error:
                for record in group:
                    assert record["meta"]["trained"] == (record["status"] not in ("error", "over_turn"))
            # The failed rollout scores 0 in its group's statistics.
            rewards = torch.tensor([[record["meta"]["reward"] for record in with_error[0]]])
            row = in_batch.index(with_error[0][0])
            expected = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
            assert torch.allclose(batch["advantages"][row : row + 4].cpu(), expected.reshape(-1), atol=1e-5)


class _NoScoreJudge(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "I cannot tell."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_failed_judge_call_gives_no_reward_and_fails_its_group() -> None:
    from mini_o3.train.rollouts import Rewarder, RolloutGroup

    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoScoreJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        rewarder = Rewarder(f"http://127.0.0.1:{server.server_port}/v1", "judge")

        def answered(answer: str) -> Trajectory:
            return Trajectory(sample_id="s", question="q", image="i.png", image_size=(8, 8), ground_truth="red", answer=answer, status=Status.ANSWERED)

        assert rewarder(answered("red")) == 1.0  # the rules decide; no judge call
        assert rewarder(answered("crimson")) is None and rewarder.judge_failures == 1
    finally:
        server.shutdown()
        server.server_close()
    group = RolloutGroup(0, [], [1.0, None])
    assert group.failed and group.scores == [1.0, 0.0]
    assert not RolloutGroup(0, [], [1.0, 0.0]).failed


def _scripted_batch(tiny_dir: Path, samples: list[Sample], out: Path, turn: Any, **fields: Any) -> tuple[dict, list[dict]]:
    """One RL batch of questions 0 and 1 rolled out by a scripted `turn`, and the rollouts the trainer saved."""
    from mini_o3.train.rl import ROLLOUTS_FILE, build_trainer

    trainer = build_trainer(job(tiny_dir, out, concurrency=1, dynamic_sampling=False, **fields), samples, ScriptedPolicy(turn))
    batch = trainer._generate_and_score_completions(rows(trainer, [0, 1]))
    trainer.close()
    return batch, [json.loads(line) for line in (out / ROLLOUTS_FILE).read_text().splitlines()]


@slow
def test_a_last_turn_cut_inside_grounding_is_void_trained_with_reward_zero(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    cut = Generation(text='<think>Closer.</think><grounding>{"bbox_2d": [0.1, 0.1,', finish_reason="length")
    closed = "<think>Closer.</think>" + protocol.render_zoom(protocol.Zoom((0.1, 0.1, 0.7, 0.7)))
    for void_on in (True, False):
        rng = random.Random(5)
        lock = threading.Lock()

        def turn(messages: list[dict]) -> Any:
            if sum(1 for message in messages if message["role"] == "assistant") < 2:
                return closed
            with lock:
                draw = rng.random()
            return cut if draw < 0.4 else closed if draw < 0.7 else "<think>It is red.</think><answer>red</answer>"

        batch, records = _scripted_batch(tiny_dir, samples, tmp_path / f"void-{void_on}", turn, void_unclosed_grounding=void_on)
        kinds = set()
        for row, record in enumerate(records):
            void = record["turns"][-1]["text"] == cut.text
            kinds.add((record["status"], void))
            assert record["meta"]["void"] == void
            if void:
                assert record["status"] == "over_turn" and record["meta"]["reward"] == 0.0
            carries_loss = bool(batch["loss_mask"][row].sum() > 0)
            assert carries_loss == (record["status"] == "answered" or (void and void_on)), record["turns"][-1]["text"]
        assert {("over_turn", True), ("over_turn", False), ("answered", False)} <= kinds


@slow
def test_ignore_void_masks_rollouts_that_end_without_an_answer_or_action(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    closed = "<think>Closer.</think>" + protocol.render_zoom(protocol.Zoom((0.1, 0.1, 0.7, 0.7)))
    for ignore in (True, False):
        rng = random.Random(7)
        lock = threading.Lock()

        def turn(messages: list[dict]) -> Any:
            if sum(1 for message in messages if message["role"] == "assistant") < 1:
                return closed
            with lock:
                draw = rng.random()
            return "<think>" if draw < 0.5 else "<think>It is red.</think><answer>red</answer>"

        batch, records = _scripted_batch(tiny_dir, samples, tmp_path / f"ignore-{ignore}", turn, ignore_void=ignore)
        statuses = {record["status"] for record in records}
        assert statuses == {"answered", "no_answer"}
        for row, record in enumerate(records):
            assert record["meta"]["ends_void"] == (record["status"] == "no_answer")
            carries_loss = bool(batch["loss_mask"][row].sum() > 0)
            assert carries_loss == (record["status"] == "answered" or not ignore)
        # a void rollout's reward still counts in its group: the answered ones keep a positive advantage
        answered = [record["meta"]["advantage"] for record in records if record["status"] == "answered" and record["meta"]["in_batch"]]
        assert min(answered) >= 0 and max(answered) > 0


@slow
def test_a_sampled_image_placeholder_fails_its_episode_not_the_step(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    from mini_o3.train.rl import LOG_FILE, ROLLOUTS_FILE, run_rl

    _, tokenizer, _ = load_checkpoint(tiny_dir)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    thought = "<think>There.</think>"
    as_ids = Generation(text=thought, token_ids=tokenizer.encode(thought) + [pad])  # an engine that reports ids
    as_text = f"{thought}<|image_pad|>"  # an engine that reports text only
    base = mixed_policy(seed=6)
    rng = random.Random(6)
    lock = threading.Lock()

    def turn(messages: list[dict]) -> Any:
        with lock:
            draw = rng.random()
        return as_ids if draw < 0.1 else as_text if draw < 0.2 else base.script(messages)

    out = tmp_path / "out"
    run_rl(job(tiny_dir, out, concurrency=1, max_sampling_rounds=12), samples=samples, rollout_policy=ScriptedPolicy(turn))
    records = [json.loads(line) for line in (out / ROLLOUTS_FILE).read_text().splitlines()]
    failed = [record for record in records if record["status"] == "error"]
    assert failed and all("vision placeholder" in record["error"] for record in failed)
    assert not any(record["meta"]["trained"] for record in failed)
    # Failed turns are not in the trajectory: no recorded turn holds a placeholder.
    assert not any("<|image_pad|>" in turn["text"] for record in records for turn in record["turns"])
    assert any("reward" in json.loads(line) for line in (out / LOG_FILE).read_text().splitlines())
