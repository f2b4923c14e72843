"""The families' transformers processors without a video processor, so that none needs torchvision.

Trainers (TRL) want one processor object; our own encoders never call it. Video is not part of
Mini-o3, and the families' video processors import torchvision, which this project avoids.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor with no video processor."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3-VL's processor (also Qwen3.5's) with no video processor."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def image_only_processor(backbone: Any, tokenizer: Any, image_processor: Any) -> Any:
    """The processor of `backbone`'s family over `tokenizer` and `image_processor`, with the family's template."""
    cls = ImageOnlyQwen2_5_VLProcessor if backbone.name == "qwen2.5-vl" else ImageOnlyQwen3VLProcessor
    return cls(image_processor, tokenizer, chat_template=tokenizer.chat_template or backbone.chat_template)
