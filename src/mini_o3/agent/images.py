"""Box geometry, the crop and resize rules, safe image loading and encoding.

The crop rules follow shared/reference/mini-o3.md section 3: a relative box times the source
size, truncated to int, clamped to [0, w-1] x [0, h-1]; valid when at least 1 px wide and
high with an aspect ratio under 200. Crops are always cut from the full-resolution original:
a box on an observation is first composed with that observation's box in the original, which
gives the same pixels as cropping the full-resolution crop and keeps one decoded image per
episode.
"""

from __future__ import annotations

import base64
import io
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PixelBox = tuple[int, int, int, int]
RelativeBox = tuple[float, float, float, float]

DEFAULT_IMAGE_PIXEL_LIMIT = 300_000_000
"""Refuse to decode images larger than this (a decompression-bomb guard); 8K photos are ~40M.

This is the only pixel limit: it is checked on the header before any decode, and Pillow's own
guard (Image.MAX_IMAGE_PIXELS, which refuses 179M pixels and could not be lifted by our flag)
is set aside while we open or crop an image, then put back as the user had it."""

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageLoadError(ValueError):
    """An image file that cannot be used: missing, corrupt, too large or of an unknown format."""


class BoxError(ValueError):
    """A zoom box that selects no valid region; the message is shown to the model."""


@dataclass(frozen=True)
class ResizePolicy:
    """How every image shown to the model is sized (the reference's defaults)."""

    max_pixels: int = 2_000_000
    """Images above this many pixels are scaled down to fit."""
    min_pixels: int = 40_000
    """Images below this many pixels are scaled up to reach it."""
    min_side: int = 28
    """The short side is scaled up to at least this (one Qwen2.5-VL patch of 28 px)."""
    max_aspect: float = 200.0
    """Long side / short side is kept below this."""
    first_filter: str = "lanczos"
    """Resampling filter for the original image (the reference uses LANCZOS)."""
    crop_filter: str = "nearest"
    """Resampling filter for crops (the reference uses NEAREST)."""

    def __post_init__(self) -> None:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})")
        for name in (self.first_filter, self.crop_filter):
            if name not in _FILTERS:
                raise ValueError(f"unknown resampling filter {name!r}; choose one of {sorted(_FILTERS)}")


def target_size(width: int, height: int, policy: ResizePolicy = ResizePolicy()) -> tuple[int, int]:
    """The size an image of `width` x `height` is shown at under `policy`."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    area = width * height
    scale = 1.0
    if area > policy.max_pixels:
        scale = math.sqrt(policy.max_pixels / area)
    elif area < policy.min_pixels:
        scale = math.sqrt(policy.min_pixels / area)
    if scale < 1.0:
        new_w, new_h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    elif scale > 1.0:
        new_w, new_h = math.ceil(width * scale), math.ceil(height * scale)
    else:
        new_w, new_h = width, height
    short = min(new_w, new_h)
    if short < policy.min_side:
        grow = policy.min_side / short
        new_w, new_h = max(policy.min_side, math.ceil(new_w * grow)), max(policy.min_side, math.ceil(new_h * grow))
    long_limit = math.ceil(min(new_w, new_h) * policy.max_aspect) - 1
    if new_w > long_limit:
        new_w = long_limit
    if new_h > long_limit:
        new_h = long_limit
    return new_w, new_h


def relative_to_pixels(box: RelativeBox, width: int, height: int) -> PixelBox:
    """A relative box on an image of `width` x `height` in pixels: truncated, then clamped.

    A coordinate whose product with the side is no finite number (1e308 on any image, NaN)
    raises BoxError: the reference's int() fails there too, and its tool reports an error turn.
    """
    scaled = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    for value, name in zip(scaled, ("x0", "y0", "x1", "y1")):
        if not math.isfinite(value):
            raise BoxError(f"{name} is too large (or not a number); give coordinates between 0 and 1")
    x0, y0, x1, y1 = scaled
    return (
        _clamp(int(x0), 0, width - 1),
        _clamp(int(y0), 0, height - 1),
        _clamp(int(x1), 0, width - 1),
        _clamp(int(y1), 0, height - 1),
    )


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def check_box(box: PixelBox, max_aspect: float = 200.0) -> None:
    """Raise BoxError when a pixel box is under 1 px wide or high, or too elongated."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0, y1 - y0
    if width < 1 or height < 1:
        raise BoxError(
            f"the box selects a region of {width}x{height} pixels; x1 must be greater than x0 and "
            "y1 greater than y0, with coordinates relative to the source image (between 0 and 1)"
        )
    if max(width, height) / min(width, height) >= max_aspect:
        raise BoxError(
            f"the box is {width}x{height} pixels, an aspect ratio of {max(width, height) / min(width, height):.0f}; "
            f"keep it under {max_aspect:.0f}"
        )


def compose(outer: PixelBox, inner: PixelBox) -> PixelBox:
    """A box given in the pixels of crop `outer`, expressed in the pixels of `outer`'s image."""
    ox, oy = outer[0], outer[1]
    return (ox + inner[0], oy + inner[1], ox + inner[2], oy + inner[3])


def zoom_box_in_original(box: RelativeBox, source_box: PixelBox, max_aspect: float = 200.0) -> PixelBox:
    """The pixel box in the original that a relative zoom on the image at `source_box` selects."""
    width, height = source_box[2] - source_box[0], source_box[3] - source_box[1]
    inner = relative_to_pixels(box, width, height)
    check_box(inner, max_aspect)
    return compose(source_box, inner)


def resize_for_model(image: Image.Image, policy: ResizePolicy = ResizePolicy(), first: bool = False) -> Image.Image:
    """`image` at the size the model sees it, in RGB."""
    size = target_size(image.width, image.height, policy)
    if size == image.size:
        return image
    method = _FILTERS[policy.first_filter if first else policy.crop_filter]
    # reducing_gap first shrinks by whole factors with a box filter: big 8K downscales get fast.
    return image.resize(size, method, reducing_gap=3.0 if method != Image.Resampling.NEAREST else None)


_PILLOW_GUARD = threading.Lock()


@contextmanager
def _our_limit_only() -> Iterator[None]:
    """Set Pillow's pixel guard aside for one open or crop; ours is checked on the header instead."""
    # Pillow reads a module global, so the swap is serialised; opening only parses a header.
    with _PILLOW_GUARD:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open(source: str | Path | io.BytesIO, name: str, pixel_limit: int) -> Image.Image:
    """Image.open with our pixel limit instead of Pillow's; ImageLoadError naming the fix otherwise."""
    try:
        with _our_limit_only():
            handle = Image.open(source)
    except (UnidentifiedImageError, SyntaxError, ValueError, OSError) as error:
        raise ImageLoadError(f"{name} is not an image Pillow can read ({error}); replace it with a JPEG or PNG file") from None
    width, height = handle.size
    if width < 1 or height < 1 or width * height > pixel_limit:
        handle.close()
        raise ImageLoadError(
            f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of {pixel_limit:,} pixels; "
            "raise --image-pixel-limit if you trust this file"
        )
    return handle


def _existing_file(path: Path) -> None:
    if path.is_dir():
        raise ImageLoadError(f"image {path} is a folder, not an image file; name a file inside it")
    if not path.is_file():
        raise ImageLoadError(f"image not found: {path} (check the path and the data folder)")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"image {path} is empty (0 bytes): the download or copy may be incomplete")


def check_image_file(path: str | Path, pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT) -> tuple[int, int]:
    """The (width, height) an image file's header gives; ImageLoadError when it is missing, empty, no image or over the limit.

    Reads the header only (no decode), so a file cut short after its header passes: loading it
    fails later, at the episode (see docs/robustness.md).
    """
    path = Path(path)
    _existing_file(path)
    with _open(path, f"image {path}", pixel_limit) as handle:
        return handle.size


def load_image(path: str | Path, pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT) -> Image.Image:
    """Open an image file as upright 8-bit RGB, refusing corrupt, missing or oversized files."""
    path = Path(path)
    _existing_file(path)
    return _decode(_open(path, f"image {path}", pixel_limit), f"image {path}")


def decode_image_bytes(data: bytes, name: str = "the image", pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT) -> Image.Image:
    """Encoded image bytes (JPEG, PNG, ...) as upright 8-bit RGB, with the same checks as `load_image`."""
    if not data:
        raise ImageLoadError(f"{name} is empty (0 bytes)")
    return _decode(_open(io.BytesIO(data), name, pixel_limit), name)


def _decode(handle: Image.Image, name: str) -> Image.Image:
    try:
        with handle:
            handle.load()  # no lock here: decodes of many episodes run side by side
            return to_rgb(ImageOps.exif_transpose(handle))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"cannot decode {name}: {error} (is the file complete? replace it with a whole JPEG or PNG)") from error


def crop(image: Image.Image, box: PixelBox) -> Image.Image:
    """`image.crop(box)` without Pillow's pixel guard, which refuses crops over 179M pixels of an image we allowed."""
    if Image.MAX_IMAGE_PIXELS is None or (box[2] - box[0]) * (box[3] - box[1]) <= Image.MAX_IMAGE_PIXELS:
        return image.crop(box)
    with _our_limit_only():
        return image.crop(box)


def open_image(source: Any, pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT) -> Image.Image:
    """An RGB image from a path or an in-memory PIL image."""
    if isinstance(source, Image.Image):
        if source.width * source.height > pixel_limit:
            raise ImageLoadError(f"in-memory image of {source.width}x{source.height} is over the pixel limit {pixel_limit:,}")
        return to_rgb(source)
    return load_image(source, pixel_limit)


def as_pil(image: Any) -> Image.Image:
    """The PIL image behind an image part: a `View`'s shown image, a PIL image itself, or a file loaded as RGB."""
    if isinstance(image, Image.Image):
        return image
    shown = getattr(image, "image", None)
    if isinstance(shown, Image.Image):
        return shown
    if isinstance(image, (str, PathLike)):
        return load_image(image)
    raise TypeError(f"an image part must hold a mini_o3.agent.env.View, a PIL image or a path, got {type(image).__name__}")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: alpha is composited on white, 16-bit is scaled down."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def encode_image(image: Image.Image, fmt: str = "JPEG", quality: int = 95) -> bytes:
    """Encode an RGB image as JPEG or PNG bytes."""
    buffer = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def data_url(image: Image.Image, fmt: str = "JPEG", quality: int = 95) -> str:
    """A base64 data URL of the image, as OpenAI-compatible chat APIs take it."""
    mime = "image/jpeg" if fmt.upper() in ("JPEG", "JPG") else "image/png"
    return f"data:{mime};base64," + base64.b64encode(encode_image(image, fmt, quality)).decode("ascii")

