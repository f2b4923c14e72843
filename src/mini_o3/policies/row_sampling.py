"""Per-row sampling for a batch of independent requests: one vectorised draw, each row by its own settings.

A row samples by inverse CDF from its own stream of uniforms, drawn up front from a generator
seeded with the request's seed. Row r's token then depends only on its logits and its own
uniforms, never on which rows share the batch, so a seeded request gives the same tokens alone
or batched, in either of LocalPolicy's engines.
"""

from __future__ import annotations

from typing import Sequence

import torch


def draw_uniforms(seed: int, count: int) -> torch.Tensor:
    """`count` uniforms in (0, 1] from a generator seeded with `seed` (one per token a request may write)."""
    generator = torch.Generator().manual_seed(seed)
    return 1.0 - torch.rand(count, generator=generator, dtype=torch.float64)


def choose_tokens(
    logits: torch.Tensor,
    suppressed: Sequence[int],
    temperatures: Sequence[float],
    top_ps: Sequence[float],
    uniforms: torch.Tensor,
) -> tuple[list[int], list[float]]:
    """Each row's next token and its raw log-probability.

    `logits` (rows, vocab) are the model's; `suppressed` tokens are never chosen; a row with
    temperature 0 takes the argmax, else samples from softmax(logits / temperature) cut to its
    top-p nucleus, with `uniforms[row]` (in (0, 1]) as its draw. The log-probability is the raw
    model's (log-softmax at temperature 1, before suppression), what a GRPO ratio compares.
    """
    raw = logits.float()
    logprobs = torch.log_softmax(raw, dim=-1)
    masked = raw.clone()
    masked[:, list(suppressed)] = float("-inf")
    chosen = masked.argmax(dim=-1)
    sampled = [row for row, temperature in enumerate(temperatures) if temperature > 0]
    if sampled:
        index = torch.tensor(sampled)
        scale = torch.tensor([temperatures[row] for row in sampled], dtype=torch.float32)[:, None]
        probs = torch.softmax(masked[index] / scale, dim=-1)
        cut = [position for position, row in enumerate(sampled) if top_ps[row] < 1.0]
        if cut:
            rows = torch.tensor(cut)
            top_p = torch.tensor([top_ps[sampled[position]] for position in cut], dtype=torch.float32)[:, None]
            sorted_probs, order = probs[rows].sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(dim=-1) - sorted_probs
            sorted_probs[before >= top_p] = 0.0
            probs[rows] = torch.zeros_like(sorted_probs).scatter_(1, order, sorted_probs)
        cdf = probs.double().cumsum(dim=-1)
        target = uniforms.double()[index][:, None] * cdf[:, -1:]
        drawn = torch.searchsorted(cdf, target).clamp_(max=cdf.shape[1] - 1)[:, 0]
        chosen[index] = drawn
    picked = logprobs.gather(1, chosen[:, None])[:, 0]
    return chosen.tolist(), picked.tolist()
