"""The GRPO maths of Mini-o3 as pure functions: advantages, masks, the clipped loss, dynamic sampling.

Follows shared/reference/mini-o3.md section 5:

- advantages are (r - mean) / (std + 1e-6) per group of n rollouts of one question, over the
  whole group, over-turn rollouts included. The std is the unbiased (Bessel-corrected) one, as
  verl computes it (`torch.std`, correction 1); a group of one gets mean 0 and std 1, as there;
- over-turn masking: every token of a truncated rollout (over_turn, over_context) is left out
  of the loss and of its normaliser, while its reward still counts in its group's statistics.
  Rollouts that could not run (status error) are always left out: their outcome is not the
  model's;
- only model-written tokens carry loss (the assistant mask from `train.tokenize`);
- the loss is PPO's clipped surrogate per token, with clip bounds low 0.2 / high 0.3, no KL
  term and no entropy bonus, summed over unmasked tokens and divided by their number: a token
  mean over the whole batch (DAPO), not a mean of per-rollout means;
- dynamic sampling drops groups whose rewards all agree (std < 1e-4): they carry no signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from mini_o3.agent.trajectory import Status

ADVANTAGE_EPS = 1e-6
"""Added to the group std before dividing (the reference's epsilon)."""
UNIFORM_STD = 1e-4
"""Groups whose reward std is below this are uniform and dropped by dynamic sampling."""


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


def rollout_weights(statuses: Iterable[Status | str], overturn_mask: bool = True) -> torch.Tensor:
    """1.0 for a rollout whose tokens carry loss, 0.0 for one masked out.

    With `overturn_mask` on, truncated rollouts (over_turn, over_context) are masked; error
    rollouts are masked either way.
    """
    weights = []
    for status in statuses:
        status = Status(status)
        masked = status is Status.ERROR or (overturn_mask and status.truncated)
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
    num_tokens: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """PPO's clipped surrogate, token level, normalised by the number of unmasked tokens.

    `logprobs` / `old_logprobs` / `mask` are (rollouts, tokens); `advantages` is (rollouts,) or
    (rollouts, tokens). The loss is sum(-min(r A, clip(r, 1 - low, 1 + high) A) * mask) divided
    by `num_tokens` (default: mask.sum(), at least 1). Pass the token count of the whole
    optimizer batch as `num_tokens` when one batch is split over gradient-accumulation steps,
    so that the summed micro-batch losses are the batch's token mean. No KL, no entropy term.
    """
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
    denominator = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=logprobs.dtype)
    denominator = torch.clamp(denominator.to(logprobs.device), min=1.0)
    loss = (per_token * mask).sum() / denominator
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
