"""The GRPO maths of Mini-o3 as pure functions: advantages, masks, the clipped loss, dynamic sampling.

Follows shared/reference/mini-o3.md section 5 and the released code (Mini-o3/Mini-o3, its verl fork):

- advantages are (r - mean) / (std + 1e-6) per group of n rollouts of one question, over the
  whole group, over-turn rollouts included. The std is the unbiased (Bessel-corrected) one, as
  verl computes it (`torch.std`, correction 1); a group of one gets mean 0 and std 1, as there;
- over-turn masking: every token of a truncated rollout (over_turn, over_context) is left out
  of the loss, while its reward still counts in its group's statistics. A truncated rollout
  whose last turn opened `<grounding>` and never closed it is "void", not over-turn, in the
  release (its grounding pattern needs the closing tag): reward 0 and trained. Rollouts that
  could not run (status error) are always left out: their outcome is not the model's;
- only model-written tokens carry loss (the assistant mask from `train.tokenize`);
- the loss is PPO's clipped surrogate per token, with clip bounds low 0.2 / high 0.3, no KL
  term and no entropy bonus, aggregated one of two ways (`LOSS_AGGREGATIONS`):
  "rollout_token_mean", the released run's: each rollout's token mean, averaged over every
  rollout of the optimizer step, a masked rollout counting as a zero (verl's `token-mean` inside
  micro-batches of one rollout, divided by the fixed accumulation count), so masking shrinks
  the step and long rollouts weigh as much as short ones; or "token_mean", DAPO's: one token
  mean over the unmasked tokens of the whole step, so masking re-weights what is left;
- dynamic sampling drops groups whose rewards all agree (std < 1e-4): they carry no signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from mini_o3.agent import protocol
from mini_o3.agent.trajectory import Status

ADVANTAGE_EPS = 1e-6
"""Added to the group std before dividing (the reference's epsilon)."""
UNIFORM_STD = 1e-4
"""Groups whose reward std is below this are uniform and dropped by dynamic sampling."""
ROLLOUT_TOKEN_MEAN = "rollout_token_mean"
"""The released objective: the mean over rollouts of each rollout's token mean (masked rollouts count as 0)."""
TOKEN_MEAN = "token_mean"
"""DAPO's objective: one token mean over the unmasked tokens of the step."""
LOSS_AGGREGATIONS = (ROLLOUT_TOKEN_MEAN, TOKEN_MEAN)
"""The loss aggregations `clipped_token_loss` knows."""


def group_std(rewards: torch.Tensor) -> torch.Tensor:
    """Unbiased std of each row of a (groups, n) reward tensor; 0 for groups of one."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be shaped (groups, n), got {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        return torch.zeros(rewards.shape[0])
    return rewards.std(dim=1, correction=1)


def group_advantages(rewards: torch.Tensor, eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """GRPO advantages (r - group mean) / (group std + eps) for a (groups, n) reward tensor."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.ndim != 2 or rewards.shape[1] < 1:
        raise ValueError(f"rewards must be shaped (groups, n) with n >= 1, got {tuple(rewards.shape)}")
    if rewards.shape[1] == 1:
        # verl's convention for a lone rollout: mean 0, std 1, so the advantage is the reward.
        return rewards / (1.0 + eps)
    mean = rewards.mean(dim=1, keepdim=True)
    std = group_std(rewards).unsqueeze(1)
    return (rewards - mean) / (std + eps)


def uniform_groups(rewards: torch.Tensor, threshold: float = UNIFORM_STD) -> torch.Tensor:
    """A bool per group: True where every reward in the group agrees (std below `threshold`)."""
    return group_std(rewards) < threshold


def keep_groups(rewards: torch.Tensor, threshold: float = UNIFORM_STD) -> list[int]:
    """Indices of the groups dynamic sampling keeps (those whose rewards disagree)."""
    return [index for index, uniform in enumerate(uniform_groups(rewards, threshold).tolist()) if not uniform]


def unclosed_grounding(text: str) -> bool:
    """True when a turn opens `<grounding>` and never closes it (cut by the token limit, or ended early)."""
    at = text.find(protocol.GROUNDING_OPEN)
    return at >= 0 and protocol.STOP_STRING not in text[at:]


def rollout_weights(
    statuses: Iterable[Status | str],
    overturn_mask: bool = True,
    void: Iterable[bool] | None = None,
    ignored: Iterable[bool] | None = None,
) -> torch.Tensor:
    """1.0 for a rollout whose tokens carry loss, 0.0 for one masked out.

    With `overturn_mask` on, truncated rollouts (over_turn, over_context) are masked, except
    those `void` marks (last turn an unclosed `<grounding>`: trained with reward 0, as the
    release). Rollouts `ignored` marks are masked whatever their status (the release's
    `ignore_void`). Error rollouts are masked either way.
    """
    statuses = [Status(status) for status in statuses]
    voids = [False] * len(statuses) if void is None else [bool(flag) for flag in void]
    skips = [False] * len(statuses) if ignored is None else [bool(flag) for flag in ignored]
    if len(voids) != len(statuses):
        raise ValueError(f"void has {len(voids)} flags for {len(statuses)} rollouts")
    if len(skips) != len(statuses):
        raise ValueError(f"ignored has {len(skips)} flags for {len(statuses)} rollouts")
    weights = []
    for status, is_void, skip in zip(statuses, voids, skips):
        masked = skip or status is Status.ERROR or (overturn_mask and status.truncated and not is_void)
        weights.append(0.0 if masked else 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def loss_mask(assistant_mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The per-token loss mask: model-written tokens (assistant mask) of rollouts that carry loss."""
    assistant_mask = torch.as_tensor(assistant_mask)
    weights = torch.as_tensor(weights, dtype=torch.float32, device=assistant_mask.device)
    if assistant_mask.ndim != 2 or weights.shape != (assistant_mask.shape[0],):
        raise ValueError(
            f"assistant_mask must be (rollouts, tokens) and weights (rollouts,), got {tuple(assistant_mask.shape)} "
            f"and {tuple(weights.shape)}"
        )
    return assistant_mask.float() * weights.unsqueeze(1)


@dataclass
class LossStats:
    """Diagnostics of one loss evaluation (plain floats, detached)."""

    tokens: float
    """Unmasked tokens in this batch."""
    clip_low_fraction: float
    """Share of unmasked tokens clipped at 1 - clip_low with a negative advantage."""
    clip_high_fraction: float
    """Share of unmasked tokens clipped at 1 + clip_high with a positive advantage."""
    mean_ratio: float
    """Mean importance ratio over unmasked tokens."""


def clipped_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    aggregation: str = ROLLOUT_TOKEN_MEAN,
    normaliser: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """PPO's clipped surrogate per token, aggregated as `aggregation` says.

    `logprobs` / `old_logprobs` / `mask` are (rollouts, tokens); `advantages` is (rollouts,) or
    (rollouts, tokens). Per token the loss is -min(r A, clip(r, 1 - low, 1 + high) A); no KL,
    no entropy term.

    - "rollout_token_mean": each rollout's sum over its unmasked tokens divided by their number
      (0 for a rollout with none), summed over rollouts and divided by `normaliser` (default:
      the rollouts here). When one optimizer step is split into micro-batches, pass the
      rollouts of the whole step, so that the summed micro-batch losses are its mean.
    - "token_mean": the sum over unmasked tokens divided by `normaliser` (default: their number,
      at least 1). When split, pass the unmasked tokens of the whole step.
    """
    if aggregation not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape"
        )
    if advantages.ndim == 1:
        advantages = advantages.unsqueeze(1)
    mask = mask.to(logprobs.dtype)
    # Masked positions may hold anything (padding, NaN from an unscored token): zeroing the log
    # ratio there before exp() keeps it out of both the value and the gradient.
    log_ratio = torch.where(mask > 0, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)
    if aggregation == ROLLOUT_TOKEN_MEAN:
        per_rollout = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        total = per_rollout.sum()
        default = float(mask.shape[0])
    else:
        total = (per_token * mask).sum()
        default = mask.sum()
    denominator = torch.as_tensor(default if normaliser is None else normaliser, dtype=logprobs.dtype)
    loss = total / torch.clamp(denominator.to(logprobs.device), min=1.0)
    with torch.no_grad():
        count = float(mask.sum())
        low = ((ratio < 1.0 - clip_low) & (advantages < 0)).to(mask.dtype)
        high = ((ratio > 1.0 + clip_high) & (advantages > 0)).to(mask.dtype)
        stats = LossStats(
            tokens=count,
            clip_low_fraction=float((low * mask).sum()) / max(count, 1.0),
            clip_high_fraction=float((high * mask).sum()) / max(count, 1.0),
            mean_ratio=float((ratio * mask).sum()) / max(count, 1.0),
        )
    return loss, stats
