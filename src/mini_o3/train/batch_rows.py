"""Rows of an RL batch: which rollouts carry loss, and the batch cut down to some of them.

A rollout whose loss mask is all zero (over-turn, void, ignored, or a filler group) adds
exactly nothing to the loss under either aggregation: the released one divides by a fixed
rollout count, DAPO's by the unmasked tokens of the whole step, and neither count depends on
which micro-batch holds what. So its forward and backward can be skipped, and with them the
old-log-prob recompute, without changing a gradient. Masked rollouts were 40-50% of the
demo's RL batches.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any, Sequence

import torch

ROW_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "loss_mask", "advantages", "mm_token_type_ids", "old_per_token_logps")
"""Tensors whose first dimension is the rollout."""


def live_rows(loss_mask: torch.Tensor) -> list[int]:
    """Indices of the rows with at least one token in the loss."""
    return torch.nonzero(loss_mask.sum(dim=1) > 0).flatten().tolist()


def select_rows(batch: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """`batch` with only `rows` (in that order): row tensors indexed, each row's images and pixel patches kept with it."""
    rows = list(rows)
    picked = dict(batch)
    index = torch.tensor(rows, dtype=torch.long)
    for key in ROW_KEYS:
        value = batch.get(key)
        if isinstance(value, torch.Tensor):
            picked[key] = value.index_select(0, index.to(value.device))
    num_images = batch.get("num_images")
    grids = batch.get("image_grid_thw")
    if num_images is not None:
        picked["num_images"] = [num_images[row] for row in rows]
    if num_images is not None and isinstance(grids, torch.Tensor) and batch.get("pixel_values") is not None:
        image_bounds = [0, *accumulate(num_images)]
        patches = grids.prod(-1).tolist()
        patch_bounds = [0, *accumulate(patches)]
        images = [image for row in rows for image in range(image_bounds[row], image_bounds[row + 1])]
        patch_index = [patch for image in images for patch in range(patch_bounds[image], patch_bounds[image + 1])]
        pixels = batch["pixel_values"]
        picked["image_grid_thw"] = grids.index_select(0, torch.tensor(images, dtype=torch.long, device=grids.device))
        picked["pixel_values"] = pixels.index_select(0, torch.tensor(patch_index, dtype=torch.long, device=pixels.device))
    return picked


def length_chunks(lengths: Sequence[int], rows: Sequence[int], size: int) -> list[list[int]]:
    """`rows` in chunks of at most `size`, shortest first, so that each chunk pads to little more than its own rows."""
    ordered = sorted(rows, key=lambda row: lengths[row])
    return [ordered[start : start + size] for start in range(0, len(ordered), max(size, 1))]
