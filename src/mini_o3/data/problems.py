"""VisualProbe-style problems from procedural scenes: levels, options, queries, and what a query picks out.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mini_o3.data.benchmarks import multiple_choice_question
from mini_o3.data.scene import COLOURS, Box, Frame, Scene, SceneObject
from mini_o3.agent.images import ResizePolicy

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

_RELATION_REACH = 2.5
"""Half-side of the square around an anchor, in object sides, that only its neighbour may enter."""


class SynthError(ValueError):
    """A synthetic set that cannot be made as asked."""


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


__all__ = [
    "ATTRIBUTES",
    "DIRECTIONS",
    "LEGIBLE_PX",
    "LEVELS",
    "OPEN_INSTRUCTION",
    "QUESTION_KINDS",
    "AmbiguousError",
    "GridConfig",
    "LevelSpec",
    "Problem",
    "Query",
    "Resolution",
    "SynthError",
    "SynthOptions",
    "failed_predicates",
    "resolve",
]
