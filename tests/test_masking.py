"""The GRPO maths: advantages, over-turn and observation masks, the clipped loss, dynamic sampling."""

from __future__ import annotations

import math

import pytest
import torch

from mini_o3.train import masking
from mini_o3.agent.trajectory import Status


# ---------------------------------------------------------------- advantages


def test_advantages_match_hand_computed_groups() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    advantages = masking.group_advantages(rewards)
    # Group 1: mean 0.25, unbiased std sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5.
    assert advantages[0].tolist() == pytest.approx([0.75 / (0.5 + 1e-6)] + [-0.25 / (0.5 + 1e-6)] * 3)
    # Group 2: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 1 / sqrt(3).
    std = 1 / math.sqrt(3)
    assert advantages[1].tolist() == pytest.approx([0.5 / (std + 1e-6)] * 2 + [-0.5 / (std + 1e-6)] * 2)


def test_advantages_use_the_whole_group_including_over_turn_rollouts() -> None:
    # The over-turn rollout (reward 0) is part of the mean and the std even though it is masked.
    with_overturn = masking.group_advantages(torch.tensor([[1.0, 0.0, 0.0]]))
    without = masking.group_advantages(torch.tensor([[1.0, 0.0]]))
    assert with_overturn[0, 0] != pytest.approx(without[0, 0])
    assert with_overturn[0, 0].item() == pytest.approx((1 - 1 / 3) / (math.sqrt(1 / 3) + 1e-6))


def test_uniform_group_has_zero_advantages_and_lone_rollout_keeps_its_reward() -> None:
    assert masking.group_advantages(torch.ones(1, 4)).abs().max().item() == 0.0
    assert masking.group_advantages(torch.tensor([[1.0]])).item() == pytest.approx(1.0)


def test_advantages_reject_a_flat_reward_list() -> None:
    with pytest.raises(ValueError, match="groups, n"):
        masking.group_advantages(torch.tensor([1.0, 0.0]))


# ---------------------------------------------------------------- dynamic sampling


def test_dynamic_sampling_drops_exactly_the_uniform_groups() -> None:
    rewards = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # all wrong: dropped
            [1.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 1.0, 1.0],  # all right: dropped
            [0.5, 0.5 + 1e-6, 0.5, 0.5],  # agrees to within 1e-4: dropped
            [0.0, 1.0, 1.0, 1.0],
        ]
    )
    assert masking.uniform_groups(rewards).tolist() == [True, False, True, True, False]
    assert masking.keep_groups(rewards) == [1, 4]


# ---------------------------------------------------------------- masks


def test_rollout_weights_mask_truncated_rollouts_only_when_masking_is_on() -> None:
    statuses = [Status.ANSWERED, Status.OVER_TURN, Status.OVER_CONTEXT, Status.NO_ANSWER, Status.ERROR]
    assert masking.rollout_weights(statuses).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert masking.rollout_weights(statuses, overturn_mask=False).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert masking.rollout_weights(["answered", "over_turn"]).tolist() == [1.0, 0.0]


def test_a_void_truncated_rollout_is_trained_and_void_never_unmasks_an_error() -> None:
    statuses = [Status.OVER_TURN, Status.OVER_TURN, Status.OVER_CONTEXT, Status.ERROR, Status.ANSWERED]
    void = [True, False, True, True, False]
    assert masking.rollout_weights(statuses, void=void).tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert masking.rollout_weights(statuses, overturn_mask=False, void=void).tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="void has 1 flags for 5"):
        masking.rollout_weights(statuses, void=[True])


def test_ignored_rollouts_are_masked_whatever_their_status_and_masking() -> None:
    statuses = [Status.ANSWERED, Status.NO_ANSWER, Status.NO_ANSWER, Status.OVER_TURN, Status.ANSWERED]
    ignored = [False, True, False, True, True]
    for overturn_mask in (True, False):
        weights = masking.rollout_weights(statuses, overturn_mask, void=[False, False, False, True, False], ignored=ignored)
        assert weights.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="ignored has 2 flags for 5"):
        masking.rollout_weights(statuses, ignored=[True, False])


@pytest.mark.parametrize(
    ("text", "unclosed"),
    [
        ('<think>Left.</think><grounding>{"bbox_2d": [0.1, 0.2', True),  # cut by the token limit
        ("<think>Left.</think><grounding>", True),
        ('<think>x</think><grounding>{"bbox_2d": [0, 0, 1, 1], "source": "original_image"}</grounding>', False),
        ("<think>It is red.</think><answer>red</answer>", False),
        ("</grounding> then <grounding>{", True),  # a stray close before the open does not close it
        ("no action at all", False),
    ],
)
def test_unclosed_grounding(text: str, unclosed: bool) -> None:
    assert masking.unclosed_grounding(text) is unclosed


def test_loss_mask_combines_assistant_tokens_and_rollout_weights() -> None:
    assistant = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 1]])
    mask = masking.loss_mask(assistant, torch.tensor([1.0, 0.0]))
    assert mask.tolist() == [[1, 1, 0, 1], [0, 0, 0, 0]]


# ---------------------------------------------------------------- the loss and its gradient


class TableModel(torch.nn.Module):
    """A differentiable stand-in for a language model: one learned logit row per position."""

    def __init__(self, length: int, vocab: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.logits = torch.nn.Parameter(torch.randn(length, vocab, generator=generator))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logprobs = torch.log_softmax(self.logits, dim=-1)
        return logprobs.gather(1, tokens.T).T  # (rollouts, length)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 11, (4, 9), generator=generator)
    # Rollout 2 is over-turn; positions 3-5 of every rollout are an observation turn.
    assistant = torch.ones(4, 9)
    assistant[:, 3:6] = 0
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    statuses = [Status.ANSWERED, Status.ANSWERED, Status.OVER_TURN, Status.ANSWERED]
    return {"tokens": tokens, "assistant": assistant, "rewards": rewards, "statuses": statuses}


def _gradient(model: TableModel, batch: dict, overturn_mask: bool, old_shift: float = 0.05, aggregation: str = "rollout_token_mean") -> torch.Tensor:
    model.zero_grad()
    logprobs = model(batch["tokens"])
    old = logprobs.detach() - old_shift  # ratios slightly above 1, some clipped
    advantages = masking.group_advantages(batch["rewards"]).reshape(-1)
    mask = masking.loss_mask(batch["assistant"], masking.rollout_weights(batch["statuses"], overturn_mask))
    loss, _ = masking.clipped_token_loss(logprobs, old, advantages, mask, aggregation=aggregation)
    loss.backward()
    return model.logits.grad.clone()


@pytest.mark.parametrize("aggregation", masking.LOSS_AGGREGATIONS)
@pytest.mark.parametrize("replacement_seed", [1, 2, 3])
def test_over_turn_rollout_tokens_do_not_change_the_gradient_when_masked(replacement_seed: int, aggregation: str) -> None:
    model = TableModel(9, 11)
    batch = _batch()
    reference = _gradient(model, batch, overturn_mask=True, aggregation=aggregation)
    replaced = dict(batch)
    tokens = batch["tokens"].clone()
    tokens[2] = torch.randint(0, 11, (9,), generator=torch.Generator().manual_seed(replacement_seed))
    replaced["tokens"] = tokens
    assert torch.equal(_gradient(model, replaced, overturn_mask=True, aggregation=aggregation), reference)
    # Without masking the over-turn rollout is pushed down, so its tokens matter.
    assert not torch.allclose(
        _gradient(model, replaced, overturn_mask=False, aggregation=aggregation),
        _gradient(model, batch, overturn_mask=False, aggregation=aggregation),
    )


@pytest.mark.parametrize("aggregation", masking.LOSS_AGGREGATIONS)
def test_masking_off_changes_the_gradient(aggregation: str) -> None:
    model = TableModel(9, 11)
    batch = _batch()
    assert not torch.allclose(
        _gradient(model, batch, overturn_mask=True, aggregation=aggregation),
        _gradient(model, batch, overturn_mask=False, aggregation=aggregation),
    )


def test_observation_and_error_tokens_get_zero_gradient() -> None:
    batch = _batch()
    logprobs = torch.randn(4, 9, requires_grad=True)
    advantages = masking.group_advantages(batch["rewards"]).reshape(-1)
    mask = masking.loss_mask(batch["assistant"], masking.rollout_weights(batch["statuses"]))
    loss, _ = masking.clipped_token_loss(logprobs, logprobs.detach(), advantages, mask)
    loss.backward()
    assert torch.all(logprobs.grad[:, 3:6] == 0)
    assert torch.all(logprobs.grad[2] == 0)
    assert torch.all(logprobs.grad[[0, 1, 3]][:, [0, 1, 2, 6, 7, 8]] != 0)


def test_token_mean_is_one_mean_over_unmasked_tokens() -> None:
    logprobs = torch.zeros(2, 3)
    advantages = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, stats = masking.clipped_token_loss(logprobs, logprobs, advantages, mask, aggregation="token_mean")
    # Ratio 1 everywhere: per-token loss is -A; (-1 - 1 + 2) / 3 tokens.
    assert loss.item() == pytest.approx(0.0)
    assert stats.tokens == 3
    loss, _ = masking.clipped_token_loss(logprobs, logprobs, torch.tensor([1.0, 1.0]), mask, aggregation="token_mean")
    assert loss.item() == pytest.approx(-1.0)  # a token mean, not a mean of per-rollout means
    loss, _ = masking.clipped_token_loss(logprobs, logprobs, torch.tensor([1.0, 1.0]), mask, aggregation="token_mean", normaliser=6)
    assert loss.item() == pytest.approx(-0.5)


def test_rollout_token_mean_averages_rollout_means_and_counts_a_masked_rollout_as_zero() -> None:
    logprobs = torch.zeros(3, 3, requires_grad=True)
    advantages = torch.tensor([1.0, -2.0, 3.0])
    # Rollout 0 has 2 unmasked tokens, rollout 1 has 1, rollout 2 is masked (over-turn).
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss, stats = masking.clipped_token_loss(logprobs, logprobs.detach(), advantages, mask)
    # Ratio 1: per-token loss -A. Rollout means -1, 2 and 0 (masked); over 3 rollouts: 1/3.
    # (DAPO's token mean gives 0; renormalising over the 2 unmasked rollouts would give 1/2;
    # dividing by every token of a rollout, masked ones too, would give 0.)
    assert loss.item() == pytest.approx(1 / 3)
    assert stats.tokens == 3
    loss.backward()
    # d loss / d logprob = -A / (unmasked tokens of the rollout x rollouts).
    assert torch.allclose(logprobs.grad, torch.tensor([[-1 / 6, -1 / 6, 0.0], [2 / 3, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    # Split over micro-batches, each divides by the rollouts of the whole step: the sum is the same.
    whole, _ = masking.clipped_token_loss(logprobs, logprobs.detach(), advantages, mask, normaliser=6)
    parts = [
        masking.clipped_token_loss(logprobs[rows], logprobs[rows].detach(), advantages[rows], mask[rows], normaliser=6)[0]
        for rows in ([0], [1, 2])
    ]
    assert whole.item() == pytest.approx(1 / 6) and sum(part.item() for part in parts) == pytest.approx(1 / 6)


def test_rollout_token_mean_weighs_long_and_short_rollouts_alike() -> None:
    logprobs = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    released, _ = masking.clipped_token_loss(logprobs, logprobs, advantages, mask)
    dapo, _ = masking.clipped_token_loss(logprobs, logprobs, advantages, mask, aggregation="token_mean")
    assert released.item() == pytest.approx(0.0)  # (-1 + 1) / 2
    assert dapo.item() == pytest.approx(-3 / 5)  # (-4 + 1) / 5: the long rollout dominates


def test_unknown_aggregation_is_refused() -> None:
    with pytest.raises(ValueError, match="rollout_token_mean, token_mean"):
        masking.clipped_token_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), aggregation="seq_mean")


def test_clip_bounds_are_asymmetric() -> None:
    mask = torch.ones(1, 1)
    old = torch.zeros(1, 1)
    # Positive advantage: the ratio is capped at 1.3, so no gradient beyond it.
    high = torch.full((1, 1), math.log(1.5), requires_grad=True)
    loss, stats = masking.clipped_token_loss(high, old, torch.tensor([1.0]), mask)
    loss.backward()
    assert loss.item() == pytest.approx(-1.3)
    assert high.grad.item() == 0.0 and stats.clip_high_fraction == 1.0
    # Negative advantage: the ratio is floored at 0.8.
    low = torch.full((1, 1), math.log(0.5), requires_grad=True)
    loss, stats = masking.clipped_token_loss(low, old, torch.tensor([-1.0]), mask)
    loss.backward()
    assert loss.item() == pytest.approx(0.8)
    assert low.grad.item() == 0.0 and stats.clip_low_fraction == 1.0
    # Inside the band the gradient is -A * ratio.
    inside = torch.full((1, 1), math.log(1.1), requires_grad=True)
    loss, _ = masking.clipped_token_loss(inside, old, torch.tensor([2.0]), mask)
    loss.backward()
    assert inside.grad.item() == pytest.approx(-2.2)


def test_masked_garbage_does_not_poison_the_loss() -> None:
    logprobs = torch.tensor([[0.0, float("nan")]], requires_grad=True)
    loss, _ = masking.clipped_token_loss(logprobs, torch.zeros(1, 2), torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logprobs.grad).all()


def test_all_masked_batch_gives_a_zero_loss() -> None:
    logprobs = torch.zeros(2, 3, requires_grad=True)
    for aggregation in masking.LOSS_AGGREGATIONS:
        logprobs.grad = None
        loss, stats = masking.clipped_token_loss(logprobs, logprobs.detach(), torch.ones(2), torch.zeros(2, 3), aggregation=aggregation)
        loss.backward()
        assert loss.item() == 0.0 and stats.tokens == 0 and torch.all(logprobs.grad == 0)


def _ended(status: Status, text: str, finish: str = "stop") -> "Trajectory":
    from mini_o3.agent.trajectory import Trajectory, TurnRecord

    zoom = TurnRecord(text='<think>Cell 1.</think><grounding>{"bbox_2d": [0, 0, 0.5, 0.5], "source": "original_image"}</grounding>', kind="zoom")
    return Trajectory("s", "q", "x.png", (8, 8), status=status, turns=[zoom, TurnRecord(text=text, kind="none", finish_reason=finish)])


@pytest.mark.parametrize(
    ("status", "text", "finish", "void"),
    [
        (Status.ANSWERED, "<think>Found it.</think>\n<answer>red</answer>", "stop", False),
        (Status.ANSWERED, "<think>Found it.</think>\n<answer>red</answer> and more", "stop", True),  # the release's regex ends at </answer>
        (Status.ANSWERED, "<think>Found it.</think>\n<answer>red</answer>", "length", True),
        (Status.NO_ANSWER, "<think>", "stop", True),
        (Status.NO_ANSWER, '<think>original_image"}</grounding>', "stop", True),
        (Status.OVER_TURN, '<think>x</think><grounding>{"bbox_2d": [0, 0,', "length", True),
        (Status.OVER_TURN, '<think>x</think><grounding>{"bbox_2d": [0, 0, 1, 1]}</grounding>', "stop", False),
        (Status.ERROR, "<think>", "stop", False),
    ],
)
def test_ends_void_follows_the_released_engine(status: Status, text: str, finish: str, void: bool) -> None:
    from mini_o3.train.rollouts import ends_void

    assert ends_void(_ended(status, text, finish)) is void
