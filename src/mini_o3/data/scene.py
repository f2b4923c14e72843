"""Procedural scenes: a cluttered, textured background with small labelled objects, drawn fast.

A scene is data first (`Scene`: objects, frames, a background seed) and pixels second
(`render`), so checks read every object's attributes and box without looking at pixels, and
a test can edit a scene and draw it again. The size of every feature a question can ask about
(`feature_px`) is read off the same layout the renderer draws with (the label's ink box comes
from the font itself), so legibility is measured on what is drawn.

Labels use the font that ships inside Pillow (`ImageFont.load_default(size=...)`, Pillow >= 10.1
built with FreeType): no font files. Same scene, same pixels, for a given Pillow and FreeType;
another FreeType release may rasterise glyphs a little differently.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]
"""x0, y0, x1, y1 in original pixels, x1 and y1 exclusive."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (255, 127, 14),
    "yellow": (240, 215, 30),
    "green": (44, 160, 44),
    "cyan": (23, 190, 207),
    "blue": (31, 80, 220),
    "purple": (140, 60, 190),
    "pink": (247, 129, 191),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
"""Object colours a question may name: far apart in hue or lightness."""

NEUTRALS: dict[str, tuple[int, int, int]] = {"grey": (128, 128, 128), "light grey": (185, 185, 185), "dark grey": (80, 80, 80)}
"""Achromatic colours for the grid family's distractors (never a question's answer)."""

SHAPES = ("circle", "square", "triangle", "diamond", "hexagon")
PATTERNS = ("plain", "striped", "dotted", "checkered")
LETTERS = tuple("ABCDEFGHJKLMNPRSTUVWXYZ")
"""Capital letters without I, O and Q, which read as 1, 0 and O when small."""
DIGITS = tuple("2345679")
"""Digits without 0, 1 and 8, which read as O, I and B when small."""
WORDS = ("CAT", "SUN", "MAP", "BOX", "KEY", "CUP", "HAT", "PEN", "BUS", "JAR", "FOX", "OWL", "MUG", "BAG", "ANT", "EGG")
"""Three-letter words: every word label has the same length, so length gives no word away."""
LABELS = {"letter": LETTERS, "digit": DIGITS, "word": WORDS}

_LABEL_BOX = {
    # label box inside the shape's square, as fractions of the side: width, height, centre y.
    "circle": (0.64, 0.50, 0.50),
    "square": (0.72, 0.56, 0.50),
    "hexagon": (0.62, 0.46, 0.50),
    "diamond": (0.52, 0.40, 0.50),
    "triangle": (0.44, 0.34, 0.64),
}
_REFERENCE_SIZE = 100
_PATTERN_PERIOD = 0.22
"""Pattern period as a fraction of the object's side (about four stripes across)."""


def label_kind(label: str) -> str:
    """letter, digit, word, or "" for an unlabelled object."""
    if not label:
        return ""
    if label.isdigit():
        return "digit"
    return "letter" if len(label) == 1 else "word"


def colour_rgb(name: str) -> tuple[int, int, int]:
    """The RGB of a named object colour or neutral."""
    if name in COLOURS:
        return COLOURS[name]
    if name in NEUTRALS:
        return NEUTRALS[name]
    raise ValueError(f"unknown colour {name!r}; choose one of {sorted(COLOURS) + sorted(NEUTRALS)}")


@dataclass(frozen=True)
class SceneObject:
    """One object: a filled shape with a pattern and a printed label, in a square box."""

    shape: str
    colour: str
    pattern: str
    label: str
    """A letter, a digit, a short word, or "" for none."""
    box: Box

    @property
    def side(self) -> int:
        """The side of the object's square box in pixels."""
        return self.box[2] - self.box[0]

    @property
    def centre(self) -> tuple[float, float]:
        """The box centre."""
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def attributes(self) -> dict[str, str]:
        """The attributes a question may ask about."""
        return {"shape": self.shape, "colour": self.colour, "pattern": self.pattern, "label": self.label}

    def attribute(self, name: str) -> str:
        """One attribute by name."""
        return self.attributes()[name]

    def moved(self, box: Box) -> SceneObject:
        """The same object in another box."""
        return replace(self, box=box)


@dataclass(frozen=True)
class Frame:
    """A named region: a rectangle outlined in a colour ("the orange frame")."""

    colour: str
    box: Box
    """The outer edge of the outline."""
    border: int
    """The outline's width in pixels."""

    @property
    def inner(self) -> Box:
        """The region inside the outline."""
        x0, y0, x1, y1 = self.box
        return (x0 + self.border, y0 + self.border, x1 - self.border, y1 - self.border)


@dataclass
class Scene:
    """Everything needed to draw one image, and to check questions about it without pixels."""

    width: int
    height: int
    objects: list[SceneObject] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    background_seed: int = 0
    """Seeds the background texture and clutter."""
    clutter_per_megapixel: float = 120.0
    """Background strokes and blobs per million pixels."""
    textured: bool = True
    """False for a plain light background (the grid family)."""
    grid: tuple[int, int] | None = None
    """Rows and columns of thin grid lines to draw, if any."""


# ---------------------------------------------------------------- measured features


@dataclass(frozen=True)
class LabelLayout:
    """Where a label's ink goes in its object, at which font size, and how big the ink is."""

    font_size: int
    ink_width: int
    ink_height: int
    origin: tuple[float, float]
    """Where to put the text origin (anchor "la") relative to the object's top-left corner."""


@functools.lru_cache(maxsize=512)
def label_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font at `size` px."""
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError(
            "this Pillow has no FreeType, so ImageFont.load_default(size=...) cannot scale text; "
            "install a Pillow wheel from PyPI (>= 10.1), which ships with FreeType"
        )
    return font


@functools.lru_cache(maxsize=65536)
def label_layout(shape: str, label: str, side: int) -> LabelLayout:
    """The largest label that fits inside `shape` at `side` px, with its measured ink size."""
    if not label:
        return LabelLayout(0, 0, 0, (0.0, 0.0))
    width_frac, height_frac, centre_y = _LABEL_BOX[shape]
    max_w, max_h = width_frac * side, height_frac * side

    def fits(size: int) -> bool:
        left, top, right, bottom = label_font(size).getbbox(label)
        return right - left <= max_w and bottom - top <= max_h

    # Ink grows about linearly with the font size: estimate from one measurement, then step.
    left, top, right, bottom = label_font(_REFERENCE_SIZE).getbbox(label)
    size = max(4, int(_REFERENCE_SIZE * min(max_w / max(1, right - left), max_h / max(1, bottom - top))))
    while size > 4 and not fits(size):
        size -= 1
    while fits(size + 1):
        size += 1
    left, top, right, bottom = label_font(size).getbbox(label)
    ink_w, ink_h = right - left, bottom - top
    origin = (side / 2 - (left + right) / 2, centre_y * side - (top + bottom) / 2)
    return LabelLayout(size, ink_w, ink_h, origin)


def pattern_period(side: int) -> float:
    """The repeat length of an object's pattern in pixels."""
    return _PATTERN_PERIOD * side


def feature_px(obj: SceneObject) -> dict[str, float]:
    """The size in original pixels of what must be seen to read each attribute.

    label: the ink height of the printed text; pattern: the pattern's repeat length (telling
    plain from striped needs it resolved); shape and colour: the object's side.
    """
    return {
        "shape": float(obj.side),
        "colour": float(obj.side),
        "pattern": pattern_period(obj.side),
        "label": float(label_layout(obj.shape, obj.label, obj.side).ink_height) if obj.label else 0.0,
    }


# ---------------------------------------------------------------- drawing


def render(scene: Scene) -> Image.Image:
    """Draw a scene: background, clutter, frames, then objects."""
    if scene.textured:
        image = render_background(scene.width, scene.height, scene.background_seed, scene.clutter_per_megapixel)
    else:
        image = Image.new("RGB", (scene.width, scene.height), (232, 230, 224))
    draw = ImageDraw.Draw(image)
    if scene.grid is not None:
        _draw_grid(draw, scene.width, scene.height, *scene.grid)
    for frame in scene.frames:
        x0, y0, x1, y1 = frame.box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour_rgb(frame.colour), width=frame.border)
    for obj in scene.objects:
        draw_object(image, obj)
    return image


def _draw_grid(draw: ImageDraw.ImageDraw, width: int, height: int, rows: int, cols: int) -> None:
    line = max(1, round(max(width, height) / 400))
    for r in range(1, rows):
        y = round(r * height / rows)
        draw.line((0, y, width, y), fill=(150, 150, 150), width=line)
    for c in range(1, cols):
        x = round(c * width / cols)
        draw.line((x, 0, x, height), fill=(150, 150, 150), width=line)


def render_background(width: int, height: int, seed: int, clutter_per_megapixel: float = 120.0) -> Image.Image:
    """A muted, mottled colour field with scattered strokes, blobs and speckle.

    Built at 1/8 resolution with numpy and scaled up in C (bilinear to half size, then a 2x
    nearest step, which is invisible on a smooth field and twice as fast as one bilinear
    pass), then clutter is drawn at full resolution. Muted colours keep clutter from passing
    for an object.
    """
    rng = np.random.default_rng(seed)
    low_w, low_h = max(2, math.ceil(width / 8)), max(2, math.ceil(height / 8))
    grid = int(rng.integers(3, 6))
    corners = _muted(rng, grid * grid).reshape(grid, grid, 3)
    field = np.asarray(Image.fromarray(corners).resize((low_w, low_h), Image.Resampling.BICUBIC), dtype=np.float32)
    longest = max(low_w, low_h)
    for cells, amplitude in ((6, 26.0), (24, 16.0), (96, 10.0)):
        shape = (max(2, round(cells * low_h / longest)), max(2, round(cells * low_w / longest)))
        noise = rng.random(shape, dtype=np.float32)
        up = np.asarray(Image.fromarray(noise, "F").resize((low_w, low_h), Image.Resampling.BILINEAR))
        field += (up[..., None] - 0.5) * amplitude
    low = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    half = low.resize((max(1, (width + 1) // 2), max(1, (height + 1) // 2)), Image.Resampling.BILINEAR)
    image = half.resize((width, height), Image.Resampling.NEAREST)
    _draw_clutter(image, rng, clutter_per_megapixel)
    return image


def _muted(rng: np.random.Generator, count: int, lightness: tuple[float, float] = (0.42, 0.78)) -> np.ndarray:
    """`count` low-saturation RGB colours as a (count, 3) uint8 array."""
    hue = rng.random(count) * 6.0
    saturation = rng.uniform(0.06, 0.28, count)
    value = rng.uniform(*lightness, count)
    sector = np.floor(hue).astype(int) % 6
    fraction = hue - np.floor(hue)
    p, q, t = value * (1 - saturation), value * (1 - saturation * fraction), value * (1 - saturation * (1 - fraction))
    table = np.stack([
        np.stack([value, t, p], 1), np.stack([q, value, p], 1), np.stack([p, value, t], 1),
        np.stack([p, q, value], 1), np.stack([t, p, value], 1), np.stack([value, p, q], 1),
    ])
    rgb = table[sector, np.arange(count)]
    return np.round(rgb * 255).astype(np.uint8)


def _draw_clutter(image: Image.Image, rng: np.random.Generator, per_megapixel: float) -> None:
    width, height = image.size
    draw = ImageDraw.Draw(image)
    long_side = max(width, height)
    count = int(per_megapixel * width * height / 1e6)
    kinds = rng.integers(0, 4, count).tolist()
    xs, ys = rng.integers(0, width, count).tolist(), rng.integers(0, height, count).tolist()
    lengths = ((long_side * rng.uniform(0.003, 0.03, count)).astype(int) + 2).tolist()
    colours = [tuple(c) for c in _muted(rng, count, (0.3, 0.85)).tolist()]
    lines = rng.integers(1, max(2, long_side // 1000) + 1, count).tolist()
    shapes = rng.uniform(0.1, 1.0, count).tolist()
    turns = rng.uniform(-1.0, 1.0, (count, 3, 2)).tolist()
    angles = rng.integers(0, 360, (count, 2)).tolist()
    for i in range(count):
        x, y, length, colour, line = xs[i], ys[i], lengths[i], colours[i], lines[i]
        if kinds[i] == 0:
            points = [(x, y)]
            for dx, dy in turns[i][: 1 + i % 3]:
                x, y = x + int(dx * length), y + int(dy * length)
                points.append((x, y))
            draw.line(points, fill=colour, width=line)
        elif kinds[i] == 1:
            draw.ellipse((x, y, x + length, y + int(length * shapes[i]) + 1), outline=colour, width=line)
        elif kinds[i] == 2:
            draw.ellipse((x, y, x + length // 2 + 1, y + int(length * shapes[i] / 2) + 1), fill=colour)
        else:
            draw.arc((x, y, x + length, y + length), angles[i][0], angles[i][0] + 60 + angles[i][1] // 2, fill=colour, width=line)
    dots = int(per_megapixel * 10 * width * height / 1e6)
    for colour in _muted(rng, 4, (0.25, 0.9)).tolist():
        points = np.stack([rng.integers(0, width, dots), rng.integers(0, height, dots)], axis=1).ravel().tolist()
        draw.point(points, fill=tuple(colour))


def _shape_outline(shape: str, side: float) -> list[tuple[float, float]]:
    s = side
    if shape == "square":
        m = 0.06 * s
        return [(m, m), (s - m, m), (s - m, s - m), (m, s - m)]
    if shape == "triangle":
        return [(0.5 * s, 0.04 * s), (0.97 * s, 0.93 * s), (0.03 * s, 0.93 * s)]
    if shape == "diamond":
        return [(0.5 * s, 0.0), (s, 0.5 * s), (0.5 * s, s), (0.0, 0.5 * s)]
    if shape == "hexagon":
        return [(0.5 * s + 0.5 * s * math.sin(a), 0.5 * s - 0.5 * s * math.cos(a)) for a in (math.pi / 3 * k for k in range(6))]
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


@functools.lru_cache(maxsize=1024)
def _pattern_mask(pattern: str, size: int, period: float) -> Image.Image | None:
    # Cached: objects in a scene come in a few sizes, and a mask depends only on these three.
    if pattern == "plain":
        return None
    period = max(period, 2.0)
    yy, xx = np.indices((size, size), dtype=np.float32)
    if pattern == "striped":
        on = ((xx + yy) % period) < period / 2
    elif pattern == "dotted":
        dx, dy = xx % period - period / 2, yy % period - period / 2
        on = dx * dx + dy * dy < (period * 0.28) ** 2
    elif pattern == "checkered":
        half = period / 2
        on = ((xx // half + yy // half) % 2) == 0
    else:
        raise ValueError(f"unknown pattern {pattern!r}; choose one of {PATTERNS}")
    return Image.fromarray(on.astype(np.uint8) * 255, "L")


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _shade(rgb: tuple[int, int, int], towards: int, amount: float) -> tuple[int, int, int]:
    return tuple(round(c + (towards - c) * amount) for c in rgb)  # type: ignore[return-value]


def draw_object(image: Image.Image, obj: SceneObject) -> None:
    """Draw one object into `image`: anti-aliased shape and pattern, outline, then the label."""
    side = obj.side
    # Enough supersampling to anti-alias small shapes, little enough to stay fast on big ones.
    supersample = max(2, min(4, math.ceil(96 / max(side, 1))))
    big = side * supersample
    fill = colour_rgb(obj.colour)
    light = _luminance(fill) > 140
    tile = Image.new("RGB", (big, big), fill)
    stripes = _pattern_mask(obj.pattern, big, pattern_period(side) * supersample)
    if stripes is not None:
        tile.paste(_shade(fill, 0 if light else 255, 0.42), (0, 0, big, big), stripes)
    mask = Image.new("L", (big, big), 0)
    mask_draw, tile_draw = ImageDraw.Draw(mask), ImageDraw.Draw(tile)
    edge = _shade(fill, 0, 0.55) if _luminance(fill) > 60 else _shade(fill, 255, 0.45)
    edge_width = max(supersample, round(big * 0.05))
    if obj.shape == "circle":
        mask_draw.ellipse((0, 0, big - 1, big - 1), fill=255)
        tile_draw.ellipse((0, 0, big - 1, big - 1), outline=edge, width=edge_width)
    else:
        points = _shape_outline(obj.shape, big)
        mask_draw.polygon(points, fill=255)
        tile_draw.polygon(points, outline=edge, width=edge_width)
    tile = tile.resize((side, side), Image.Resampling.BOX)
    mask = mask.resize((side, side), Image.Resampling.BOX)
    if obj.label:
        layout = label_layout(obj.shape, obj.label, side)
        ImageDraw.Draw(tile).text(layout.origin, obj.label, font=label_font(layout.font_size), fill=(15, 15, 15) if light else (250, 250, 250))
    image.paste(tile, obj.box[:2], mask)
