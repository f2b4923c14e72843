"""What a problem measures and whether it is accepted: figures, oracle zooms, overlaps, `check_problem`.

Legibility, zooms and levels are defined in `mini_o3.data.problems`; every figure here is
measured on the scene, never taken from the generator's intentions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from mini_o3.data.problems import LEGIBLE_PX, LEVELS, AmbiguousError, GridConfig, Problem, Query, Resolution, _inside, _intersects, resolve
from mini_o3.data.scene import Box, Scene, feature_px
from mini_o3.agent.images import ResizePolicy, target_size

# ---------------------------------------------------------------- measured figures


def shown_scale(width: int, height: int, policy: ResizePolicy) -> float:
    """How much of the original's resolution a view of `width` x `height` keeps (at most 1)."""
    shown_w, shown_h = target_size(max(1, width), max(1, height), policy)
    return min(1.0, shown_w / max(1, width), shown_h / max(1, height))


def oracle_zooms(width: int, height: int, focus: Box, needed_scale: float, policy: ResizePolicy, zoom_cap: float = 2.0) -> int | None:
    """Nested zooms onto `focus` until the view reaches `needed_scale`; None if no zoom gets there."""
    x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    focus_w, focus_h = 1.25 * (focus[2] - focus[0]), 1.25 * (focus[3] - focus[1])
    cx, cy = (focus[0] + focus[2]) / 2, (focus[1] + focus[3]) / 2
    scale, zooms = shown_scale(width, height, policy), 0
    while scale < needed_scale:
        view_w, view_h = x1 - x0, y1 - y0
        crop_w, crop_h = min(view_w, max(view_w / zoom_cap, focus_w)), min(view_h, max(view_h / zoom_cap, focus_h))
        if crop_w >= view_w - 0.5 and crop_h >= view_h - 0.5:
            return None
        x0, y0 = min(max(cx - crop_w / 2, x0), x1 - crop_w), min(max(cy - crop_h / 2, y0), y1 - crop_h)
        x1, y1 = x0 + crop_w, y0 + crop_h
        scale, zooms = shown_scale(int(crop_w), int(crop_h), policy), zooms + 1
    return zooms


@dataclass
class Figures:
    """The measured difficulty of one problem (written per record under meta.figures)."""

    target_side_fraction: float
    """The answer's object's side / the image's long side (counting: the counted objects')."""
    target_area_fraction: float
    """The answer's object's box area / the image's area."""
    near_distractors: int
    """Objects failing exactly one predicate of the description."""
    objects: int
    """Objects in the scene."""
    first_view_scale: float
    """Shown size / original size of the first view."""
    needed_scale: float
    """The scale at which every needed attribute is legible."""
    magnification_needed: float
    """needed_scale / first_view_scale."""
    limiting: str
    """The attribute that sets needed_scale."""
    limiting_px: float
    """That attribute's feature size in original pixels."""
    first_view_px: float
    """That feature's size at the first view."""
    legible_first_view: bool
    """needed_scale <= first_view_scale."""
    legible_full_resolution: bool
    """needed_scale <= 1."""
    zooms_needed: int | None
    """Oracle zooms (None when even full resolution is not enough)."""
    zoom_cap: float
    """The oracle's largest magnification per zoom."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, floats rounded to 6 significant digits."""
        return {key: float(f"{value:.6g}") if isinstance(value, float) else value for key, value in asdict(self).items()}


def near_distractors(scene: Scene, query: Query, referents: Iterable[int]) -> list[tuple[int, str]]:
    """Objects failing exactly one predicate of the description, with that predicate ("frame" for the region)."""
    if query.kind == "grid":
        return []
    skip, out = set(referents), []
    for index, obj in enumerate(scene.objects):
        if index in skip:
            continue
        failed = [name for name, value in query.describe.items() if obj.attribute(name) != value]
        if query.frame is not None and not _inside(obj.box, scene.frames[query.frame].inner):
            failed.append("frame")
        if len(failed) == 1:
            out.append((index, failed[0]))
    return out


def measure(scene: Scene, query: Query, resolution: Resolution, policy: ResizePolicy, zoom_cap: float) -> Figures:
    """The figures of a resolved problem."""
    objects = scene.objects
    needed, limiting, limiting_px = 0.0, "", 0.0
    for index, needs in zip(resolution.referents, resolution.needs):
        features = feature_px(objects[index])
        for name in sorted(needs):
            size = features[name]
            required = math.inf if size <= 0 else LEGIBLE_PX[name] / size
            if required > needed:
                needed, limiting, limiting_px = required, name, size
    first = shown_scale(scene.width, scene.height, policy)
    answer_index = resolution.answer_object if resolution.answer_object is not None else resolution.referents[0]
    answer_obj = objects[answer_index]
    if query.kind == "count" and query.frame is not None:
        focus = scene.frames[query.frame].box
    else:
        boxes = [objects[i].box for i in resolution.referents]
        focus = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    return Figures(
        target_side_fraction=answer_obj.side / max(scene.width, scene.height),
        target_area_fraction=answer_obj.side**2 / (scene.width * scene.height),
        near_distractors=len(near_distractors(scene, query, resolution.referents)),
        objects=len(objects),
        first_view_scale=first,
        needed_scale=needed,
        magnification_needed=needed / first,
        limiting=limiting,
        limiting_px=limiting_px,
        first_view_px=limiting_px * first,
        legible_first_view=needed <= first,
        legible_full_resolution=needed <= 1.0,
        zooms_needed=oracle_zooms(scene.width, scene.height, focus, needed, policy, zoom_cap) if needed <= 1.0 else None,
        zoom_cap=zoom_cap,
    )


# ---------------------------------------------------------------- checks


def overlaps(scene: Scene) -> list[str]:
    """What hides what: objects that overlap, cross a frame's outline or leave the image."""
    problems = []
    if scene.objects:
        boxes = np.array([obj.box for obj in scene.objects], dtype=np.int64)
        hit = (
            (boxes[:, None, 0] < boxes[None, :, 2])
            & (boxes[None, :, 0] < boxes[:, None, 2])
            & (boxes[:, None, 1] < boxes[None, :, 3])
            & (boxes[None, :, 1] < boxes[:, None, 3])
        )
        np.fill_diagonal(hit, False)
        pairs = np.argwhere(np.triu(hit))
        problems += [f"objects {a} and {b} overlap" for a, b in pairs[:5].tolist()]
        outside = np.flatnonzero((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > scene.width) | (boxes[:, 3] > scene.height))
        problems += [f"object {i} leaves the image" for i in outside[:5].tolist()]
    for f, frame in enumerate(scene.frames):
        for i, obj in enumerate(scene.objects):
            if _intersects(obj.box, frame.box) and not _inside(obj.box, frame.inner):
                problems.append(f"object {i} crosses frame {f}'s outline")
    return problems


def check_problem(problem: Problem, policy: ResizePolicy = ResizePolicy(), zoom_cap: float = 2.0) -> tuple[list[str], Figures | None]:
    """Rejection reasons for a problem (empty when it is good) and its figures.

    Reasons: overlap, ambiguous (the description fits no or several objects, or the answer
    is not the one the scene gives), ambiguous_options (not exactly one right option),
    illegible_at_full_resolution, distractor_illegible_at_full_resolution (what sets a
    near-identical distractor apart cannot be seen), legible_at_first_view (medium and hard),
    magnification_out_of_range, distractors_out_of_range, grid_not_hidden, grid_not_salient.
    """
    reasons = []
    if overlaps(problem.scene):
        reasons.append("overlap")
    try:
        resolution = resolve(problem.scene, problem.query)
    except AmbiguousError:
        return reasons + ["ambiguous"], None
    if resolution.answer != problem.answer:
        reasons.append("ambiguous")
    if problem.options and sum(text == resolution.answer for text in problem.options.values()) != 1:
        reasons.append("ambiguous_options")
    figures = measure(problem.scene, problem.query, resolution, policy, zoom_cap)
    if not figures.legible_full_resolution:
        reasons.append("illegible_at_full_resolution")
    for index, name in near_distractors(problem.scene, problem.query, resolution.referents):
        # A near-identical distractor must be ruled out by looking: what sets it apart must be legible.
        if name != "frame" and feature_px(problem.scene.objects[index])[name] < LEGIBLE_PX[name]:
            reasons.append("distractor_illegible_at_full_resolution")
            break
    spec = LEVELS.get(problem.level)
    if spec is not None:
        if spec.illegible_first_view and figures.legible_first_view:
            reasons.append("legible_at_first_view")
        low, high = spec.magnification
        if not low <= figures.magnification_needed <= high:
            reasons.append("magnification_out_of_range")
        if not spec.near_distractors[0] <= figures.near_distractors <= spec.near_distractors[1]:
            reasons.append("distractors_out_of_range")
    grid = problem.extra.get("grid_config")
    if isinstance(grid, GridConfig) and resolution.answer_object is not None:
        side = problem.scene.objects[resolution.answer_object].side
        if grid.first_view_max_px is not None and side * figures.first_view_scale > grid.first_view_max_px:
            reasons.append("grid_not_hidden")
        cell = problem.extra["cell_box"]
        if not _inside(problem.scene.objects[resolution.answer_object].box, tuple(cell)):
            reasons.append("overlap")
        zoomed = side * shown_scale(cell[2] - cell[0], cell[3] - cell[1], policy)
        if grid.zoomed_min_px is not None and zoomed < grid.zoomed_min_px:
            reasons.append("grid_not_salient")
    return reasons, figures


__all__ = [
    "Figures",
    "check_problem",
    "measure",
    "near_distractors",
    "oracle_zooms",
    "overlaps",
    "shown_scale",
]
