"""The oracle: a scripted teacher that searches an image by zooming, knowing where the target is.

From a sample's ground-truth boxes (`Sample.boxes`, original pixels) and answer it writes a
whole Mini-o3 trajectory before the first turn: thoughts in `<think>...</think>`, then a zoom
or the answer, in the protocol's canonical form (`protocol.render_zoom` / `render_answer`).
Every plan is one of four patterns (`PATTERNS`), drawn from a `PatternMix`:

- direct: the target is legible in the first view (at least `legible_px` there); answer at once.
- depth_first: zoom in on the region holding the target, then again and again into the
  newest observation (`source: observation_N`), each crop smaller, until it is legible.
- trial_and_error: zoom into regions that do not hold the target, say so, go back to the
  original (or to an earlier observation) and try elsewhere; then find it, often by nesting.
- goal_maintenance: trial and error where every thought restates what is sought, and the
  wrong regions are, when the sample's metadata lists them, the distractors that look alike.

On the grid demo world (synthetic records with `meta["grid"] = [rows, cols]` and
`meta["cell"] = [row, col]`) the oracle scans the cells row by row from the top-left (or in a
random order), zooming from the original into each, saying "not here" and restating the goal
after each wrong cell, and answers from the target cell. A scan needs (target index + 2)
turns: with a turn limit below that it ends over_turn, and collection rejects it. With
`PatternMix.grid_give_up`, that share of scans gives up after a few wrong cells and guesses.

Synthetic records (mini_o3.data.synth) also give each referent's role: a counting question's
last view takes in its whole frame, an "inside" question's first zoom takes in the frame, and
goal-maintenance detours visit the listed near distractors and name what they are. Direct
answers are used only where `meta["figures"]["legible_first_view"]` (or, without it, the
target's size in the first view) says the answer can be read without zooming.

Boxes are imperfect but valid: jittered, never tight, always containing the target. The
oracle tracks every view's box in the original and computes each relative box exactly as the
environment will (it renders the action, parses it back and applies
`images.zoom_box_in_original`), so a plan re-executes to the planned crops; `generate` checks
the views it is shown against its plan and raises PolicyError on any divergence.

Randomness comes only from (seed, sample id, run), so a plan is the same whenever it is made.
"""

from __future__ import annotations

import math
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.sample import Sample
from mini_o3.agent.images import PixelBox, ResizePolicy, target_size, zoom_box_in_original
from mini_o3.coldstart import oracle_text as text
from mini_o3.agent.policy import Generation, PolicyError, SamplingParams
from mini_o3.policies.scripted import assistant_turns, count_prompt_tokens
from mini_o3.eval.scoring import score_answer

PATTERNS = ("direct", "depth_first", "trial_and_error", "goal_maintenance")
"""The oracle's search patterns; the last three are Mini-o3's."""



Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PatternMix:
    """How often the oracle uses each pattern, and how long and deep its searches get."""

    direct: float = 0.1
    """Weight of one-turn answers (only used where the target is legible in the first view)."""
    depth_first: float = 0.3
    """Weight of nested zooms straight to the target."""
    trial_and_error: float = 0.35
    """Weight of searches that visit wrong regions first and go back."""
    goal_maintenance: float = 0.25
    """Weight of trial and error that restates the goal at every turn."""
    long_share: float = 0.15
    """Share of trial-and-error and goal-maintenance plans stretched past 10 turns (room permitting)."""
    max_depth: int = 3
    """Most nested zooms on the way to the target."""
    max_detours: int = 4
    """Most wrong regions visited in a plan of ordinary length."""
    nested_detour_share: float = 0.25
    """Share of wrong regions that get a second, nested look before going back."""
    backtrack_share: float = 0.3
    """Share of nested approaches that first try a wrong part of an observation and go back to it."""
    restate_share: float = 0.25
    """Share of turns outside goal maintenance that also restate the goal."""
    legible_px: float = 24.0
    """A target this many pixels across (short side) in the first view may be answered directly."""
    grid_give_up: float = 0.0
    """Grid world: share of scans that give up after a few wrong cells and guess an option (an
    impatient searcher, as a prompted model's cold start has; collection keeps the lucky guesses)."""

    def __post_init__(self) -> None:
        weights = [self.direct, self.depth_first, self.trial_and_error, self.goal_maintenance]
        if any(weight < 0 for weight in weights) or sum(weights) <= 0:
            raise ValueError(f"pattern weights must be >= 0 and not all 0, got {weights}")
        for name in ("long_share", "nested_detour_share", "backtrack_share", "restate_share", "grid_give_up"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.max_depth < 1 or self.max_detours < 1:
            raise ValueError(f"max_depth and max_detours must be at least 1, got {self.max_depth} and {self.max_detours}")

    def weights(self) -> dict[str, float]:
        """The pattern weights by name."""
        return {name: float(getattr(self, name)) for name in PATTERNS}


@dataclass
class PlannedTurn:
    """One assistant turn of a plan and the view its zoom produces."""

    text: str
    role: str
    """What the step is: detour (a wrong region), approach, backtrack, cell (grid scan) or answer."""
    source: int | None = None
    """The view index the zoom is on (None for the answer)."""
    box: PixelBox | None = None
    """The zoom's resulting box in original pixels, exactly as the environment computes it."""


@dataclass
class OraclePlan:
    """A whole trajectory, planned: the pattern, the target and every turn."""

    sample_id: str
    pattern: str
    target: Box
    turns: list[PlannedTurn] = field(default_factory=list)
    views: list[PixelBox] = field(default_factory=list)
    """View i's box in the original (0 is the whole image)."""

    @property
    def texts(self) -> list[str]:
        """The assistant texts, in order."""
        return [turn.text for turn in self.turns]

    @property
    def num_turns(self) -> int:
        """How many assistant turns the plan takes."""
        return len(self.turns)


class OraclePolicy:
    """Writes ground-truth search trajectories for samples with target boxes; bind it per sample."""

    def __init__(
        self,
        mix: PatternMix = PatternMix(),
        seed: int = 0,
        max_turns: int = 16,
        resize: ResizePolicy = ResizePolicy(),
        grid_order: str = "row_major",
        grid_wording: str = "natural",
    ) -> None:
        """`max_turns` caps plans (the episode's own limit must be at least as large); `resize`
        must be the episode's, to judge what is legible in the first view; `grid_order` is the
        demo grid's scan order, "row_major" (learnable) or "random"; `grid_wording` is
        "natural" (varied sentences that restate the goal) or "terse" (the fixed phrases the
        demo's base model was pre-trained on: "No coloured shape. Cell k.", "Found a red shape.")."""
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        if grid_order not in ("row_major", "random"):
            raise ValueError(f"grid_order must be 'row_major' or 'random', got {grid_order!r}")
        if grid_wording not in ("natural", "terse"):
            raise ValueError(f"grid_wording must be 'natural' or 'terse', got {grid_wording!r}")
        self.grid_wording = grid_wording
        self.mix = mix
        self.seed = seed
        self.max_turns = max_turns
        self.resize = resize
        self.grid_order = grid_order

    def bind(self, sample: Sample, run: int = 0) -> "BoundOracle":
        """A policy that plays the plan of run `run` of this sample."""
        return BoundOracle(self, sample, run)

    def plan(self, sample: Sample, run: int = 0, image_size: tuple[int, int] | None = None) -> OraclePlan:
        """The plan for one run of `sample`; the image size is read from the file when not given."""
        size = image_size or _image_size(sample)
        rng = random.Random(f"mini-o3-oracle:{self.seed}:{sample.id}:{run}")
        return _Planner(sample, size, rng, self).build()

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """Refuse: the oracle must be bound to a sample first (the agent does it)."""
        raise PolicyError("OraclePolicy needs the sample's ground truth: call bind(sample) (mini_o3.agent.loop does) before generate")


class BoundOracle:
    """The oracle bound to one run of one sample: plays the plan turn by turn, checking each view."""

    def __init__(self, oracle: OraclePolicy, sample: Sample, run: int) -> None:
        self.oracle = oracle
        self.sample = sample
        self.run = run
        self.plan: OraclePlan | None = None
        self._lock = threading.Lock()

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """The plan's next turn; PolicyError if the conversation left the plan."""
        views = _message_views(messages)
        with self._lock:
            if self.plan is None:
                size = _size_from_view(views[0]) if views else None
                try:
                    self.plan = self.oracle.plan(self.sample, self.run, size)
                except (ValueError, OSError) as error:
                    raise PolicyError(f"the oracle cannot plan sample {self.sample.id!r}: {error}") from error
            plan = self.plan
        index = assistant_turns(messages)
        if index >= plan.num_turns:
            raise PolicyError(f"the oracle's plan for {self.sample.id!r} has {plan.num_turns} turns; turn {index + 1} was asked for")
        if messages and messages[-1]["role"] == "user" and index > 0 and len(views) != index + 1:
            raise PolicyError(
                f"the oracle expected {index + 1} images before turn {index + 1} of {self.sample.id!r}, got {len(views)} "
                "(an error turn or a different environment)"
            )
        for number, view in enumerate(views):
            record = getattr(view, "record", None)
            if record is not None and number < len(plan.views) and tuple(record.box) != tuple(plan.views[number]):
                raise PolicyError(
                    f"view {number} of {self.sample.id!r} is {tuple(record.box)} in the original, the oracle planned "
                    f"{plan.views[number]}: the environment and the oracle disagree"
                )
        text = plan.turns[index].text
        return Generation(
            text=text,
            prompt_tokens=count_prompt_tokens(messages),
            completion_tokens=max(1, len(text.encode("utf-8")) * 2 // 7 + 1),
        )


# ---------------------------------------------------------------- helpers


def oracle_answer(sample: Sample) -> str:
    """The answer the oracle writes: the right option's letter for multiple choice, else the ground truth."""
    if not sample.options:
        return sample.answer.strip()
    for letter in sample.options:
        if score_answer(letter, sample.answer, sample.options).correct:
            return letter
    raise ValueError(f"sample {sample.id!r}: no option letter scores as right against the ground truth {sample.answer!r}")


def target_description(sample: Sample) -> str:
    """A short definite phrase for what the question is about, from the sample's metadata or question.

    Synthetic records (mini_o3.data.synth) carry the bare question sentence in `meta["question"]`;
    "What colour is the striped red circle inside the blue frame?" gives "the striped red
    circle inside the blue frame", "How many red squares are inside the green frame?" gives
    "the group of red squares inside the green frame".
    """
    meta = _meta(sample)
    for key in ("target_description", "description"):
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return _definite(value.strip())
    question = meta.get("question") if isinstance(meta.get("question"), str) else None
    question = (question or protocol.question_from_problem(sample.question)).strip().split("\n")[0]
    counting = re.match(r"how many (.+?) (?:are|is) (.+?)\?*$", question, re.IGNORECASE)
    if counting:
        return f"the group of {counting.group(1)} {counting.group(2)}"  # singular, so every template reads well
    match = re.search(r"\bthe (.{3,100}?)\s*\?", question, re.IGNORECASE) or re.search(r"\bthe ([^?.,;:]{3,60})", question, re.IGNORECASE)
    if match:
        return "the " + match.group(1).strip()
    return "the object the question asks about"


def _meta(sample: Sample) -> dict[str, Any]:
    return sample.meta if isinstance(sample.meta, dict) else {}


def _definite(phrase: str) -> str:
    lowered = phrase.lower()
    if lowered.startswith(("the ", "a ", "an ")):
        phrase = phrase.split(" ", 1)[1]
    return "the " + phrase


def grid_layout(sample: Sample, size: tuple[int, int]) -> tuple[list[PixelBox], int, int, int] | None:
    """(cell boxes in row-major order, target cell index, rows, cols) for a grid-world sample, else None.

    Reads the synthetic grid family's metadata: `meta["grid"] = [rows, cols]` and
    `meta["cell"] = [row, col]` (the target's cell), with cells laid out as the generator draws
    them (cell (r, c) spans round(c * W / cols) .. round((c + 1) * W / cols), and likewise in y).
    """
    meta = _meta(sample)
    grid, cell = meta.get("grid"), meta.get("cell")
    if not (isinstance(grid, (list, tuple)) and len(grid) == 2 and isinstance(cell, (list, tuple)) and len(cell) == 2):
        return None
    rows, cols = int(grid[0]), int(grid[1])
    row, col = int(cell[0]), int(cell[1])
    if rows < 1 or cols < 1 or not (0 <= row < rows and 0 <= col < cols):
        return None
    width, height = size
    cell_w, cell_h = width / cols, height / rows
    boxes = [
        (round(c * cell_w), round(r * cell_h), round((c + 1) * cell_w), round((r + 1) * cell_h))
        for r in range(rows)
        for c in range(cols)
    ]
    return boxes, row * cols + col, rows, cols


def _focus(sample: Sample) -> tuple[list[Box], Box | None, bool]:
    """(boxes to find, a region the first zoom must take in, whether the last view is the region itself).

    Synthetic records name each referent's role: a "frame" is a region (inside questions find
    the target inside it; counting questions look at the whole frame in one view). Other
    samples give only `Sample.boxes`, all of them to find.
    """
    referents = _meta(sample).get("referents")
    if isinstance(referents, list) and referents and all(isinstance(r, dict) and "box" in r for r in referents):
        objects = [tuple(float(v) for v in r["box"]) for r in referents if r.get("role") != "frame"]
        frames = [tuple(float(v) for v in r["box"]) for r in referents if r.get("role") == "frame"]
        if frames and _meta(sample).get("question_type") == "count":
            return [frames[0]], None, True
        if objects:
            return objects, frames[0] if frames else None, False
    return [tuple(float(v) for v in box) for box in sample.boxes], None, False


def lookalikes(sample: Sample) -> list[tuple[Box, str]]:
    """(box, short description) of the near distractors a synthetic record lists."""
    items = []
    for item in _meta(sample).get("near_distractors") or []:
        if isinstance(item, dict) and "box" in item:
            items.append((tuple(float(v) for v in item["box"]), _object_phrase(item)))
    return items


def _object_phrase(attributes: dict[str, Any]) -> str:
    words = [str(attributes[name]) for name in ("pattern", "colour") if attributes.get(name) and attributes.get(name) != "plain"]
    words.append(str(attributes.get("shape") or "object"))
    phrase = "a " + " ".join(words)
    if attributes.get("label"):
        phrase += f' labelled "{attributes["label"]}"'
    return phrase


def _image_size(sample: Sample) -> tuple[int, int]:
    if isinstance(sample.image, Image.Image):
        return sample.image.size
    with Image.open(Path(sample.image)) as handle:  # reads the header only
        return handle.size


def _message_views(messages: list[dict[str, Any]]) -> list[Any]:
    views = []
    for message in messages:
        if message["role"] != "user":
            continue
        for part in message["content"]:
            if part["type"] == "image":
                views.append(part["image"])
    return views


def _size_from_view(view: Any) -> tuple[int, int] | None:
    record = getattr(view, "record", None)
    if record is None or getattr(record, "index", None) != 0:
        return None
    x0, y0, x1, y1 = record.box
    return x1 - x0, y1 - y0


def _union(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _intersects(a: Box, b: Box, margin: float = 0.0) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _contains(outer: Box, inner: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _view_name(index: int) -> str:
    return "the original image" if index == 0 else f"observation {index}"


def _source_name(index: int) -> str:
    return protocol.ORIGINAL_SOURCE if index == 0 else f"observation_{index}"


# ---------------------------------------------------------------- planning


class _Planner:
    """Builds one plan: draws the pattern and its lengths, then writes turns while simulating the views."""

    def __init__(self, sample: Sample, size: tuple[int, int], rng: random.Random, oracle: OraclePolicy) -> None:
        if size[0] < 2 or size[1] < 2:
            raise ValueError(f"the image of {sample.id!r} is {size[0]}x{size[1]}, too small to zoom into")
        self.sample = sample
        self.meta = _meta(sample)
        self.width, self.height = size
        self.rng = rng
        self.mix = oracle.mix
        self.max_turns = oracle.max_turns
        self.resize = oracle.resize
        self.grid_order = oracle.grid_order
        self.grid_wording = oracle.grid_wording
        self.goal = target_description(sample)
        self.answer = oracle_answer(sample)
        self.views: list[PixelBox] = [(0, 0, self.width, self.height)]
        self.turns: list[PlannedTurn] = []
        self.pending: list[str] = []
        self.used: set[str] = set()
        self.restate_all = False
        self.restated = False

    # ---- wording

    def say(self, templates: Sequence[str], **slots: Any) -> None:
        """Append one sentence from `templates` (avoiding repeats within the plan) to the coming thought."""
        fresh = [template for template in templates if template not in self.used] or list(templates)
        template = self.rng.choice(fresh)
        self.used.add(template)
        slots.setdefault("goal", self.goal)
        slots["Goal"] = _capitalise(slots["goal"])
        for key in ("obs", "parent"):
            if key in slots:
                slots[key.capitalize()] = _capitalise(slots[key])
        self.pending.append(template.format(**slots))

    def maybe_restate(self) -> None:
        """Restate the goal in the coming thought: always in goal maintenance, sometimes otherwise."""
        if not self.restated and (self.restate_all or self.rng.random() < self.mix.restate_share):
            self.say(text.GOALS)
            self.restated = True

    def region(self, box: Box, source: PixelBox) -> str:
        """A name for where `box` sits in the view `source` (top-left corner, centre, ...)."""
        cx = ((box[0] + box[2]) / 2 - source[0]) / (source[2] - source[0])
        cy = ((box[1] + box[3]) / 2 - source[1]) / (source[3] - source[1])
        row = "top" if cy < 0.36 else "bottom" if cy > 0.64 else "middle"
        col = "left" if cx < 0.36 else "right" if cx > 0.64 else "centre"
        return self.rng.choice(text.REGIONS[(row, col)])

    def _thought(self) -> str:
        if self.restate_all and self.turns and not self.restated:
            # Goal maintenance: every thought after the first says again what is sought.
            reaction = self.pending[:1]
            self.pending = self.pending[1:]
            self.say(text.GOALS)
            self.pending = reaction + self.pending[-1:] + self.pending[:-1]
        thought = " ".join(self.pending)
        self.pending = []
        self.restated = False
        return f"<think>{thought}</think>"

    # ---- actions

    def zoom(self, source: int, desired: Box, role: str, must_contain: Box | None = None) -> int:
        """Emit a zoom on view `source` covering `desired`; return the new view's index."""
        source_box = self.views[source]
        sw, sh = source_box[2] - source_box[0], source_box[3] - source_box[1]
        relative = (
            _floor3((desired[0] - source_box[0]) / sw),
            _floor3((desired[1] - source_box[1]) / sh),
            _ceil3((desired[2] - source_box[0]) / sw),
            _ceil3((desired[3] - source_box[1]) / sh),
        )
        action_text = protocol.render_zoom(protocol.Zoom(relative, _source_name(source)))
        # The box is computed from the action as parsed back, exactly as the environment will.
        parsed = protocol.parse_action(action_text)
        if not isinstance(parsed, protocol.Zoom):
            raise ValueError(f"the oracle rendered an action that does not parse: {action_text}")
        box = zoom_box_in_original(parsed.bbox, source_box, self.resize.max_aspect)
        if must_contain is not None and not _contains(box, _reachable(must_contain, source_box)):
            raise ValueError(f"the oracle's zoom {box} lost the target {must_contain} (a bug in the oracle's box maths)")
        self.views.append(box)
        self.turns.append(PlannedTurn(self._thought() + action_text, role, source, box))
        return len(self.views) - 1

    def answer_turn(self) -> None:
        """Emit the final turn: what the last view shows, then the answer."""
        asked = "count" if self.meta.get("question_type") == "count" else (self.meta.get("query") or {}).get("asked")
        value = self.meta.get("answer")
        if asked in text.VALUES and isinstance(value, str) and value:
            self.say(text.VALUES[asked], value=value)
        self.restated = True  # the final thought need not restate the goal
        if self.sample.options:
            self.say(text.CHOICE_ANSWERS, letter=self.answer, text=self.sample.options.get(self.answer, ""))
        else:
            self.say(text.OPEN_ANSWERS, answer=self.answer)
        self.turns.append(PlannedTurn(self._thought() + protocol.render_answer(self.answer), "answer"))

    # ---- geometry

    def box_around(self, target: Box, width: float, height: float, within: PixelBox) -> Box:
        """A width x height box inside `within` that holds `target` with a margin, placed at random."""
        tw, th = target[2] - target[0], target[3] - target[1]
        margin_x, margin_y = max(2.0, 0.15 * tw), max(2.0, 0.15 * th)
        width = min(max(width, tw + 2 * margin_x), within[2] - within[0])
        height = min(max(height, th + 2 * margin_y), within[3] - within[1])
        x0 = self._place(target[0] - margin_x, target[2] + margin_x, width, within[0], within[2])
        y0 = self._place(target[1] - margin_y, target[3] + margin_y, height, within[1], within[3])
        return (x0, y0, x0 + width, y0 + height)

    def _place(self, low: float, high: float, length: float, lower: float, upper: float) -> float:
        start_min, start_max = max(lower, high - length), min(upper - length, low)
        if start_max < start_min:
            return max(lower, min(upper - length, (low + high - length) / 2))
        return self.rng.uniform(start_min, start_max)

    def box_avoiding(self, avoid: Sequence[Box], width: float, height: float, within: PixelBox, tries: int = 40) -> Box | None:
        """A width x height box inside `within` that overlaps none of `avoid`, or None."""
        width, height = min(width, within[2] - within[0]), min(height, within[3] - within[1])
        for _ in range(tries):
            x0 = self.rng.uniform(within[0], within[2] - width)
            y0 = self.rng.uniform(within[1], within[3] - height)
            box = (x0, y0, x0 + width, y0 + height)
            if not any(_intersects(box, other, margin=4) for other in avoid):
                return box
        return None

    def cells(self, per_side: int) -> list[Box]:
        """A coarse per_side x per_side partition of the image, each cell grown a little at random."""
        cells = []
        cw, ch = self.width / per_side, self.height / per_side
        for row in range(per_side):
            for col in range(per_side):
                grow_w, grow_h = cw * self.rng.uniform(0.0, 0.25), ch * self.rng.uniform(0.0, 0.25)
                x0 = max(0.0, col * cw - grow_w * self.rng.random())
                y0 = max(0.0, row * ch - grow_h * self.rng.random())
                cells.append((x0, y0, min(float(self.width), x0 + cw + grow_w), min(float(self.height), y0 + ch + grow_h)))
        return cells

    def _holder_side(self, group: Box, cells: list[Box]) -> float:
        holder = next((cell for cell in cells if _contains(cell, group)), None)
        return max(holder[2] - holder[0], holder[3] - holder[1]) if holder else 0.35 * max(self.width, self.height)

    def _final_side(self, group: Box, tight: bool) -> float:
        side = max(group[2] - group[0], group[3] - group[1])
        if tight:  # a region looked at whole (a counting frame): a small margin only
            return side * self.rng.uniform(1.05, 1.2)
        return max(32.0, side * self.rng.uniform(1.8, 3.2))

    def _levels_possible(self, group: Box, tight: bool) -> int:
        side = max(group[2] - group[0], group[3] - group[1])
        final = side * (1.1 if tight else 2.5)
        ratio = 0.5 * max(self.width, self.height) / max(final, 32.0)
        return max(1, 1 + int(math.log(max(ratio, 1.0)) / math.log(1.8)))

    def _legible_first_view(self, focus: Box) -> bool:
        figures = self.meta.get("figures")
        if isinstance(figures, dict) and isinstance(figures.get("legible_first_view"), bool):
            return figures["legible_first_view"]
        return self._shown_px(focus, self.width, self.height) >= self.mix.legible_px

    def _legible_in(self, group: Box, side: float) -> bool:
        figures = self.meta.get("figures")
        if isinstance(figures, dict) and isinstance(figures.get("needed_scale"), (int, float)):
            shown = target_size(max(1, int(side)), max(1, int(side)), self.resize)[0]
            return min(1.0, shown / side) >= float(figures["needed_scale"])
        return self._shown_px(group, side, side) >= self.mix.legible_px

    def _shown_px(self, target: Box, view_w: float, view_h: float) -> float:
        shown_w, _ = target_size(max(1, int(view_w)), max(1, int(view_h)), self.resize)
        return min(target[2] - target[0], target[3] - target[1]) * shown_w / view_w

    # ---- plans

    def build(self) -> OraclePlan:
        grid = grid_layout(self.sample, (self.width, self.height))
        if grid is not None:
            cells, target, rows, cols = grid
            self.plan_grid(cells, target, rows, cols)
            return OraclePlan(self.sample.id, "trial_and_error", tuple(float(v) for v in cells[target]), self.turns, self.views)
        focus, via, tight = _focus(self.sample)
        if not focus:
            raise ValueError(f"sample {self.sample.id!r} has no target boxes (Sample.boxes); the oracle needs them")
        focus = [self._clip(box) for box in focus]
        via = self._clip(via) if via is not None else None
        union = _union(focus)
        pattern = self._draw_pattern(union)
        if pattern == "direct":
            self.say(text.DIRECTS)
            self.answer_turn()
        else:
            self.plan_search(pattern, self._groups(focus), via, tight)
        return OraclePlan(self.sample.id, pattern, union, self.turns, self.views)

    def _clip(self, box: Box) -> Box:
        x0, y0 = max(0.0, min(box[0], box[2])), max(0.0, min(box[1], box[3]))
        x1, y1 = min(float(self.width), max(box[0], box[2])), min(float(self.height), max(box[1], box[3]))
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise ValueError(f"sample {self.sample.id!r}: target box {box} lies outside the {self.width}x{self.height} image")
        return (x0, y0, x1, y1)

    def _groups(self, targets: list[Box]) -> list[Box]:
        """One box to find when the targets sit close together, else each (at most 3) in reading order."""
        union = _union(targets)
        if len(targets) == 1 or max(union[2] - union[0], union[3] - union[1]) <= 0.3 * min(self.width, self.height):
            return [union]
        return sorted(targets, key=lambda box: (box[1] + box[3], box[0] + box[2]))[:3]

    def _draw_pattern(self, union: Box) -> str:
        if self.max_turns < 2:
            return "direct"
        weights = self.mix.weights()
        if not self._legible_first_view(union):
            weights["direct"] = 0.0
        if sum(weights.values()) <= 0:
            return "depth_first"
        names = list(weights)
        return self.rng.choices(names, [weights[name] for name in names])[0]

    def plan_search(self, pattern: str, groups: list[Box], via: Box | None, tight: bool) -> None:
        """Detours first (trial and error, goal maintenance), then a nested approach to each group, then the answer."""
        mix = self.mix
        self.restate_all = pattern == "goal_maintenance"
        searching = pattern in ("trial_and_error", "goal_maintenance")
        detours = self.rng.randint(1, mix.max_detours) if searching else 0
        long = searching and self.rng.random() < mix.long_share
        cells = self.cells(5 if long else self.rng.choice((3, 4)))
        low = 2 if pattern == "depth_first" else 1
        depths = [min(self.rng.randint(low, max(low, mix.max_depth)), self._levels_possible(group, tight)) for group in groups]
        # A target that is not legible in its coarse cell needs a second, nested zoom.
        depths = [
            2 if depth == 1 and not tight and not self._legible_in(group, self._holder_side(group, cells)) else depth
            for group, depth in zip(groups, depths)
        ]
        budget = self.max_turns - 1 - sum(depths)  # turns left for detours before the answer
        if budget < 0:  # too deep for the turn budget: one zoom per group
            groups = groups[: self.max_turns - 1]
            depths = [1] * len(groups)
            budget = self.max_turns - 1 - len(groups)
        if long:
            wanted = self.rng.randint(11, max(11, min(self.max_turns, 11 + 2 * mix.max_detours)))
            detours = max(detours, wanted - 1 - sum(depths))
        detours = min(detours, budget)
        keep_clear = groups + ([via] if via is not None else [])
        wrong = [cell for cell in cells if not any(_intersects(cell, box, margin=4) for box in keep_clear)]
        self.rng.shuffle(wrong)
        candidates: list[tuple[Box, str | None]] = []
        if pattern == "goal_maintenance":
            candidates += self._lookalike_detours(keep_clear)
        candidates += [(cell, None) for cell in wrong]

        question = protocol.question_from_problem(str(self.meta.get("question") or self.sample.question)).strip().split("\n")[0]
        self.say(text.OPENINGS[1:] if len(question) > 160 else text.OPENINGS, question=question)
        first = True
        spent = 0
        for box, lookalike in candidates:
            if spent >= detours:
                break
            nested = lookalike is None and spent + 2 <= detours + 1 and spent + 2 <= budget and self.rng.random() < mix.nested_detour_share
            self._look(box, first)
            first = False
            view = self.zoom(0, box, "detour")
            spent += 1
            if nested:
                inner = self.box_avoiding(keep_clear, (box[2] - box[0]) * 0.5, (box[3] - box[1]) * 0.5, self.views[view])
                if inner is not None:
                    self.say(text.NESTED_MISS_LOOKS, obs=_view_name(view), region=self.region(inner, self.views[view]))
                    view = self.zoom(view, inner, "detour")
                    spent += 1
            if lookalike is not None:
                self.say(text.LOOKALIKE_MISSES, obs=_view_name(view), lookalike=lookalike)
            else:
                self.say(text.MISSES, obs=_view_name(view))
            self.maybe_restate()
        for number, (group, depth) in enumerate(zip(groups, depths)):
            if number > 0:
                self.say(text.PARTS)
            self._approach(group, depth, cells, first, pattern, via if number == 0 else None, tight)
            first = False
        self.answer_turn()

    def _look(self, box: Box, first: bool) -> None:
        self.say(text.FIRST_LOOKS if first else text.RETRIES, region=self.region(box, self.views[0]))

    def _lookalike_detours(self, keep_clear: list[Box]) -> list[tuple[Box, str]]:
        detours = []
        for box, phrase in lookalikes(self.sample):
            try:
                box = self._clip(box)
            except ValueError:
                continue
            side = max(box[2] - box[0], box[3] - box[1]) * self.rng.uniform(3.0, 6.0)
            around = self.box_around(box, side, side, self.views[0])
            if not any(_intersects(around, other, margin=4) for other in keep_clear):
                detours.append((around, phrase))
        self.rng.shuffle(detours)
        return detours[:2]

    def _approach(self, group: Box, depth: int, cells: list[Box], first: bool, pattern: str, via: Box | None, tight: bool) -> None:
        """Zoom from the original down to `group` in up to `depth` nested steps, maybe with one backtrack."""
        final = self._final_side(group, tight)
        if pattern == "depth_first":
            start = self.rng.uniform(0.3, 0.6) * max(self.width, self.height)
        else:
            start = self._holder_side(group, cells)
        first_target = group
        if via is not None:  # the first zoom takes in the whole region the question names
            first_target = _union([group, via])
            start = max(start, max(via[2] - via[0], via[3] - via[1]) * self.rng.uniform(1.1, 1.4))
        if depth == 1 or start <= 1.3 * final:
            side = max(start, final)
            sides = [side if self._legible_in(group, side) and (via is None or side >= max(via[2] - via[0], via[3] - via[1])) else final]
            if via is not None and sides[0] == final:
                sides = [max(final, max(via[2] - via[0], via[3] - via[1]) * 1.1)]
        else:
            sides = [start * (final / start) ** (level / (depth - 1)) for level in range(depth)]
        aspect = self.rng.uniform(0.75, 1.33)
        source = 0
        backtracked = False
        for level, side in enumerate(sides):
            width, height = side * math.sqrt(aspect), side / math.sqrt(aspect)
            if level == 0:
                desired = self.box_around(first_target, width, height, self.views[source])
                self._look(desired, first)
                source = self.zoom(source, desired, "approach", must_contain=group)
                continue
            desired = self.box_around(group, width, height, self.views[source])
            room = len(self.turns) + (len(sides) - level) + 2 <= self.max_turns
            if not backtracked and room and pattern in ("trial_and_error", "goal_maintenance") and self.rng.random() < self.mix.backtrack_share:
                wrong = self.box_avoiding([group], width, height, self.views[source])
                if wrong is not None:
                    backtracked = True
                    self.say(text.NESTS, obs=_view_name(source), region=self.region(wrong, self.views[source]))
                    miss = self.zoom(source, wrong, "detour")
                    self.say(text.MISSES, obs=_view_name(miss))
                    self.maybe_restate()
                    self.say(text.BACKTRACKS, parent=_view_name(source), region=self.region(desired, self.views[source]))
                    source = self.zoom(source, desired, "backtrack", must_contain=group)
                    continue
            self.say(text.NESTS, obs=_view_name(source), region=self.region(desired, self.views[source]))
            source = self.zoom(source, desired, "approach", must_contain=group)
        self.say(text.FOUNDS, obs=_view_name(source))

    def plan_grid(self, cells: list[PixelBox], target: int, rows: int, cols: int) -> None:
        """Scan the grid's cells in order from the original, "not here" after each wrong one, then answer."""
        order = list(range(rows * cols))
        if self.grid_order == "random":
            order.remove(target)
            self.rng.shuffle(order)
            order.insert(self.rng.randint(0, len(order)), target)
        order = order[: order.index(target) + 1]
        guess = None
        if self.mix.grid_give_up > 0 and len(order) > 1 and self.sample.options and self.rng.random() < self.mix.grid_give_up:
            # give up after 1..(cells before the target) wrong cells and guess any option
            order = order[: self.rng.randint(1, len(order) - 1)]
            guess = self.rng.choice(sorted(self.sample.options))
        if self.grid_wording == "terse":
            self.plan_grid_terse(cells, target, order, guess)
            return
        self.restate_all = True
        openings = text.GRID_OPENINGS if self.grid_order == "row_major" else text.GRID_RANDOM_OPENINGS
        self.say(openings, rows=rows, cols=cols, cells=rows * cols)
        for cell in order:
            row, col = cell // cols + 1, cell % cols + 1
            self.say(text.GRID_CELLS, row=row, col=col)
            box = tuple(float(v) for v in cells[cell])
            self.zoom(0, box, "cell")
            if cell == target:  # always the last cell of a scan that was not cut short
                self.say(text.GRID_FOUNDS, row=row, col=col)
                continue
            self.say(text.GRID_MISSES, row=row, col=col)
            if cell != order[-1]:
                self.say(text.GRID_BACKS)
        if guess is not None:
            self.restated = True
            self.say(text.GRID_GUESSES, letter=guess, text=self.sample.options[guess])
            self.turns.append(PlannedTurn(self._thought() + protocol.render_answer(guess), "answer"))
            return
        self.answer_turn()

    def plan_grid_terse(self, cells: list[PixelBox], target: int, order: list[int], guess: str | None = None) -> None:
        """The same scan in a few fixed words per turn (short sequences for a tiny model), answering with the option's text."""
        for step, cell in enumerate(order):
            self.pending = [f"Cell {cell + 1}."] if step == 0 else [f"No coloured shape. Cell {cell + 1}."]
            self.zoom(0, tuple(float(v) for v in cells[cell]), "cell")
        # The answer is the option's text, not its letter: copying the colour just named is what the
        # base model was pretrained to do, while the letter is one more lookup (colour to option) that
        # the demo's tiny model failed to learn from the cold start on seed 1, options in fixed order.
        if guess is not None:
            colour = self.sample.options[guess]
            self.turns.append(PlannedTurn(f"<think>No coloured shape. Guess {colour}.</think>\n" + protocol.render_answer(colour), "answer"))
            return
        colour = self.sample.options.get(self.answer, self.answer) if self.sample.options else self.answer
        self.turns.append(PlannedTurn(f"<think>Found a {colour} shape.</think>\n" + protocol.render_answer(colour), "answer"))


def _reachable(box: Box, source: PixelBox) -> Box:
    """The part of `box` a zoom on `source` can hold: a crop never includes its source's last pixel row or column."""
    return (
        max(math.floor(box[0]), source[0]),
        max(math.floor(box[1]), source[1]),
        min(math.ceil(box[2]), source[2] - 1),
        min(math.ceil(box[3]), source[3] - 1),
    )


def _floor3(value: float) -> float:
    return min(1.0, max(0.0, math.floor(value * 1000 + 1e-9) / 1000))


def _ceil3(value: float) -> float:
    return min(1.0, max(0.0, math.ceil(value * 1000 - 1e-9) / 1000))


__all__ = [
    "PATTERNS",
    "BoundOracle",
    "OraclePlan",
    "OraclePolicy",
    "PatternMix",
    "PlannedTurn",
    "grid_layout",
    "oracle_answer",
    "target_description",
]
