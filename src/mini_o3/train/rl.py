"""`mini-o3 rl`: GRPO with over-turn masking, on TRL's GRPOTrainer, rolling out through the shared episode engine.

How it rides on TRL (and why): `MiniO3GRPOTrainer` subclasses `trl.GRPOTrainer` and replaces
two methods, keeping everything else of TRL's - the training loop, the optimizer and scheduler,
accelerate / DeepSpeed, checkpoints and resume, the generation-batch buffering that splits one
RL step into mini-batches, the per-image slicing of `pixel_values` in the forward pass, and the
vLLM engine with its weight sync.

- `_generate_and_score_completions`: every question's n rollouts run through
  `mini_o3.agent.loop.run_episodes` - the same protocol, environment and limits as inference, no
  second copy of the episode loop - with a policy wrapping the trainer's current model
  (`LocalPolicy`, batched transformers generation; or the colocated vLLM engine). Rewards are
  `scoring.score_trajectory` correctness (an optional LLM judge second); advantages, masks and
  the dynamic-sampling filter are `train.masking`'s; each rollout becomes token ids with
  `train.tokenize` (the sampled ids, a mask of model-written tokens) and every image it showed
  (the original and each crop) goes into `pixel_values` / `image_grid_thw`. As released, a group
  with a failed rollout or judge call is dropped and refilled, a last turn cut inside
  `<grounding>` is void (trained, reward 0), and a turn holding a vision placeholder fails its
  episode rather than the step.
- `_compute_loss`: `masking.clipped_token_loss` (clip 0.2 / 0.3, no KL, no entropy bonus),
  aggregated as `loss_aggregation` says: the release's mean over the optimizer step's rollouts
  of each rollout's token mean (TRL's "grpo" loss type computes the same), or DAPO's token mean
  over the step's unmasked tokens (TRL's "dapo").

TRL's own routes do not fit: `rollout_func` would give the training forward pass only the
dataset's prompt image, not the crops inside the completion; `environment_factory` speaks
Qwen's `<tool_call>` JSON and runs TRL's tool loop, not Mini-o3's `<grounding>` protocol and
our environment; and neither has over-turn masking or dynamic sampling with refill.

One RL step = `prompts_per_step` questions x `num_generations` rollouts, updated in
`prompts_per_step / mini_batch_prompts` optimizer steps of `mini_batch_prompts` questions
(TRL's `steps_per_generation`). The step log, checkpoints and `max_steps` count RL steps.
"""

from __future__ import annotations

import functools
import json
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from rich.console import Console

from mini_o3.agent.loop import run_episodes
from mini_o3.agent.sample import Sample
from mini_o3.agent.policy import Policy
from mini_o3.models.families import backbone_of
from mini_o3.policies.seeded import SeededPolicy, turn_seed
from mini_o3.train import batch_rows, masking, refill
from mini_o3.train.config import RLJobConfig, config_json, require_backends
from mini_o3.train.console import LIBRARY_LOG, Figure, library_noise_to, show_progress
from mini_o3.train.progress import JsonlLogCallback, SaveImageProcessorCallback, plot_learning_curve, trim_jsonl
from mini_o3.train.rollouts import (
    PLACEHOLDER_TOKENS, PlaceholderGuard, Rewarder, RolloutGroup, ends_void, episode_config, is_void, mini_o3_correctness, rollout_stats,
)
from mini_o3.train.sft import FINAL_DIR, freeze_vision, last_checkpoint
from mini_o3.train.tokenize import ConversationEncoder, EncodedConversation
from mini_o3.train.vllm_policy import VLLMColocatePolicy

LOG_FILE = "log.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
CURVE_FILE = "learning_curve.png"
RL_FIGURES = (Figure("reward", "reward", ".2f"), Figure("masked", "rollouts/masked_share", ".0%"))
"""What the RL progress line shows besides the step: the mean reward and the share of rollouts masked out of the loss."""
CURVE_SERIES = ("reward", "rollouts/over_turn_share", "rollouts/turns_mean", "groups/kept_share", "loss")


@functools.cache
def trainer_class() -> type:
    """`MiniO3GRPOTrainer`, the GRPOTrainer subclass (built on first use: importing TRL takes seconds)."""
    from trl import GRPOTrainer
    from trl.models import unwrap_model_for_generation
    from trl.trainer.utils import pad

    class MiniO3GRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose rollouts are Mini-o3 episodes and whose loss is `masking.clipped_token_loss`."""

        def __init__(
            self,
            *,
            job: RLJobConfig,
            samples: Sequence[Sample],
            tokenizer: Any,
            image_processor: Any,
            rewarder: Rewarder,
            rollout_policy: Policy | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.job = job
            self.samples = list(samples)
            self.mini_tokenizer = tokenizer
            self.image_processor = image_processor
            self.encoder = ConversationEncoder(tokenizer, image_processor, backbone_of(self.model))
            self.rewarder = rewarder
            self.episode_config = episode_config(job)
            self.rollout_policy = rollout_policy
            self._local_policy: Any = None
            self._vllm_policy: Any = None
            self._rollout_seconds = 0.0
            self._update_seconds = 0.0
            self.placeholder_ids = {
                int(tokenizer.convert_tokens_to_ids(token)) for token in PLACEHOLDER_TOKENS
                if tokenizer.convert_tokens_to_ids(token) not in (None, getattr(tokenizer, "unk_token_id", None))
            }
            self._rollouts_path = Path(self.args.output_dir) / (
                ROLLOUTS_FILE if self.accelerator.num_processes == 1 else f"rollouts.{self.accelerator.process_index}.jsonl"
            )

        # ------------------------------------------------------------ rollouts

        @contextmanager
        def _policy(self) -> Iterator[Policy]:
            """The policy rollouts use, on the current weights, with the model in eval mode."""
            if self.rollout_policy is not None:
                yield self.rollout_policy
                return
            if self.use_vllm:
                if self.state.global_step != self._last_loaded_step:
                    self.vllm_generation.sync_weights()
                    self._last_loaded_step = self.state.global_step
                if self._vllm_policy is None:
                    self._vllm_policy = VLLMColocatePolicy(self.vllm_generation.llm, self.encoder.prompt_encoder, self.job.policy_batch_size)
                yield self._vllm_policy
                return
            was_training = self.model.training
            with unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped:
                if self._local_policy is None or self._local_policy.model is not unwrapped:
                    from mini_o3.policies.local import LocalPolicy

                    if self._local_policy is not None:
                        self._local_policy.close()
                    self._local_policy = LocalPolicy(
                        (unwrapped, self.mini_tokenizer, self.image_processor),
                        device=str(self.accelerator.device),
                        max_batch_size=self.job.policy_batch_size,
                        engine=self.job.rollout_engine,
                    )
                unwrapped.eval()
                try:
                    yield self._local_policy
                finally:
                    if was_training:
                        self.model.train()

        def _judge(self, group: RolloutGroup) -> str:
            """Whether a finished group joins the batch (KEEP), fills a slot only (SPARE, FAILED) or is of no use (UNUSABLE)."""
            if not group.usable:
                return refill.UNUSABLE
            if self.job.drop_failed_groups and group.failed:
                return refill.FAILED
            if self.job.dynamic_sampling and not masking.keep_groups(torch.tensor([group.scores]), self.job.uniform_std):
                return refill.SPARE
            return refill.KEEP

        def _sample_step(self, indices: list[int]) -> tuple[list[RolloutGroup], list[float], list[RolloutGroup], dict[str, float]]:
            """Roll out a group per slot, replacing each failed or uniform one as soon as it finishes (`train.refill`).

            Returns the batch's groups, each group's weight (0 for a uniform or failed group that
            only fills a slot), the sampled groups left out, and the step's rollout figures.
            """
            needed, n = len(indices), self.num_generations
            where = f"{self.args.seed}/{self.state.global_step}/{self.accelerator.process_index}"
            streams = [random.Random(f"{where}/slot{slot}") for slot in range(needed)]
            chains = refill.RefillChains(
                indices, n, self.job.max_sampling_rounds, draw=lambda slot: streams[slot].randrange(len(self.samples)),
                score=lambda episode: self.rewarder(episode.trajectory), judge=self._judge,
            )

            def jobs(pairs: list[tuple[int, int]]) -> list[tuple[Sample, int]]:
                return [(self.samples[index], run) for index, run in pairs]

            with self._policy() as policy:
                # Every turn samples with a seed drawn from (run seed, step, process) and its
                # episode's run number, which encodes (attempt, slot, rollout): a rerun of the
                # same job with the same weights rolls out the same episodes.
                stream = f"rl/step{self.state.global_step}/process{self.accelerator.process_index}/round1"
                seeded = SeededPolicy(PlaceholderGuard(policy, self.placeholder_ids), turn_seed(self.args.seed, stream, 0, 0))
                for _ in run_episodes(seeded, jobs(chains.first_jobs()), self.episode_config, concurrency=self.job.concurrency,
                                      follow_up=lambda episode: jobs(chains.finished(episode))):
                    pass
            sampled = chains.sampled()
            kept = [chains.kept[slot] for slot in sorted(chains.kept)]
            rejected = [chains.rejected[place] for place in sorted(chains.rejected)]
            failed = [group for verdict, group in rejected if verdict == refill.FAILED]
            weights = [1.0] * len(kept)
            fill = needed - len(kept)
            if fill > 0:
                fillers = [group for verdict, group in rejected if verdict == refill.SPARE] + failed
                if len(fillers) < fill:
                    raise RuntimeError(
                        f"{fill} of {needed} rollout groups could not be filled in {chains.rounds()} sampling rounds: episodes failed "
                        "to show their image or to run (check the dataset's image paths and the policy)"
                    )
                # Shapes stay fixed; these groups carry no loss (zero mask), as if left out.
                kept += fillers[:fill]
                weights += [0.0] * fill
            stats = rollout_stats(sampled, len(kept) - fill, fill, chains.rounds(), self.job.max_turns, len(failed))
            if self.rewarder.judge is not None:
                stats["judge_failures"] = float(self.rewarder.judge_failures)
            in_batch = {id(group) for group in kept}
            left_out = [group for group in sampled if id(group) not in in_batch]
            return kept, weights, left_out, stats

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            n = self.num_generations
            indices = [int(row["sample_index"]) for row in inputs[::n]]
            for group, index in enumerate(indices):
                if any(int(row["sample_index"]) != index for row in inputs[group * n : (group + 1) * n]):
                    raise RuntimeError(
                        "a group of rollouts is split across processes; make prompts_per_step a multiple of the "
                        "number of processes"
                    )
            started = time.perf_counter()
            groups, group_weights, left_out, stats = self._sample_step(indices)
            rollout_seconds = time.perf_counter() - started

            rewards = torch.tensor([group.scores for group in groups], dtype=torch.float32)
            advantages = masking.group_advantages(rewards).reshape(-1)
            episodes = [episode for group in groups for episode in group.episodes]
            statuses = [episode.trajectory.status for episode in episodes]
            void = [self.job.void_unclosed_grounding and is_void(episode.trajectory) for episode in episodes]
            ignored = [self.job.ignore_void and ends_void(episode.trajectory) for episode in episodes]
            weights = masking.rollout_weights(statuses, self.job.overturn_mask, void, ignored)
            weights = weights * torch.tensor(group_weights).repeat_interleave(n)
            encoded = [self.encoder.encode_episode(episode) for episode in episodes]
            batch = self._batch(encoded, advantages, weights, episodes)
            stats["tokens/model_per_rollout"] = sum(sum(item.assistant_mask) for item in encoded) / len(encoded)
            stats["tokens/sequence_mean"] = sum(len(item) for item in encoded) / len(encoded)
            stats["tokens/loss_tokens"] = float(batch["loss_mask"].sum())
            stats["rollouts/masked_share"] = float((weights == 0).float().mean())
            stats["rollouts/images_mean"] = sum(item.num_images for item in encoded) / len(encoded)
            stats["time/rollout_s"] = rollout_seconds
            if self.job.save_rollouts:
                self._save_rollouts(groups, weights.tolist(), advantages, left_out)
            self._rollout_seconds += rollout_seconds
            for key, value in stats.items():
                self._metrics["train"][key].append(value)
            return batch

        def _batch(
            self, encoded: list[EncodedConversation], advantages: torch.Tensor, weights: torch.Tensor, episodes: Sequence[Any] = ()
        ) -> dict[str, Any]:
            device = self.accelerator.device
            pad_id = self.mini_tokenizer.pad_token_id
            prompts = [torch.tensor(item.input_ids[: item.prompt_length]) for item in encoded]
            completions = [torch.tensor(item.input_ids[item.prompt_length :]) for item in encoded]
            masks = [torch.tensor(item.assistant_mask[item.prompt_length :], dtype=torch.float32) * weight for item, weight in zip(encoded, weights)]
            prompt_ids = pad(prompts, padding_value=pad_id, padding_side="left")
            prompt_mask = pad([torch.ones_like(ids) for ids in prompts], padding_value=0, padding_side="left")
            completion_ids = pad(completions, padding_value=pad_id, padding_side="right")
            completion_mask = pad([torch.ones_like(ids) for ids in completions], padding_value=0, padding_side="right")
            loss_mask = pad(masks, padding_value=0.0, padding_side="right")
            full_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            mm_token_type_ids = (full_ids == self.encoder.image_token_id).long() * torch.cat([prompt_mask, completion_mask], dim=1)
            batch: dict[str, Any] = {
                "prompt_ids": prompt_ids.to(device),
                "prompt_mask": prompt_mask.to(device),
                "completion_ids": completion_ids.to(device),
                "completion_mask": completion_mask.to(device),
                "loss_mask": loss_mask.to(device),
                "advantages": advantages.to(device),
                "mm_token_type_ids": mm_token_type_ids.to(device),
                "pixel_values": torch.cat([item.pixel_values for item in encoded]).to(device),
                "image_grid_thw": torch.cat([item.image_grid_thw for item in encoded]).to(device),
                "num_images": [item.num_images for item in encoded],
            }
            if self.args.bf16:
                batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
            batch["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum().to(device)).sum()
            generate_every = self.args.steps_per_generation * self.num_iterations
            if self.args.gradient_accumulation_steps % generate_every != 0 or self.use_vllm:
                # Several optimizer steps share these rollouts: freeze the log-probs they were judged by.
                sampled = self._sampled_logprobs(encoded, episodes, completion_ids.shape[1]) if self.job.old_logprobs == "rollout" else None
                batch["old_per_token_logps"] = self._old_logprobs(batch, sampled)
            return batch

        def _sampled_logprobs(self, encoded: list[EncodedConversation], episodes: Sequence[Any], width: int) -> dict[int, torch.Tensor]:
            """Row -> the log-probs its turns recorded at sampling, on the row's completion positions (`width` wide).

            A row is left out (recomputed) when a turn recorded none, or when its sampled ids are
            not exactly the ids the model wrote in the encoded rollout.
            """
            found: dict[int, torch.Tensor] = {}
            for row, (item, episode) in enumerate(zip(encoded, episodes)):
                turns = episode.trajectory.turns
                if any(turn.logprobs is None or len(turn.logprobs) != len(turn.token_ids) for turn in turns):
                    continue
                written = item.assistant_mask[item.prompt_length :]
                positions = [position for position, flag in enumerate(written) if flag]
                completion = item.input_ids[item.prompt_length :]
                if [completion[position] for position in positions] != [token for turn in turns for token in turn.token_ids]:
                    continue
                values = torch.zeros(width, dtype=torch.float32)
                values[torch.tensor(positions, dtype=torch.long)] = torch.tensor([value for turn in turns for value in turn.logprobs], dtype=torch.float32)
                found[row] = values
            return found

        def _old_logprobs(self, batch: dict[str, Any], sampled: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
            """Log-probs of the rollouts that carry loss: `sampled`'s where given, else recomputed in micro-batches of similar length; masked rows get 0 (never read)."""
            old = torch.zeros(batch["completion_ids"].shape, dtype=torch.float32, device=batch["completion_ids"].device)
            lengths = (batch["prompt_mask"].sum(dim=1) + batch["completion_mask"].sum(dim=1)).tolist()
            sampled = sampled or {}
            live = batch_rows.live_rows(batch["loss_mask"])
            for row in live:
                if row in sampled:
                    old[row] = sampled[row].to(old.device)
            live = [row for row in live if row not in sampled]
            with torch.no_grad():
                size = min(self.args.per_device_train_batch_size, self.job.rollouts_per_forward or self.args.per_device_train_batch_size)
                for rows in batch_rows.length_chunks(lengths, live, size):
                    logprobs = self._logprobs(self.model, batch_rows.select_rows(batch, rows))
                    old[torch.tensor(rows, device=old.device)] = logprobs.to(old.dtype)
            return old

        def _logprobs(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
            # Rows are padded to the longest rollout of the whole step; a micro-batch runs only as
            # wide as its own longest prompt and completion (attention costs the square of it).
            prompt_width, completion_width = batch["prompt_ids"].size(1), batch["completion_ids"].size(1)
            keep_prompt = max(int(batch["prompt_mask"].sum(dim=1).max()), 1)
            keep_completion = max(int(batch["completion_mask"].sum(dim=1).max()), 1)
            input_ids = torch.cat([batch["prompt_ids"][:, -keep_prompt:], batch["completion_ids"][:, :keep_completion]], dim=1)
            attention_mask = torch.cat([batch["prompt_mask"][:, -keep_prompt:], batch["completion_mask"][:, :keep_completion]], dim=1)
            mm_token_type_ids = batch.get("mm_token_type_ids")
            if mm_token_type_ids is not None:
                mm_token_type_ids = mm_token_type_ids[:, prompt_width - keep_prompt : prompt_width + keep_completion]
            if self.job.chunked_logprobs:
                logprobs, _, _ = self._get_per_token_logps_and_entropies(
                    model,
                    input_ids,
                    attention_mask,
                    keep_completion,
                    batch_size=self.args.per_device_train_batch_size,
                    pixel_values=batch.get("pixel_values"),
                    image_grid_thw=batch.get("image_grid_thw"),
                    num_images=batch.get("num_images"),
                    mm_token_type_ids=mm_token_type_ids,
                )
            else:  # the whole logits at once: (rows, completion, vocab) floats
                with self.accelerator.autocast():
                    logits = model(
                        input_ids=input_ids, attention_mask=attention_mask, pixel_values=batch.get("pixel_values"),
                        image_grid_thw=batch.get("image_grid_thw"), mm_token_type_ids=mm_token_type_ids, logits_to_keep=keep_completion + 1,
                    ).logits[:, :-1]
                targets = input_ids[:, -keep_completion:, None]
                logprobs = (logits.float() / self.temperature).log_softmax(dim=-1).gather(-1, targets).squeeze(-1)
            return torch.nn.functional.pad(logprobs, (0, completion_width - keep_completion))

        def _save_rollouts(
            self, groups: list[RolloutGroup], weights: list[float], advantages: torch.Tensor, left_out: list[RolloutGroup]
        ) -> None:
            """Append every sampled rollout: the batch's first, in batch order, then the groups left out."""
            step = self.state.global_step // max(self.job.optimizer_steps_per_rl_step(), 1) + 1
            n = self.num_generations
            records = []
            for group_index, group in enumerate(groups + left_out):
                in_batch = group_index < len(groups)
                for run, (episode, reward) in enumerate(zip(group.episodes, group.rewards)):
                    row = group_index * n + run
                    record = episode.trajectory.to_dict()
                    if not self.job.save_token_ids:
                        for turn in record["turns"]:
                            turn["token_ids"] = turn["logprobs"] = None  # kept out of the log to keep it small
                    record["meta"] = {
                        **record.get("meta", {}),
                        "rl_step": step,
                        "sample_index": group.sample_index,
                        "reward": reward,
                        "void": is_void(episode.trajectory),
                        "ends_void": ends_void(episode.trajectory),
                        "in_batch": in_batch,
                        "advantage": float(advantages[row]) if in_batch else None,
                        "trained": bool(in_batch and weights[row] > 0),
                    }
                    records.append(json.dumps(record, ensure_ascii=False))
            self._rollouts_path.parent.mkdir(parents=True, exist_ok=True)
            with self._rollouts_path.open("a", encoding="utf-8") as handle:
                handle.write("".join(line + "\n" for line in records))

        # ------------------------------------------------------------ loss

        def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
            rows = inputs["advantages"].shape[0]
            # Masked rollouts add nothing (batch_rows); a micro-batch of masked rollouts only still
            # runs one through the model, so its loss is a zero with every parameter in the graph.
            live = batch_rows.live_rows(inputs["loss_mask"]) or [0]
            picked = inputs if len(live) == rows else batch_rows.select_rows(inputs, live)
            size = self.job.rollouts_per_forward or len(live)
            if size >= len(live):
                logprobs = self._logprobs(model, picked)
            else:  # several forwards, each as wide as its own rollouts; one graph, one backward
                chunks = [list(range(start, min(start + size, len(live)))) for start in range(0, len(live), size)]
                logprobs = torch.cat([self._logprobs(model, batch_rows.select_rows(picked, chunk)) for chunk in chunks])
            old = picked.get("old_per_token_logps")
            old = logprobs.detach() if old is None else old
            if self.job.loss_aggregation == masking.ROLLOUT_TOKEN_MEAN:
                # The rollouts of one optimizer step on this process (gradients are averaged over
                # processes): a fixed count, like verl's accumulation factor, whatever the masks.
                normaliser = rows * self.current_gradient_accumulation_steps
            else:
                # As TRL's "dapo": `num_items_in_batch` counts the unmasked tokens of the whole
                # generation batch over all processes; rescale it to one optimizer step here.
                normaliser = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
                normaliser = normaliser * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            loss, stats = masking.clipped_token_loss(
                logprobs, old, picked["advantages"], picked["loss_mask"], self.job.clip_low, self.job.clip_high,
                self.job.loss_aggregation, normaliser,
            )
            if stats.tokens > 0:  # a micro-batch of masked rollouts only has no ratio to report (not 0)
                metrics = self._metrics["train"]
                metrics["clip_ratio/low_mean"].append(stats.clip_low_fraction)
                metrics["clip_ratio/high_mean"].append(stats.clip_high_fraction)
                metrics["ratio_mean"].append(stats.mean_ratio)
            return loss

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
            before = self._rollout_seconds
            started = time.perf_counter()
            loss = super().training_step(model, inputs, num_items_in_batch)
            self._update_seconds += time.perf_counter() - started - (self._rollout_seconds - before)
            # One figure per RL step: all its optimizer steps (and the old-log-prob recompute).
            if self._step % (self.args.steps_per_generation * self.num_iterations) == 0:
                self._metrics["train"]["time/update_s"].append(self._update_seconds)
                self._update_seconds = 0.0
            return loss

        def close(self) -> None:
            """Stop the rollout policy's worker thread."""
            for policy in (self._local_policy, self._vllm_policy):
                if policy is not None:
                    policy.close()

    return MiniO3GRPOTrainer


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_trainer(job: RLJobConfig, samples: Sequence[Sample] | None = None, rollout_policy: Policy | None = None) -> Any:
    """A ready `MiniO3GRPOTrainer` for `job` (loads the model and, unless given, the questions)."""
    from datasets import Dataset
    from trl import GRPOConfig

    from mini_o3.models.tiny import build_processor, load_checkpoint

    processes = _world_size()
    job.validate(processes)
    if samples is None:
        from mini_o3.data.loading import load_dataset

        samples = load_dataset(job.data, limit=job.limit).samples
    samples = list(samples)
    if not samples:
        raise ValueError(f"no questions in {job.data!r}")
    if len(samples) < job.prompts_per_step:
        # TRL draws each step's questions without repeats; with fewer it trains zero steps silently.
        raise ValueError(f"RL needs at least prompts_per_step ({job.prompts_per_step}) questions, got {len(samples)}")
    model, tokenizer, image_processor = load_checkpoint(
        job.model_path, device="cpu", dtype=torch.bfloat16 if job.bf16 else torch.float32
    )
    if job.freeze_vision:
        freeze_vision(model)
    rollouts_per_optimizer_step = job.mini_batch_prompts * job.num_generations
    accumulation = rollouts_per_optimizer_step // (job.micro_batch_size * processes)
    steps_per_rl_step = job.optimizer_steps_per_rl_step()
    out = Path(job.output_dir)
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=job.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation * (job.prompts_per_step // job.mini_batch_prompts),
        num_generations=job.num_generations,
        num_iterations=job.ppo_epochs,
        max_steps=job.steps * steps_per_rl_step,
        learning_rate=job.learning_rate,
        lr_scheduler_type=job.lr_scheduler,
        warmup_steps=job.warmup_ratio,
        weight_decay=job.weight_decay,
        max_grad_norm=job.max_grad_norm,
        beta=0.0,
        epsilon=job.clip_low,
        epsilon_high=job.clip_high,
        # Our _compute_loss replaces TRL's; the matching TRL loss type computes the same objective.
        loss_type="grpo" if job.loss_aggregation == masking.ROLLOUT_TOKEN_MEAN else "dapo",
        temperature=job.temperature,
        top_p=job.top_p,
        max_completion_length=job.max_new_tokens,
        use_vllm=job.use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=job.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=job.vllm_tensor_parallel_size,
        vllm_max_model_length=job.max_context_tokens if job.use_vllm else None,
        bf16=job.bf16,
        activation_checkpointing=job.gradient_checkpointing,
        deepspeed=job.deepspeed,
        save_strategy="steps",
        save_steps=job.save_steps * steps_per_rl_step,
        save_total_limit=job.save_total_limit,
        logging_steps=steps_per_rl_step,
        report_to=job.report_to,
        seed=job.seed,
        remove_unused_columns=False,
        shuffle_dataset=True,
        log_completions=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    dataset = Dataset.from_dict({"prompt": [sample.question for sample in samples], "sample_index": list(range(len(samples)))})
    rewarder = Rewarder(job.judge_url, job.judge_model, out / "judge_cache.jsonl" if job.judge_url else None)
    trainer = trainer_class()(
        job=job,
        samples=samples,
        tokenizer=tokenizer,
        image_processor=image_processor,
        rewarder=rewarder,
        rollout_policy=rollout_policy,
        model=model,
        reward_funcs=[mini_o3_correctness],
        args=args,
        train_dataset=dataset,
        processing_class=build_processor(tokenizer, image_processor, backbone_of(model)),
        callbacks=[
            JsonlLogCallback(out / LOG_FILE, step_scale=steps_per_rl_step, step_name="step"),
            SaveImageProcessorCallback(image_processor, rl_episode_settings(job)),
        ],
    )
    return trainer


def rl_episode_settings(job: RLJobConfig) -> Any:
    """The episode settings an RL model carries: its rollouts' views, tokens and limits; the inference
    turn budget is the starting checkpoint's (32 without one)."""
    from mini_o3.models.episode_settings import DEFAULT_SETTINGS, read_episode_settings

    start = read_episode_settings(job.model_path) or DEFAULT_SETTINGS
    return start.replace(
        view_max_pixels=job.image_max_pixels, view_min_pixels=job.image_min_pixels, max_new_tokens=job.max_new_tokens,
        numbering=job.numbering, max_context_tokens=job.max_context_tokens, context_reserve=job.context_reserve,
        train_max_turns=job.max_turns, train_max_images=job.max_images, written_by="rl",
    )


def run_rl(
    job: RLJobConfig, samples: Sequence[Sample] | None = None, rollout_policy: Policy | None = None, console: Console | None = None
) -> Path:
    """Train `job.model_path` with GRPO on `job.data`; return the final checkpoint's folder.

    `samples` overrides the dataset; `rollout_policy` replaces the trained model as the
    rollout policy (for tests and off-policy experiments: the update stays on the model).
    The console shows one progress line (on `console`, stderr by default); the step records go
    to OUTPUT_DIR/log.jsonl and library warnings to OUTPUT_DIR/library.log.
    """
    for name in ("model_path", "output_dir"):
        if not getattr(job, name):
            raise ValueError(f"RL needs {name} (set it in the config or on the command line)")
    if samples is None and not job.data:
        raise ValueError("RL needs data (a dataset spec such as synthetic:DIR)")
    require_backends(job)
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print("RL job configuration:\n" + config_json(job), flush=True)
    (out / "rl_config.json").write_text(config_json(job) + "\n")
    resume = last_checkpoint(out) if job.resume else None
    if resume is not None:
        done = int(Path(resume).name.split("-")[-1])
        trim_jsonl(out / LOG_FILE, done, key="optimizer_step")
        for path in out.glob("rollouts*.jsonl"):
            _trim_rollouts(path, done // max(job.optimizer_steps_per_rl_step(), 1))
        print(f"resuming from {resume}", flush=True)
    else:
        for path in [out / LOG_FILE, *out.glob("rollouts*.jsonl")]:
            if path.exists():
                path.unlink()
    with library_noise_to(out / LIBRARY_LOG):
        return _train(job, samples, rollout_policy, resume, console)


def _train(job: RLJobConfig, samples: Sequence[Sample] | None, rollout_policy: Policy | None, resume: str | None, console: Console | None) -> Path:
    out = Path(job.output_dir)
    trainer = build_trainer(job, samples, rollout_policy)
    line = show_progress(trainer, "RL", RL_FIGURES, console, job.optimizer_steps_per_rl_step())
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        line.close()
        trainer.close()
    final = out / FINAL_DIR
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        trainer.mini_tokenizer.save_pretrained(final)
        trainer.image_processor.save_pretrained(final)
        from mini_o3.models.episode_settings import write_episode_settings

        write_episode_settings(final, rl_episode_settings(job))
        plot_learning_curve(out / LOG_FILE, out / CURVE_FILE, CURVE_SERIES, "GRPO with over-turn masking" if job.overturn_mask else "GRPO, no over-turn masking")
        print(f"RL done in {time.perf_counter() - started:.1f} s; final checkpoint: {final}", flush=True)
    return final


def _trim_rollouts(path: Path, last_step: int) -> None:
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("meta", {}).get("rl_step", 0) <= last_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
