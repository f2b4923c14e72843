"""The families' transformers processors without a video processor, so that none needs torchvision.

Trainers (TRL) want one processor object; our own encoders never call it. Video is not part of
Mini-o3, and the families' video processors import torchvision, which this project avoids.
Each saves under its family's stock name (`Qwen2_5_VLProcessor`, `Qwen3VLProcessor`), so that
other tools load checkpoints with the family's processor (see mini_o3.models.interop); only
mini-o3 makes these subclasses.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor

from mini_o3.models.interop import mark_for_saving


class _StockNamed:
    """Saves as the stock class would: processor_config.json and tokenizer_config.json name `STOCK`."""

    STOCK = ""

    def to_dict(self) -> dict[str, Any]:
        """processor_config.json's content, naming the stock processor."""
        return {**super().to_dict(), "processor_class": self.STOCK}  # type: ignore[misc]

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> Any:
        """Save; the base class wrote this class's name into tokenizer_config.json, so write it again."""
        saved = super().save_pretrained(save_directory, **kwargs)  # type: ignore[misc]
        mark_for_saving(tokenizer=self.tokenizer, processor_class=self.STOCK)  # type: ignore[attr-defined]
        self.tokenizer.save_pretrained(save_directory)  # type: ignore[attr-defined]
        return saved


class ImageOnlyQwen2_5_VLProcessor(_StockNamed, Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor with no video processor."""

    STOCK = "Qwen2_5_VLProcessor"

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen3VLProcessor(_StockNamed, Qwen3VLProcessor):
    """Qwen3-VL's processor (also Qwen3.5's) with no video processor."""

    STOCK = "Qwen3VLProcessor"

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def image_only_processor(backbone: Any, tokenizer: Any, image_processor: Any) -> Any:
    """The processor of `backbone`'s family over `tokenizer` and `image_processor`, with the family's template."""
    cls = ImageOnlyQwen2_5_VLProcessor if backbone.processor_class == "Qwen2_5_VLProcessor" else ImageOnlyQwen3VLProcessor
    return cls(image_processor, tokenizer, chat_template=tokenizer.chat_template or backbone.chat_template)
