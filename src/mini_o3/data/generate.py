"""Drawing problems: scenes laid out to a level's ranges, their questions and options, and the retry loop.

`generate_problem` makes one unchecked attempt; `make_problem` seeds attempt after attempt from
(seed, index, attempt) and keeps the first that `check_problem` accepts. A change that draws
other scenes for the same arguments bumps `mini_o3.data.synth.SYNTH_VERSION`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable

import numpy as np

from mini_o3.data.checks import Figures, check_problem, shown_scale
from mini_o3.data.problems import (
    _RELATION_REACH,
    ATTRIBUTES,
    DIRECTIONS,
    LEGIBLE_PX,
    LEVELS,
    AmbiguousError,
    Problem,
    Query,
    SynthError,
    SynthOptions,
    _inside,
    _intersects,
    _relation_zone,
    failed_predicates,
    resolve,
)
from mini_o3.data.scene import COLOURS, LABELS, NEUTRALS, PATTERNS, SHAPES, Box, Frame, Scene, SceneObject, feature_px, label_kind
from mini_o3.agent.images import ResizePolicy

_ASK = {
    "label": "What is written on the {0}?",
    "colour": "What colour is the {0}?",
    "shape": "What shape is the {0}?",
    "pattern": "What pattern is on the {0}?",
}
_FRAME_MAX_PX = 1400
"""Counting frames stay below 2M pixels, so one zoom shows a whole frame at full resolution."""


class PlacementError(RuntimeError):
    """The objects a problem needs do not fit; the attempt is rejected and retried."""

    def __init__(self, message: str, reason: str = "placement") -> None:
        super().__init__(message)
        self.reason = reason
        """The rejection reason counted in the report."""


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


__all__ = [
    "PlacementError",
    "check_feasible",
    "first_view_scale",
    "generate_grid_problem",
    "generate_problem",
    "image_size",
    "make_problem",
]
