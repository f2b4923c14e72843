"""Cutting an RL batch down to the rollouts that carry loss: each row keeps its own tokens, images and pixels."""

import torch

from mini_o3.train.batch_rows import length_chunks, live_rows, select_rows


def _batch() -> dict:
    # Three rollouts with 2, 0 and 1 images of different grids; every pixel row holds its image's number.
    grids = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 4, 4]])
    pixels = torch.cat([torch.full((int(grid.prod()), 3), float(image)) for image, grid in enumerate(grids)])
    return {
        "prompt_ids": torch.tensor([[0, 1], [0, 2], [3, 4]]),
        "prompt_mask": torch.tensor([[0, 1], [0, 1], [1, 1]]),
        "completion_ids": torch.tensor([[5, 6, 0], [7, 0, 0], [8, 9, 10]]),
        "completion_mask": torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]]),
        "loss_mask": torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]),
        "advantages": torch.tensor([1.0, -1.0, 0.5]),
        "mm_token_type_ids": torch.zeros(3, 5, dtype=torch.long),
        "pixel_values": pixels,
        "image_grid_thw": grids,
        "num_images": [2, 0, 1],
        "num_items_in_batch": torch.tensor(5.0),
    }


def test_rows_with_loss_are_found() -> None:
    assert live_rows(_batch()["loss_mask"]) == [0, 2]
    assert live_rows(torch.zeros(2, 4)) == []


def test_selected_rows_keep_their_own_images_and_pixels_in_order() -> None:
    batch = _batch()
    picked = select_rows(batch, [2, 0])
    assert picked["completion_ids"].tolist() == [[8, 9, 10], [5, 6, 0]]
    assert picked["advantages"].tolist() == [0.5, 1.0]
    assert picked["num_images"] == [1, 2]
    assert picked["image_grid_thw"].tolist() == [[1, 4, 4], [1, 2, 2], [1, 2, 4]]
    # Row 2's image (16 patches of 2), then row 0's two images (4 of 0, 8 of 1).
    assert picked["pixel_values"][:, 0].tolist() == [2.0] * 16 + [0.0] * 4 + [1.0] * 8
    assert picked["num_items_in_batch"] is batch["num_items_in_batch"]
    assert batch["advantages"].tolist() == [1.0, -1.0, 0.5]  # the input is left as it was


def test_a_row_without_images_selects_no_pixels() -> None:
    picked = select_rows(_batch(), [1])
    assert picked["num_images"] == [0]
    assert picked["pixel_values"].shape == (0, 3)
    assert picked["image_grid_thw"].shape == (0, 3)


def test_chunks_group_rows_of_similar_length() -> None:
    lengths = [90, 10, 50, 20, 80]
    assert length_chunks(lengths, [0, 1, 2, 3, 4], 2) == [[1, 3], [2, 4], [0]]
    assert length_chunks(lengths, [0, 2], 4) == [[2, 0]]
    assert length_chunks(lengths, [], 4) == []
