"""VisualProbe-style problems from procedural scenes: questions, levels, checks, and writing a set.

A problem is a scene (`mini_o3.data.scene`) plus a `Query`: a description of one object (or a
set of objects) by its attributes, optionally inside a named frame or beside another object,
and the attribute asked. Every check reads the scene, never the generator's intentions:
`resolve` finds what the query refers to and recomputes the answer, and `check_problem`
rejects a problem whose answer is not unique, whose objects overlap, or whose figures miss
the level.

Legibility (measured, per attribute). An attribute is legible in a view when the feature
that shows it is at least `LEGIBLE_PX` pixels in that view: a label's ink height >= 8 px, a
pattern's repeat length >= 4 px, a shape's side >= 12 px, a colour's side >= 3 px. Feature
sizes come from the drawn layout (the label's ink box from the font itself). A view shows
the original at `scale` = shown size / original size (the first view under
`images.target_size` with the default ResizePolicy, 2M pixels; a crop at most 1.0, since
upscaling adds nothing). A question needs some attributes of some objects (the description
of its referent and the asked attribute); its `needed_scale` is the largest
LEGIBLE_PX[a] / feature_px[a] over them. Legible at the first view: needed_scale <= first
view scale; legible at full resolution: needed_scale <= 1.

Zooms an oracle needs: starting from the whole image, each zoom keeps a crop at least
1/zoom_cap (default 1/2) of the current view's width and height, centred on what the question
refers to and at least 1.25x its box; zooms are counted until the shown crop reaches
needed_scale. With the 2x cap a 4096 px square needs 1 zoom for a magnification up to 2, and
2 zooms beyond that (up to 2.9, where full resolution is reached).

Levels are ranges of measured figures (`LEVELS`): magnification needed (needed_scale /
first-view scale), near-identical distractors (objects that fail exactly one predicate of
the description, such as one attribute or being outside the frame), and whether the first
view must be illegible. Medium and hard are illegible at the first view by construction and
by check. Problems outside their level's ranges are rejected and regenerated.

A set on disk (`synthesize`): DIR/synth_config.json (what made it), DIR/images/*.jpg,
DIR/records/NNNNNN.json (one record each, written after its image; a record present means
done, so a rerun with the same arguments skips it: resume), DIR/data.json (the JSON array of
all records, rewritten at the end), DIR/report.json, and a contact sheet. Record i is made
from the seed (seed, i, attempt), so records are independent and workers can share the work;
same arguments, same bytes.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from mini_o3.data.benchmarks import BadRecord, DatasetError, Record, RecordProblem, build_records, existing_image, multiple_choice_question
from mini_o3.data.sample import Sample
from mini_o3.data.scene import (
    COLOURS,
    LABELS,
    NEUTRALS,
    PATTERNS,
    SHAPES,
    Box,
    Frame,
    Scene,
    SceneObject,
    feature_px,
    label_kind,
    render,
)
from mini_o3.images import ResizePolicy, encode_image, target_size
from mini_o3.jsonl import write_atomic, write_json
from mini_o3.protocol import question_from_problem

ATTRIBUTES = ("shape", "colour", "pattern", "label")
LEGIBLE_PX = {"label": 8.0, "pattern": 4.0, "shape": 12.0, "colour": 3.0}
"""The smallest feature, in shown pixels, at which each attribute counts as legible."""
QUESTION_KINDS = ("attribute", "relation", "inside", "count")
DIRECTIONS = {
    "left": "directly to the left of",
    "right": "directly to the right of",
    "above": "directly above",
    "below": "directly below",
    "next": "next to",
}
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
"""The line after an open question, so a free-form answer can be matched exactly."""
DATA_FILE = "data.json"
CONFIG_FILE = "synth_config.json"
REPORT_FILE = "report.json"
SYNTH_VERSION = 1
"""Bumped when the same arguments would draw different scenes; part of the saved config."""

_ASK = {
    "label": "What is written on the {0}?",
    "colour": "What colour is the {0}?",
    "shape": "What shape is the {0}?",
    "pattern": "What pattern is on the {0}?",
}
_RELATION_REACH = 2.5
"""Half-side of the square around an anchor, in object sides, that only its neighbour may enter."""
_FRAME_MAX_PX = 1400
"""Counting frames stay below 2M pixels, so one zoom shows a whole frame at full resolution."""


class SynthError(ValueError):
    """A synthetic set that cannot be made as asked."""


class PlacementError(RuntimeError):
    """The objects a problem needs do not fit; the attempt is rejected and retried."""

    def __init__(self, message: str, reason: str = "placement") -> None:
        super().__init__(message)
        self.reason = reason
        """The rejection reason counted in the report."""


class AmbiguousError(ValueError):
    """A query that does not pick out exactly one answer in its scene."""


# ---------------------------------------------------------------- levels and options


@dataclass(frozen=True)
class LevelSpec:
    """A difficulty level as ranges of measured figures."""

    magnification: tuple[float, float]
    """Needed scale / first-view scale: over 1 means illegible at the first view."""
    near_distractors: tuple[int, int]
    """Objects failing exactly one predicate of the question's description (inclusive range)."""
    objects_per_megapixel: float
    """Objects in the scene per million pixels, referents and distractors included."""
    illegible_first_view: bool
    """Reject problems whose answer can be read at the first view."""


LEVELS = {
    "easy": LevelSpec(magnification=(0.6, 1.3), near_distractors=(0, 2), objects_per_megapixel=4.0, illegible_first_view=False),
    "medium": LevelSpec(magnification=(1.1, 2.0), near_distractors=(2, 5), objects_per_megapixel=10.0, illegible_first_view=True),
    "hard": LevelSpec(magnification=(2.0, 4.0), near_distractors=(5, 9), objects_per_megapixel=24.0, illegible_first_view=True),
}


@dataclass(frozen=True)
class GridConfig:
    """The demo world: an R x C grid, one coloured shape in one cell, grey shapes elsewhere."""

    rows: int = 3
    """Grid rows."""
    cols: int = 3
    """Grid columns."""
    target_fraction: float = 0.35
    """The target's side as a fraction of a cell's shorter side."""
    distractor_density: float = 1.5
    """Mean number of grey distractor shapes per cell."""
    distractor_fraction: tuple[float, float] = (0.06, 0.16)
    """Range of distractor sides, as fractions of a cell's shorter side."""
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    """The target's possible colours, which are also the options, in this order."""
    shuffle_options: bool = False
    """Shuffle the options per question (fixed order is easier for a tiny model)."""
    textured: bool = False
    """Draw the cluttered background instead of a plain one."""
    grid_lines: bool = True
    """Draw the cell boundaries."""
    first_view_max_px: float | None = None
    """Reject scenes whose target side at the first view is above this (None: no check)."""
    zoomed_min_px: float | None = None
    """Reject scenes whose target side, with its cell zoomed, is below this (None: no check)."""


@dataclass(frozen=True)
class SynthOptions:
    """Everything about a synthetic set beyond its level, size and seed."""

    multiple_choice: float = 0.5
    """Share of questions in multiple-choice form; the rest are open."""
    question_kinds: tuple[tuple[str, float], ...] = (("attribute", 0.4), ("relation", 0.2), ("inside", 0.2), ("count", 0.2))
    """Question kinds and their weights."""
    aspects: tuple[float, ...] = (1.0,)
    """Width / height ratios drawn per scene; `size` is the long side."""
    image_format: str = "jpeg"
    """jpeg (fast, the default) or png (lossless, about 15x slower to write)."""
    jpeg_quality: int = 92
    """JPEG quality; chroma is kept at full resolution so small objects keep their colour."""
    zoom_cap: float = 2.0
    """Largest linear magnification of one oracle zoom (see the module docstring)."""
    resize: ResizePolicy = ResizePolicy()
    """The policy that makes the first view; legibility is measured against it."""
    max_attempts: int = 40
    """Scenes tried per record before giving up with an error."""
    grid: GridConfig = GridConfig()
    """The grid family's settings (level "grid")."""
    contact_sheet: int = 16
    """Records drawn into DIR/contact_sheet.png and DIR/index.html at the end; 0 for none."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.multiple_choice <= 1.0:
            raise SynthError(f"multiple_choice must be between 0 and 1, got {self.multiple_choice}")
        unknown = [kind for kind, _ in self.question_kinds if kind not in QUESTION_KINDS]
        if unknown or not self.question_kinds or sum(w for _, w in self.question_kinds) <= 0:
            raise SynthError(f"question_kinds must give positive weights to kinds among {QUESTION_KINDS}, got {self.question_kinds}")
        if self.image_format not in ("jpeg", "png"):
            raise SynthError(f"image_format must be 'jpeg' or 'png', got {self.image_format!r}")
        if self.zoom_cap <= 1.0:
            raise SynthError(f"zoom_cap must be above 1, got {self.zoom_cap}")
        if not self.aspects or any(a <= 0 for a in self.aspects):
            raise SynthError(f"aspects must be positive width/height ratios, got {self.aspects}")


# ---------------------------------------------------------------- queries and problems


@dataclass
class Query:
    """What a question asks, in a form a checker evaluates against a scene."""

    kind: str
    """attribute, relation, inside, count or grid."""
    describe: dict[str, str]
    """Attribute predicates on the referent (the anchor, for a relation)."""
    asked: str = ""
    """The attribute whose value is the answer; "" when counting."""
    frame: int | None = None
    """The index in `scene.frames` of the frame the referent must be inside."""
    direction: str = ""
    """For a relation: where the answer's object is from the anchor (a key of DIRECTIONS)."""


@dataclass
class Resolution:
    """What a query picks out in a scene."""

    answer: str
    referents: list[int]
    """Indices of the objects the question refers to (target, or anchor then neighbour, or all counted)."""
    needs: list[set[str]]
    """For each referent, the attributes that must be legible to answer."""
    answer_object: int | None
    """The object whose attribute is the answer (None when counting)."""


@dataclass
class Problem:
    """A scene and a question about it with one verifiable answer."""

    scene: Scene
    query: Query
    level: str
    question: str
    """The question sentence alone."""
    answer: str
    """The answer's text (the right option's text for multiple choice)."""
    options: dict[str, str] = field(default_factory=dict)
    """Multiple-choice options by letter; empty for an open question."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Family-specific metadata (the grid's cell)."""

    @property
    def text(self) -> str:
        """The question as the model sees it: options and instruction included."""
        if self.options:
            return multiple_choice_question(self.question, self.options)
        return f"{self.question}\n{OPEN_INSTRUCTION}"

    @property
    def solution(self) -> str:
        """The ground truth: the option letter, or the answer text."""
        if self.options:
            return next(letter for letter, text in self.options.items() if text == self.answer)
        return self.answer


def _inside(box: Box, region: Box) -> bool:
    return box[0] >= region[0] and box[1] >= region[1] and box[2] <= region[2] and box[3] <= region[3]


def _intersects(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def failed_predicates(obj: SceneObject, query: Query, frames: list[Frame]) -> int:
    """How many of the description's predicates `obj` fails (attributes, then the frame)."""
    failed = sum(obj.attribute(name) != value for name, value in query.describe.items())
    if query.frame is not None:
        failed += not _inside(obj.box, frames[query.frame].inner)
    return failed


def _relation_zone(obj: SceneObject) -> Box:
    cx, cy = obj.centre
    reach = _RELATION_REACH * obj.side
    return (math.floor(cx - reach), math.floor(cy - reach), math.ceil(cx + reach), math.ceil(cy + reach))


def _direction_holds(anchor: SceneObject, other: SceneObject, direction: str) -> bool:
    dx, dy = other.centre[0] - anchor.centre[0], other.centre[1] - anchor.centre[1]
    if direction == "left":
        return dx < 0 and abs(dx) >= 2 * abs(dy)
    if direction == "right":
        return dx > 0 and abs(dx) >= 2 * abs(dy)
    if direction == "above":
        return dy < 0 and abs(dy) >= 2 * abs(dx)
    if direction == "below":
        return dy > 0 and abs(dy) >= 2 * abs(dx)
    return direction == "next"


def resolve(scene: Scene, query: Query) -> Resolution:
    """Find what `query` refers to in `scene` and its answer; AmbiguousError unless exactly one."""
    objects = scene.objects
    if query.kind == "grid":
        coloured = [i for i, obj in enumerate(objects) if obj.colour in COLOURS]
        if len(coloured) != 1:
            raise AmbiguousError(f"{len(coloured)} coloured objects, expected exactly 1")
        return Resolution(objects[coloured[0]].colour, coloured, [{"colour"}], coloured[0])
    matches = [i for i, obj in enumerate(objects) if failed_predicates(obj, query, scene.frames) == 0]
    if query.kind == "count":
        if not matches:
            raise AmbiguousError("no object fits the description; a count of 0 is not asked")
        return Resolution(str(len(matches)), matches, [set(query.describe)] * len(matches), None)
    if len(matches) != 1:
        raise AmbiguousError(f"{len(matches)} objects fit the description, expected exactly 1")
    target = matches[0]
    if query.kind in ("attribute", "inside"):
        return Resolution(objects[target].attribute(query.asked), [target], [set(query.describe) | {query.asked}], target)
    if query.kind != "relation":
        raise ValueError(f"unknown query kind {query.kind!r}")
    anchor = objects[target]
    zone = _relation_zone(anchor)
    near = [i for i, obj in enumerate(objects) if i != target and _intersects(obj.box, zone)]
    if len(near) != 1:
        raise AmbiguousError(f"{len(near)} objects are near the anchor, expected exactly 1")
    if not _direction_holds(anchor, objects[near[0]], query.direction):
        raise AmbiguousError(f"the object near the anchor is not {DIRECTIONS[query.direction]} it")
    return Resolution(objects[near[0]].attribute(query.asked), [target, near[0]], [set(query.describe), {query.asked}], near[0])


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


# ---------------------------------------------------------------- generation


def first_view_scale(width: int, height: int, policy: ResizePolicy = ResizePolicy()) -> float:
    """Shown size / original size of the first view."""
    return shown_scale(width, height, policy)


def image_size(size: int, aspect: float) -> tuple[int, int]:
    """Width and height for a long side of `size` and a width/height ratio of `aspect`."""
    if aspect >= 1:
        return size, max(1, round(size / aspect))
    return max(1, round(size * aspect)), size


def check_feasible(level: str, size: int, options: SynthOptions = SynthOptions()) -> None:
    """Raise SynthError when `level` cannot be drawn at `size` (the magnification range is out of reach)."""
    if level == "grid":
        return
    if level not in LEVELS:
        raise SynthError(f"unknown level {level!r}; choose one of {', '.join(list(LEVELS) + ['grid'])}")
    low = LEVELS[level].magnification[0]
    for aspect in options.aspects:
        width, height = image_size(size, aspect)
        reach = 1.0 / first_view_scale(width, height, options.resize)
        if reach <= low * 1.02:
            need = math.ceil(size * low * 1.05 / reach / 64) * 64
            raise SynthError(
                f"level {level!r} needs answers {low:.1f}x too small to read at the first view yet legible at full "
                f"resolution, but a {width}x{height} image is shown only {reach:.2f}x smaller than the original; "
                f"use --size {need} or more"
            )


def _choice(rng: np.random.Generator, items: Iterable[Any]) -> Any:
    items = list(items)
    return items[int(rng.integers(len(items)))]


def _weighted(rng: np.random.Generator, pairs: Iterable[tuple[Any, float]]) -> Any:
    pairs = list(pairs)
    point, total = float(rng.random()) * sum(w for _, w in pairs), 0.0
    for value, weight in pairs:
        total += weight
        if point < total:
            return value
    return pairs[-1][0]


def _random_label(rng: np.random.Generator, kind: str | None = None) -> str:
    kind = kind or _weighted(rng, (("letter", 0.5), ("digit", 0.2), ("word", 0.3)))
    return _choice(rng, LABELS[kind])


def _random_attributes(rng: np.random.Generator) -> dict[str, str]:
    return {"shape": _choice(rng, SHAPES), "colour": _choice(rng, COLOURS), "pattern": _choice(rng, PATTERNS), "label": _random_label(rng)}


def _other_value(rng: np.random.Generator, name: str, value: str) -> str:
    if name == "label":
        domain: Iterable[str] = LABELS[label_kind(value) or "letter"]
    else:
        domain = {"shape": SHAPES, "colour": COLOURS, "pattern": PATTERNS}[name]
    return _choice(rng, [v for v in domain if v != value])


def _needed_scale(items: list[tuple[dict[str, str], set[str]]], side: int) -> float:
    worst = 0.0
    for attributes, needs in items:
        features = feature_px(SceneObject(box=(0, 0, side, side), **attributes))
        for name in needs:
            worst = max(worst, math.inf if features[name] <= 0 else LEGIBLE_PX[name] / features[name])
    return worst


def _smallest_side(items: list[tuple[dict[str, str], set[str]]], scale: float, longest: int) -> int:
    """The smallest side at which every needed attribute is legible at `scale` (0 if none up to a third of the image)."""
    low, high = 4, max(8, longest // 3)
    if _needed_scale(items, high) > scale:
        return 0
    while low < high:
        middle = (low + high) // 2
        if _needed_scale(items, middle) <= scale:
            high = middle
        else:
            low = middle + 1
    return low


class _Layout:
    """Objects placed without overlap, frames first, with zones kept clear."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, gap: int) -> None:
        self.rng, self.width, self.height, self.gap = rng, width, height, gap
        self.objects: list[SceneObject] = []
        self.frames: list[Frame] = []
        self.zones: list[Box] = []
        self._boxes = np.zeros((64, 4), dtype=np.int64)

    def free(self, box: Box, gap: int | None = None) -> bool:
        """True when `box` (grown by the gap) is inside the image and touches no object, zone or frame outline."""
        gap = self.gap if gap is None else gap
        if box[0] < 0 or box[1] < 0 or box[2] > self.width or box[3] > self.height:
            return False
        grown = (box[0] - gap, box[1] - gap, box[2] + gap, box[3] + gap)
        count = len(self.objects)
        if count:
            b = self._boxes[:count]
            if np.any((b[:, 0] < grown[2]) & (grown[0] < b[:, 2]) & (b[:, 1] < grown[3]) & (grown[1] < b[:, 3])):
                return False
        if any(_intersects(box, zone) for zone in self.zones):
            return False
        return all(_inside(grown, f.inner) or not _intersects(grown, f.box) for f in self.frames)

    def add(self, obj: SceneObject) -> int:
        """Add an object already known to be free; its index."""
        if len(self.objects) == len(self._boxes):
            self._boxes = np.concatenate([self._boxes, np.zeros_like(self._boxes)])
        self._boxes[len(self.objects)] = obj.box
        self.objects.append(obj)
        return len(self.objects) - 1

    def spot(self, side: int, within: Box | None = None, outside: Box | None = None, tries: int = 60) -> Box | None:
        """A free box of `side` inside `within` (default the image) and clear of `outside`; None if none found."""
        x0, y0, x1, y1 = within or (0, 0, self.width, self.height)
        if x1 - x0 < side or y1 - y0 < side:
            return None
        for _ in range(tries):
            x, y = int(self.rng.integers(x0, x1 - side + 1)), int(self.rng.integers(y0, y1 - side + 1))
            box = (x, y, x + side, y + side)
            if outside is not None and _intersects(box, outside):
                continue
            if self.free(box):
                return box
        return None

    def place(self, attributes: dict[str, str], side: int, within: Box | None = None, outside: Box | None = None) -> int:
        """Place an object or raise PlacementError."""
        box = self.spot(side, within, outside)
        if box is None:
            raise PlacementError(f"no room for a {side}px object")
        return self.add(SceneObject(box=box, **attributes))

    def frame(self, colour: str, width: int, height: int, border: int) -> int:
        """Place a frame clear of the others; its index."""
        for _ in range(60):
            x, y = int(self.rng.integers(0, self.width - width + 1)), int(self.rng.integers(0, self.height - height + 1))
            box = (x, y, x + width, y + height)
            pad = 3 * self.gap
            if all(not _intersects((box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad), f.box) for f in self.frames):
                self.frames.append(Frame(colour, box, border))
                return len(self.frames) - 1
        raise PlacementError("no room for a frame")


def _noun_phrase(describe: dict[str, str], plural: bool = False) -> str:
    words = [describe[name] for name in ("pattern", "colour") if name in describe]
    noun = describe.get("shape", "object")
    words.append(noun + ("s" if plural else ""))
    text = " ".join(words)
    if "label" in describe:
        text += f' labelled "{describe["label"]}"'
    return text


class _Generator:
    """Builds one problem of one level (one attempt; the caller retries on PlacementError)."""

    def __init__(self, rng: np.random.Generator, level: str, width: int, height: int, options: SynthOptions) -> None:
        self.rng, self.level, self.spec, self.options = rng, level, LEVELS[level], options
        self.width, self.height = width, height
        self.first = first_view_scale(width, height, options.resize)
        self.pool: list[str] = []  # values a wrong option may take, best first

    # -------------------------------------------------------- pieces

    def _describe(self, attributes: dict[str, str], exclude: str, sizes: tuple[int, ...]) -> dict[str, str]:
        names = [n for n in ATTRIBUTES if n != exclude]
        count = min(len(names), _choice(self.rng, sizes))
        picked = set(self.rng.choice(names, size=count, replace=False).tolist())
        return {name: attributes[name] for name in ATTRIBUTES if name in picked}

    def _near_variant(self, attributes: dict[str, str], describe: dict[str, str], asked: str) -> dict[str, str]:
        weights = {"label": 3.0, "pattern": 2.0, "shape": 2.0, "colour": 1.0}
        changed = _weighted(self.rng, [(name, weights[name]) for name in describe])
        variant = dict(attributes)
        variant[changed] = _other_value(self.rng, changed, attributes[changed])
        if asked:
            # A misidentified object must give a wrong answer, so its asked attribute differs.
            variant[asked] = _other_value(self.rng, asked, attributes[asked])
            self.pool.append(variant[asked])
        return variant

    def _side(self, items: list[tuple[dict[str, str], set[str]]]) -> int:
        """A side, drawn uniformly among those whose magnification needed is in the level's range."""
        low, high = self.spec.magnification
        longest = max(self.width, self.height)
        smallest = _smallest_side(items, min(high * self.first, 1.0), longest)
        # The largest side still needing at least `low`: one below the first side that needs less.
        largest = _smallest_side(items, low * self.first * (1 - 1e-9), longest) - 1
        if smallest == 0 or largest < smallest:
            raise PlacementError("no object size gives this level's magnification", reason="size")
        return int(self.rng.integers(smallest, largest + 1))

    def _layout(self, side: int) -> _Layout:
        return _Layout(self.rng, self.width, self.height, gap=max(2, round(0.3 * side)))

    def _fill(self, layout: _Layout, side: int, guard: Query) -> None:
        """Random objects up to the level's count, each failing at least two of `guard`'s predicates.

        So no filler fits the description or is a near-identical distractor: those are planted.
        """
        total = round(self.spec.objects_per_megapixel * self.width * self.height / 1e6)
        misses = 0
        while len(layout.objects) < total and misses < 40:
            size = int(round(side * self.rng.uniform(0.8, 1.25)))
            box = layout.spot(size, tries=8)
            if box is None:
                misses += 1
                continue
            for _ in range(8):
                obj = SceneObject(box=box, **_random_attributes(self.rng))
                if failed_predicates(obj, guard, layout.frames) >= 2:
                    layout.add(obj)
                    break

    def _frame_colours(self, count: int) -> list[str]:
        return self.rng.choice(list(COLOURS), size=count, replace=False).tolist()

    def _border(self) -> int:
        return max(2, math.ceil(2.5 / self.first))

    def _near_count(self) -> int:
        low, high = self.spec.near_distractors
        return int(self.rng.integers(low, high + 1))

    # -------------------------------------------------------- kinds

    def attribute(self) -> tuple[Query, list[SceneObject], list[Frame]]:
        asked = _weighted(self.rng, (("label", 0.4), ("colour", 0.3), ("shape", 0.15), ("pattern", 0.15)))
        target = _random_attributes(self.rng)
        describe = self._describe(target, asked, (2, 3))
        side = self._side([(target, set(describe) | {asked})])
        layout = self._layout(side)
        layout.place(target, side)
        for _ in range(self._near_count()):
            layout.place(self._near_variant(target, describe, asked), side)
        query = Query("attribute", describe, asked)
        self._fill(layout, side, query)
        return query, layout.objects, layout.frames

    def inside(self) -> tuple[Query, list[SceneObject], list[Frame]]:
        asked = _weighted(self.rng, (("label", 0.5), ("colour", 0.3), ("shape", 0.2)))
        target = _random_attributes(self.rng)
        describe = self._describe(target, asked, (2,))
        side = self._side([(target, set(describe) | {asked})])
        layout = self._layout(side)
        near = self._near_count()
        outside = int(self.rng.integers(0, near + 1))
        frames = int(self.rng.integers(1, 4))
        shorter = min(self.width, self.height)
        room = math.ceil(math.sqrt((near - outside + 4) * (side + layout.gap) ** 2 * 3)) + 2 * self._border()
        for colour in self._frame_colours(frames):
            extent = max(room, int(shorter * self.rng.uniform(0.15, 0.28)))
            layout.frame(colour, extent, max(room, int(extent * self.rng.uniform(0.8, 1.25))), self._border())
        query = Query("inside", describe, asked, frame=0)
        region = layout.frames[0].inner
        layout.place(target, side, within=region)
        for _ in range(near - outside):
            layout.place(self._near_variant(target, describe, asked), side, within=region)
        for _ in range(outside):
            twin = dict(_random_attributes(self.rng), **describe)
            twin[asked] = _other_value(self.rng, asked, target[asked])
            self.pool.append(twin[asked])
            layout.place(twin, side, outside=layout.frames[0].box)
        self._fill(layout, side, query)
        return query, layout.objects, layout.frames

    def count(self) -> tuple[Query, list[SceneObject], list[Frame]]:
        names = self.rng.choice(ATTRIBUTES, size=2, replace=False).tolist()
        base = _random_attributes(self.rng)
        describe = {name: base[name] for name in ATTRIBUTES if name in names}
        number = int(_weighted(self.rng, ((1, 1.0), (2, 1.5), (3, 1.5), (4, 1.0), (5, 0.7))))
        counted = [dict(_random_attributes(self.rng), **describe) for _ in range(number)]
        side = self._side([(c, set(describe)) for c in counted])
        layout = self._layout(side)
        near = self._near_count()
        outside = int(self.rng.integers(0, near + 1))
        room = math.ceil(math.sqrt((number + near - outside + 6) * (side + layout.gap) ** 2 * 3)) + 2 * self._border()
        colours = self._frame_colours(int(self.rng.integers(1, 3)))
        for colour in colours:
            extent = max(room, min(_FRAME_MAX_PX, int(min(self.width, self.height) * self.rng.uniform(0.15, 0.28))))
            layout.frame(colour, extent, max(room, min(_FRAME_MAX_PX, int(extent * self.rng.uniform(0.8, 1.25)))), self._border())
        query = Query("count", describe, frame=0)
        region = layout.frames[0].inner
        for attributes in counted:
            layout.place(attributes, side, within=region)
        for _ in range(near - outside):
            variant = dict(_random_attributes(self.rng), **describe)
            changed = _choice(self.rng, describe)
            variant[changed] = _other_value(self.rng, changed, describe[changed])
            layout.place(variant, side, within=region)
        for _ in range(outside):
            layout.place(dict(_random_attributes(self.rng), **describe), side, outside=layout.frames[0].box)
        self._fill(layout, side, query)
        return query, layout.objects, layout.frames

    def relation(self) -> tuple[Query, list[SceneObject], list[Frame]]:
        asked = _weighted(self.rng, (("label", 0.5), ("colour", 0.3), ("shape", 0.2)))
        direction = _choice(self.rng, DIRECTIONS)
        anchor = _random_attributes(self.rng)
        describe = self._describe(anchor, "", (2, 3))
        query = Query("relation", describe, asked, direction=direction)
        neighbour = self._unlike(describe)
        side = self._side([(anchor, set(describe)), (neighbour, {asked})])
        layout = self._layout(side)
        self._pair(layout, anchor, neighbour, side, direction, zone=True, required=True)
        for _ in range(self._near_count()):
            variant = self._near_variant(anchor, describe, "")
            companion = self._unlike(describe)
            if self.rng.random() < 0.75:
                self.pool.append(companion[asked])
                self._pair(layout, variant, companion, side, direction, zone=False, required=True)
            else:
                layout.place(variant, side)
        self._fill(layout, side, Query("attribute", describe))
        return query, layout.objects, layout.frames

    def _unlike(self, describe: dict[str, str]) -> dict[str, str]:
        """Random attributes failing at least two of `describe`'s predicates (or all, if fewer)."""
        for _ in range(50):
            attributes = _random_attributes(self.rng)
            if sum(attributes[n] != v for n, v in describe.items()) >= min(2, len(describe)):
                return attributes
        raise PlacementError("no unlike attributes found")

    def _pair(self, layout: _Layout, first: dict[str, str], second: dict[str, str], side: int, direction: str, zone: bool, required: bool) -> None:
        if direction == "next":
            direction = _choice(self.rng, ("left", "right", "above", "below"))
        reach = math.ceil(_RELATION_REACH * side) + 1
        for _ in range(60):
            box = layout.spot(side, within=(reach, reach, self.width - reach, self.height - reach), tries=1)
            if box is None:
                continue
            distance = side + int(round(side * self.rng.uniform(0.25, 0.6)))
            slide = int(round(side * self.rng.uniform(-0.2, 0.2)))
            dx, dy = {"left": (-distance, slide), "right": (distance, slide), "above": (slide, -distance), "below": (slide, distance)}[direction]
            other = (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)
            anchor_obj = SceneObject(box=box, **first)
            zone_box = _relation_zone(anchor_obj)
            if not layout.free(other, gap=1):
                continue
            if zone and not all(not _intersects(zone_box, o.box) for o in layout.objects):
                continue
            layout.add(anchor_obj)
            layout.add(SceneObject(box=other, **second))
            if zone:
                layout.zones.append(zone_box)
            return
        if required:
            raise PlacementError("no room for a pair")

    # -------------------------------------------------------- the problem

    def build(self, kind: str, multiple_choice: bool, background_seed: int) -> Problem:
        query, objects, frames = getattr(self, kind)()
        scene = Scene(self.width, self.height, objects, frames, background_seed)
        resolution = resolve(scene, query)  # AmbiguousError here is a generator bug caught as a rejection
        question = self._question(query, frames)
        options = self._options(query, resolution.answer) if multiple_choice else {}
        return Problem(scene, query, self.level, question, resolution.answer, options)

    def _question(self, query: Query, frames: list[Frame]) -> str:
        if query.kind == "count":
            return f"How many {_noun_phrase(query.describe, plural=True)} are inside the {frames[query.frame].colour} frame?"
        phrase = _noun_phrase(query.describe)
        if query.kind == "inside":
            phrase += f" inside the {frames[query.frame].colour} frame"
        elif query.kind == "relation":
            phrase = f"object {DIRECTIONS[query.direction]} the {phrase}"
        return _ASK[query.asked].format(phrase)

    def _options(self, query: Query, answer: str) -> dict[str, str]:
        if query.kind == "count":
            number = int(answer)
            candidates = [v for v in (number - 1, number + 1, number + 2, number - 2, number + 3) if v >= 0]
            values = sorted([number] + candidates[:3])
            return {chr(65 + i): str(v) for i, v in enumerate(values)}
        wrong: list[str] = []
        for value in self.pool + [_other_value(self.rng, query.asked, answer) for _ in range(30)]:
            if value != answer and value not in wrong:
                wrong.append(value)
        values = [answer] + wrong[:3]
        order = self.rng.permutation(len(values)).tolist()
        return {chr(65 + i): values[j] for i, j in enumerate(order)}


def generate_problem(rng: np.random.Generator, level: str, width: int, height: int, options: SynthOptions = SynthOptions()) -> Problem:
    """One problem of `level` on a `width` x `height` scene (unchecked; see check_problem)."""
    if level == "grid":
        return generate_grid_problem(rng, width, height, options)
    generator = _Generator(rng, level, width, height, options)
    kind = _weighted(rng, options.question_kinds)
    multiple_choice = bool(rng.random() < options.multiple_choice)
    return generator.build(kind, multiple_choice, int(rng.integers(2**62)))


def generate_grid_problem(rng: np.random.Generator, width: int, height: int, options: SynthOptions = SynthOptions()) -> Problem:
    """The demo world: which colour is the one coloured shape, hidden in one cell of a grid."""
    grid = options.grid
    if len(grid.colours) < 2 or any(c not in COLOURS for c in grid.colours):
        raise SynthError(f"grid colours must be at least 2 of {sorted(COLOURS)}, got {grid.colours}")
    cell_w, cell_h = width / grid.cols, height / grid.rows
    shorter = min(cell_w, cell_h)
    layout = _Layout(rng, width, height, gap=max(1, round(0.02 * shorter)))
    row, col = int(rng.integers(grid.rows)), int(rng.integers(grid.cols))

    def cell_box(r: int, c: int) -> Box:
        return (round(c * cell_w), round(r * cell_h), round((c + 1) * cell_w), round((r + 1) * cell_h))

    def inset(box: Box) -> Box:
        margin = max(1, round(0.04 * shorter))
        return (box[0] + margin, box[1] + margin, box[2] - margin, box[3] - margin)

    colour = _choice(rng, grid.colours)
    side = max(2, round(grid.target_fraction * shorter))
    layout.place({"shape": _choice(rng, SHAPES), "colour": colour, "pattern": "plain", "label": ""}, side, within=inset(cell_box(row, col)))
    for r in range(grid.rows):
        for c in range(grid.cols):
            for _ in range(int(rng.poisson(grid.distractor_density))):
                size = max(2, round(shorter * rng.uniform(*grid.distractor_fraction)))
                box = layout.spot(size, within=inset(cell_box(r, c)), tries=20)
                if box is not None:
                    layout.add(SceneObject(_choice(rng, SHAPES), _choice(rng, NEUTRALS), "plain", "", box))
    names = list(grid.colours)
    if grid.shuffle_options:
        names = [names[i] for i in rng.permutation(len(names)).tolist()]
    scene = Scene(width, height, layout.objects, [], int(rng.integers(2**62)), textured=grid.textured, grid=(grid.rows, grid.cols) if grid.grid_lines else None)
    cell = cell_box(row, col)
    shown = {
        "first_view": round(side * first_view_scale(width, height, options.resize), 3),
        "cell_zoomed": round(side * shown_scale(cell[2] - cell[0], cell[3] - cell[1], options.resize), 3),
    }
    extra = {"cell": [row, col], "grid": [grid.rows, grid.cols], "cell_box": list(cell), "target_shown_px": shown, "grid_config": grid}
    options_by_letter = {chr(65 + i): name for i, name in enumerate(names)}
    return Problem(scene, Query("grid", {}, "colour"), "grid", "What colour is the only shape that is not grey?", colour, options_by_letter, extra)


# ---------------------------------------------------------------- records


def make_problem(seed: int, index: int, level: str, size: int, options: SynthOptions = SynthOptions()) -> tuple[Problem, Figures, int, Counter[str]]:
    """Record `index`'s accepted problem, its figures, the attempt that made it and the rejections before it."""
    rejections: Counter[str] = Counter()
    for attempt in range(options.max_attempts):
        rng = np.random.default_rng([seed, index, attempt])
        width, height = image_size(size, _choice(rng, options.aspects))
        try:
            problem = generate_problem(rng, level, width, height, options)
        except PlacementError as error:
            rejections[error.reason] += 1
            continue
        except AmbiguousError:
            rejections["ambiguous"] += 1
            continue
        reasons, figures = check_problem(problem, options.resize, options.zoom_cap)
        if not reasons and figures is not None:
            return problem, figures, attempt, rejections
        rejections.update(reasons)
    raise SynthError(
        f"record {index}: no acceptable {level} scene at size {size} in {options.max_attempts} attempts "
        f"(rejections: {dict(rejections)}); try another size or raise max_attempts"
    )


def _object_meta(obj: SceneObject, role: str) -> dict[str, Any]:
    return {"role": role, "box": list(obj.box), **obj.attributes()}


def problem_record(problem: Problem, figures: Figures, doc_id: str, image: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The Mini-o3 JSON record of a problem, with our metadata under "meta"."""
    scene, query = problem.scene, problem.query
    resolution = resolve(scene, query)
    if query.kind == "relation":
        roles = ["anchor", "target"]
    else:
        roles = ["counted" if query.kind == "count" else "target"] * len(resolution.referents)
    referents = [_object_meta(scene.objects[i], role) for i, role in zip(resolution.referents, roles)]
    if query.frame is not None:
        frame = scene.frames[query.frame]
        referents.append({"role": "frame", "box": list(frame.box), "colour": frame.colour})
    near = [
        dict(_object_meta(scene.objects[i], "near_distractor"), differs=name)
        for i, name in near_distractors(scene, query, resolution.referents)
    ]
    extra = {k: v for k, v in problem.extra.items() if k != "grid_config"}
    return {
        "images": [image],
        "doc_id": doc_id,
        "problem": "<image>\n" + problem.text,
        "solution": problem.solution,
        "data_source": f"synthetic_{problem.level}",
        "meta": {
            "level": problem.level,
            "question": problem.question,
            "question_type": query.kind,
            "form": "multiple_choice" if problem.options else "open",
            "answer": problem.answer,
            "options": dict(problem.options),
            "image_size": [scene.width, scene.height],
            "boxes": [r["box"] for r in referents],
            "referents": referents,
            "near_distractors": near,
            "query": {"describe": dict(query.describe), "asked": query.asked, "direction": query.direction},
            "figures": figures.to_dict(),
            **extra,
            **meta,
        },
    }


def _encode(problem: Problem, options: SynthOptions) -> bytes:
    image = render(problem.scene)
    if options.image_format == "png":
        return encode_image(image, "PNG")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=options.jpeg_quality, subsampling=0)
    return buffer.getvalue()


def _record_path(out: Path, index: int) -> Path:
    return out / "records" / f"{index:06d}.json"


def make_record(out: Path, index: int, level: str, size: int, seed: int, options: SynthOptions) -> dict[str, Any]:
    """Generate, check, draw and write record `index` under `out`; the record."""
    problem, figures, attempt, rejections = make_problem(seed, index, level, size, options)
    doc_id = f"synthetic_{level}_{index:06d}"
    image = f"images/{doc_id}.{'jpg' if options.image_format == 'jpeg' else 'png'}"
    write_atomic(out / image, _encode(problem, options))
    meta = {"seed": seed, "index": index, "attempt": attempt, "rejections": dict(sorted(rejections.items()))}
    record = problem_record(problem, figures, doc_id, image, meta)
    write_json(_record_path(out, index), record, indent=1)
    return record


def _done(out: Path, index: int) -> bool:
    path = _record_path(out, index)
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (out / record["images"][0]).is_file()


@dataclass
class SynthReport:
    """What a `synthesize` run made, what it rejected, and the measured level figures."""

    out_dir: str
    data_file: str
    level: str
    size: int
    seed: int
    n: int
    written: int
    """Records made by this run."""
    skipped: int
    """Records already on disk (a resumed run)."""
    attempts: int
    """Scenes tried for all n records."""
    rejections: dict[str, int]
    """Rejected scenes by reason, over all n records."""
    seconds: float
    """Wall time of this run."""
    figures: dict[str, dict[str, float]]
    """Mean, min and max of each numeric figure over all n records."""
    question_types: dict[str, int]
    legible_first_view: float
    """Share of records whose answer is legible at the first view."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines for a person."""
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.n} {self.level} records at {self.size}px in {self.out_dir}: {self.written} made ({rate:.2f}/s), {self.skipped} already there",
            f"attempts {self.attempts}, rejected: {', '.join(f'{k} {v}' for k, v in sorted(self.rejections.items())) or 'none'}",
            f"question types: {', '.join(f'{k} {v}' for k, v in sorted(self.question_types.items()))}",
            f"legible at first view: {self.legible_first_view:.0%}",
        ]
        for name in ("target_side_fraction", "target_area_fraction", "near_distractors", "magnification_needed", "zooms_needed", "objects"):
            if name in self.figures:
                stats = self.figures[name]
                lines.append(f"  {name:22s} mean {stats['mean']:.4g}  min {stats['min']:.4g}  max {stats['max']:.4g}")
        return "\n".join(lines)


def summarise_figures(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, min and max of each numeric figure over records."""
    values: dict[str, list[float]] = {}
    for record in records:
        for key, value in record["meta"]["figures"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, []).append(float(value))
    return {key: {"mean": statistics.fmean(v), "min": min(v), "max": max(v)} for key, v in values.items()}


_WORKER: dict[str, Any] = {}


def _init_worker(out: str, level: str, size: int, seed: int, options: SynthOptions) -> None:
    _WORKER.update(out=Path(out), level=level, size=size, seed=seed, options=options)


def _work(index: int) -> int:
    make_record(_WORKER["out"], index, _WORKER["level"], _WORKER["size"], _WORKER["seed"], _WORKER["options"])
    return index


def _config(level: str, size: int, seed: int, options: SynthOptions) -> dict[str, Any]:
    saved = asdict(options)
    saved.pop("contact_sheet")
    if level != "grid":
        saved.pop("grid")
    return json.loads(json.dumps({"version": SYNTH_VERSION, "level": level, "size": size, "seed": seed, "options": saved}))


def _claim(out: Path, config: dict[str, Any]) -> None:
    path = out / CONFIG_FILE
    if path.is_file():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing != config:
            differ = sorted(k for k in set(existing) | set(config) if existing.get(k) != config.get(k))
            raise SynthError(
                f"{out} holds a set made with other settings ({', '.join(differ)} differ: "
                f"{ {k: existing.get(k) for k in differ} } there, { {k: config.get(k) for k in differ} } now); "
                "use another --out, or the same settings to resume it"
            )
        return
    write_json(path, config, indent=1)


def synthesize(
    out_dir: str | Path,
    n: int,
    level: str,
    size: int,
    seed: int,
    workers: int = 1,
    progress: bool = True,
    options: SynthOptions = SynthOptions(),
) -> SynthReport:
    """Write `n` checked problems of `level` at `size` px (long side) under `out_dir`, resuming a partial set."""
    if n < 0:
        raise SynthError(f"n must be at least 0, got {n}")
    if size < 64:
        raise SynthError(f"size must be at least 64 px, got {size}")
    if seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed}")
    if workers < 1:
        raise SynthError(f"workers must be at least 1, got {workers}")
    check_feasible(level, size, options)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "records").mkdir(exist_ok=True)
    _claim(out, _config(level, size, seed, options))
    started = time.perf_counter()
    pending = [i for i in range(n) if not _done(out, i)]
    _run(out, pending, level, size, seed, workers, options, progress, n)
    seconds = time.perf_counter() - started
    records = [json.loads(_record_path(out, i).read_text(encoding="utf-8")) for i in range(n)]
    write_json(out / DATA_FILE, records, indent=1)
    rejections: Counter[str] = Counter()
    for record in records:
        rejections.update(record["meta"]["rejections"])
    report = SynthReport(
        out_dir=str(out),
        data_file=str(out / DATA_FILE),
        level=level,
        size=size,
        seed=seed,
        n=n,
        written=len(pending),
        skipped=n - len(pending),
        attempts=sum(record["meta"]["attempt"] + 1 for record in records),
        rejections=dict(sorted(rejections.items())),
        seconds=round(seconds, 3),
        figures=summarise_figures(records),
        question_types=dict(sorted(Counter(r["meta"]["question_type"] for r in records).items())),
        legible_first_view=statistics.fmean(r["meta"]["figures"]["legible_first_view"] for r in records) if records else 0.0,
    )
    write_json(out / REPORT_FILE, report.to_dict(), indent=1)
    if options.contact_sheet and records:
        from mini_o3.data.contact_sheet import write_contact_sheet

        write_contact_sheet(load_synthetic(out)[: options.contact_sheet], out)
    return report


def _run(out: Path, pending: list[int], level: str, size: int, seed: int, workers: int, options: SynthOptions, progress: bool, n: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"synth {level}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not progress) as bar:
        task = bar.add_task("synth", total=n, completed=n - len(pending))
        if workers == 1 or len(pending) <= 1:
            for index in pending:
                make_record(out, index, level, size, seed, options)
                bar.advance(task)
            return
        # spawn: safe beside threads and torch in the parent, and the same on every platform.
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(pending)), _init_worker, (str(out), level, size, seed, options)) as pool:
            for _ in pool.imap_unordered(_work, pending):
                bar.advance(task)


# ---------------------------------------------------------------- loading


def is_synthetic_dir(path: str | Path) -> bool:
    """True for a folder written by `synthesize`."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / DATA_FILE).is_file()


def iter_synthetic(path: str | Path) -> Iterator[Record]:
    """The records of a synthetic set (its folder or its data.json) as Samples, or BadRecords naming what is wrong.

    A missing or unreadable data.json raises DatasetError at once; a bad record (a field
    missing, an image path leaving the set's folder, an image not on disk) is a BadRecord,
    so `load_dataset(..., skip_bad=True)` skips and counts it like any other loader's.
    """
    path = Path(path)
    file = path / DATA_FILE if path.is_dir() else path
    if not file.is_file():
        hint = " (the run did not finish: rerun `mini-o3 synth` with the same arguments to complete it)" if (path / CONFIG_FILE).is_file() else ""
        raise DatasetError(f"{file}: no synthetic set here{hint}")
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"{file}: not valid JSON ({error}); rerun `mini-o3 synth` with the same arguments to rewrite it") from None
    if not isinstance(records, list):
        raise DatasetError(f"{file}: expected a JSON array of records, found a JSON {type(records).__name__}")
    base = file.parent

    def build(record: dict[str, Any], index: int) -> Sample:
        return _sample(record, base)

    return build_records(file, ((index, None, record) for index, record in enumerate(records)), build)


def load_synthetic(path: str | Path) -> list[Sample]:
    """The samples of a synthetic set (its folder or its data.json); images stay on disk. The first bad record raises DatasetError."""
    samples = []
    for record in iter_synthetic(path):
        if isinstance(record, BadRecord):
            raise DatasetError(f"{record.message()} (or load it with `load_dataset(..., skip_bad=True)` / --skip-bad to skip bad records)")
        samples.append(record)
    return samples


_REWRITE = "rerun `mini-o3 synth` with the same arguments to rewrite the set"


def _sample(record: dict[str, Any], base: Path) -> Sample:
    for key, kind in (("images", list), ("doc_id", str), ("problem", str), ("solution", str), ("data_source", str)):
        if not isinstance(record.get(key), kind):
            raise RecordProblem(f"field {key!r} is missing or not a {kind.__name__}", _REWRITE)
    if not record["problem"].startswith("<image>\n"):
        raise RecordProblem("'problem' must start with '<image>\\n'", _REWRITE)
    if len(record["images"]) != 1:
        raise RecordProblem(f"'images' holds {len(record['images'])} paths, not exactly one", _REWRITE)
    image = existing_image(base, record["images"][0], "rerun `mini-o3 synth` with the same arguments to redraw it")
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    options = meta.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(key, str) and isinstance(text, str) for key, text in options.items()):
        raise RecordProblem(f"meta.options is {options!r}, not an object of letter -> text", _REWRITE)
    boxes = meta.get("boxes", [])
    if not isinstance(boxes, list) or not all(_is_box(box) for box in boxes):
        raise RecordProblem("meta.boxes is not a list of [x0, y0, x1, y1]", _REWRITE)
    return Sample(
        id=record["doc_id"],
        image=image,
        question=question_from_problem(record["problem"]),
        answer=record["solution"],
        options=dict(options),
        source=record["data_source"],
        split=str(meta.get("level", "")),
        category=str(meta.get("question_type", "")),
        boxes=[tuple(float(v) for v in box) for box in boxes],
        meta=meta,
    )


def _is_box(box: Any) -> bool:
    return isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)


__all__ = [
    "LEGIBLE_PX",
    "LEVELS",
    "GridConfig",
    "LevelSpec",
    "Problem",
    "Query",
    "SynthOptions",
    "SynthReport",
    "check_problem",
    "generate_problem",
    "is_synthetic_dir",
    "iter_synthetic",
    "load_synthetic",
    "make_problem",
    "near_distractors",
    "resolve",
    "synthesize",
]
