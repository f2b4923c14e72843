"""Where an episode's crops went: repeated boxes and crops that hold the annotated target.

Pure geometry over a trajectory's views (boxes in original-image pixels, x1 and y1 exclusive)
and the sample's target boxes (V* side files, synthetic problems, generic `boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence

from mini_o3.agent.trajectory import Trajectory

Box = Sequence[float]

REPEAT_IOU = 0.9
"""A crop repeats an earlier view when their boxes overlap by at least this IoU."""
TARGET_COVER = 0.9
"""A crop holds a target when at least this share of the target's box lies inside it."""


def area(box: Box) -> float:
    """The area of an (x0, y0, x1, y1) box (0 when empty)."""
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def intersection(a: Box, b: Box) -> float:
    """The area two boxes share."""
    return area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: Box, b: Box) -> float:
    """Intersection over union (0 for two empty boxes)."""
    shared = intersection(a, b)
    union = area(a) + area(b) - shared
    return shared / union if union > 0 else 0.0


def covers(crop: Box, target: Box, share: float = TARGET_COVER) -> bool:
    """Whether at least `share` of `target` lies inside `crop`."""
    target_area = area(target)
    return target_area > 0 and intersection(crop, target) >= share * target_area


def repeated_crops(trajectory: Trajectory, threshold: float = REPEAT_IOU) -> int:
    """Crops whose box repeats one already seen in the episode (the original included: a whole-image crop repeats it)."""
    seen: list[Box] = []
    repeats = 0
    for view in trajectory.views:
        if view.index > 0 and any(iou(view.box, earlier) >= threshold for earlier in seen):
            repeats += 1
        seen.append(view.box)
    return repeats


def target_boxes(trajectory: Trajectory) -> list[tuple[float, float, float, float]]:
    """The annotated target boxes the runner recorded in `meta["target_boxes"]` (empty when the data has none)."""
    return [tuple(float(value) for value in box) for box in trajectory.meta.get("target_boxes") or []]  # type: ignore[misc]


def crops_on_target(trajectory: Trajectory, share: float = TARGET_COVER) -> int | None:
    """Crops that hold at least one annotated target; None when the sample has no boxes."""
    targets = target_boxes(trajectory)
    if not targets:
        return None
    return sum(1 for view in trajectory.views[1:] if any(covers(view.box, target, share) for target in targets))
