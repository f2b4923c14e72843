"""What RL rollouts are made of: the episode settings, the reward, scored groups and their figures."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mini_o3.agent import protocol
from mini_o3.agent.loop import Episode, EpisodeConfig
from mini_o3.agent.policy import Generation, Policy, PolicyError, SamplingParams
from mini_o3.agent.sample import Sample
from mini_o3.agent.trajectory import Status, Trajectory
from mini_o3.eval.scoring import score_trajectory
from mini_o3.train.config import RLJobConfig
from mini_o3.train.masking import unclosed_grounding
from mini_o3.train.progress import host_rss_mb

PLACEHOLDER_TOKENS = ("<|image_pad|>", "<|video_pad|>")
"""Vision placeholders a policy must never write: each stands for image features the turn does not have."""


def episode_config(job: RLJobConfig) -> EpisodeConfig:
    """The episode settings of RL rollouts: training limits, sampling and image sizes from the job."""
    return EpisodeConfig.from_settings(
        job.max_turns, job.max_images, job.max_context_tokens, job.context_reserve, job.numbering,
        job.temperature, job.top_p, job.max_new_tokens, job.image_max_pixels, job.image_min_pixels,
    )


class Rewarder:
    """Reward 1.0 for a correct answer by the rules (or, failing them, by the optional judge), else 0.0.

    A judge call that fails gives None (no reward): the trainer drops the rollout's group, as the
    release does, or scores it 0 when `drop_failed_groups` is off.
    """

    def __init__(self, judge_url: str | None = None, judge_model: str | None = None, cache_path: Path | None = None) -> None:
        self.judge = None
        self.judge_failures = 0
        if judge_url:
            if not judge_model:
                raise ValueError("judge_url needs judge_model (the judge's model name)")
            from mini_o3.eval.judge import JudgeConfig, LLMJudge

            self.judge = LLMJudge(JudgeConfig(base_url=judge_url, model=judge_model, cache_path=cache_path))

    def __call__(self, trajectory: Trajectory) -> float | None:
        """The reward of a finished trajectory; None when the judge was needed and failed."""
        if trajectory.answer is None:
            return 0.0
        if score_trajectory(trajectory).correct:
            return 1.0
        if self.judge is None:
            return 0.0
        from mini_o3.eval.judge import JudgeError

        try:
            return 1.0 if self.judge.judge(trajectory.question, trajectory.ground_truth, trajectory.answer).correct else 0.0
        except JudgeError:
            self.judge_failures += 1
            return None


class PlaceholderGuard:
    """Wraps a policy: a turn holding a vision placeholder token fails its episode (status error).

    A sampled `<|image_pad|>` would stand for image features the conversation does not have, so
    the training forward could not line images up with their pads; failing the episode keeps
    the RL step alive (the group is then dropped like any failed rollout's). `bind` and other
    attributes pass through to the inner policy.
    """

    def __init__(self, inner: Policy, token_ids: set[int], tokens: Sequence[str] = PLACEHOLDER_TOKENS) -> None:
        self.inner = inner
        self.token_ids = set(token_ids)
        self.tokens = tuple(tokens)

    def bind(self, sample: Sample, run: int = 0) -> "PlaceholderGuard":
        """The guard of one episode (binding the inner policy when it binds)."""
        inner = self.inner.bind(sample, run=run) if hasattr(self.inner, "bind") else self.inner
        return PlaceholderGuard(inner, self.token_ids, self.tokens)

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """The inner policy's turn, or PolicyError when it holds a placeholder."""
        generation = self.inner.generate(messages, sampling)
        sampled = self.token_ids.intersection(generation.token_ids or ())
        written = [token for token in self.tokens if token in generation.text]
        if sampled or written:
            raise PolicyError(
                f"the policy wrote a vision placeholder ({', '.join(written) or 'token ids ' + str(sorted(sampled))}) "
                "inside a turn; the episode cannot be trained on"
            )
        return generation

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def is_void(trajectory: Trajectory) -> bool:
    """True for a truncated rollout whose last turn is an unclosed `<grounding>` (the release's "void")."""
    return trajectory.status.truncated and bool(trajectory.turns) and unclosed_grounding(trajectory.turns[-1].text)


def ends_void(trajectory: Trajectory) -> bool:
    """True for a rollout the release calls void: its last turn made no closed `<grounding>` call and
    was cut by the token limit or does not end with a complete `<answer>...</answer>` (its engine,
    `vllm_async_engine.py:727-731` at 8654dbf); a truncated rollout cut inside `<grounding>` too."""
    if not trajectory.turns or trajectory.status is Status.ERROR:
        return False
    if is_void(trajectory):
        return True
    if trajectory.status.truncated:
        return False
    last = trajectory.turns[-1]
    text = last.text.rstrip()
    return last.finish_reason == "length" or not (text.endswith(protocol.ANSWER_CLOSE) and protocol.ANSWER_OPEN in text)


def mini_o3_correctness(prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
    """TRL's reward-function slot; rewards are computed on whole episodes by `Rewarder` instead."""
    raise RuntimeError("MiniO3GRPOTrainer scores episodes itself; this reward function is never called")


@dataclass
class RolloutGroup:
    """The n rollouts of one question, scored (None: the judge failed)."""

    sample_index: int
    episodes: list[Episode]
    rewards: list[float | None]

    @property
    def usable(self) -> bool:
        """False when an episode never showed the image (it cannot be encoded)."""
        return all(episode.views for episode in self.episodes)

    @property
    def failed(self) -> bool:
        """True when a rollout's policy failed (status error) or its judge call did."""
        return any(reward is None for reward in self.rewards) or any(
            episode.trajectory.status is Status.ERROR for episode in self.episodes
        )

    @property
    def scores(self) -> list[float]:
        """The rewards with a failed judge call scored 0."""
        return [0.0 if reward is None else reward for reward in self.rewards]


def rollout_stats(
    sampled: Sequence[RolloutGroup], kept: int, filled: int, rounds: int, max_turns: int, failed: int = 0
) -> dict[str, float]:
    """Per-step rollout figures: reward, accuracy, how episodes ended, turn counts, dynamic sampling."""
    episodes = [episode for group in sampled for episode in group.episodes]
    rewards = [reward for group in sampled for reward in group.scores]
    statuses = Counter(episode.trajectory.status for episode in episodes)
    turns = Counter(episode.trajectory.num_turns for episode in episodes)
    total = max(len(episodes), 1)
    stats = {
        "reward": sum(rewards) / max(len(rewards), 1),
        "rollouts/accuracy": sum(1 for reward in rewards if reward > 0.5) / total,
        "rollouts/over_turn_share": sum(count for status, count in statuses.items() if status.truncated) / total,
        "rollouts/answered_share": statuses[Status.ANSWERED] / total,
        "rollouts/no_answer_share": statuses[Status.NO_ANSWER] / total,
        "rollouts/error_share": statuses[Status.ERROR] / total,
        "rollouts/void_share": sum(1 for episode in episodes if is_void(episode.trajectory)) / total,
        "rollouts/ended_void_share": sum(1 for episode in episodes if ends_void(episode.trajectory)) / total,
        "rollouts/turns_mean": sum(count * number for count, number in turns.items()) / total,
        "rollouts/count": float(len(episodes)),
        "groups/sampled": float(len(sampled)),
        "groups/kept": float(kept),
        "groups/kept_share": kept / max(kept + filled, 1),
        "groups/filled_masked": float(filled),
        "groups/failed": float(failed),
        "groups/sampling_rounds": float(rounds),
        "host_rss_mb": host_rss_mb(),
    }
    for count in range(1, max_turns + 1):
        stats[f"turns/{count}"] = turns[count] / total
    return stats
