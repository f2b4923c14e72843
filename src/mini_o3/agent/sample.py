"""One question about one image: the unit every loader yields and every episode runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Sample:
    """A question about one image, with its ground truth.

    `image` is a path (loaded lazily by the environment; HR-Bench's base64 images are decoded
    once into a cache folder) or an in-memory PIL image. `options` holds multiple-choice
    texts keyed by letter ("A" -> "red"); the question text already lists them, as the
    benchmarks write it. `boxes` are target boxes in original-image pixels (x0, y0, x1, y1).
    """

    id: str
    image: Path | Any
    question: str
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    source: str = ""
    split: str = ""
    category: str = ""
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_multiple_choice(self) -> bool:
        """True when the answer is one of `options`' letters."""
        return bool(self.options)

    def image_name(self) -> str:
        """A short name for the image, for logs and file names."""
        return Path(self.image).name if isinstance(self.image, (str, Path)) else f"{self.id}.png"
