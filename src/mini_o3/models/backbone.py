"""One interface over the vision-language families we train: what differs between them, in one object.

A `Backbone` holds a family's facts: its model class, its image geometry (patch size and the
2x2 merge, so one image token covers 28 px on Qwen2.5-VL and 32 px on Qwen3-VL and Qwen3.5),
how its chat template renders a Mini-o3 conversation, the tokens that end a turn, and which
part of the model is the vision tower. The protocol strings (system prompt, observation and
error turns, the action grammar) stay the released Mini-o3 checkpoint's on every family; only
the chat markup around them is the family's.

The family is always read from the checkpoint (`config.json`'s `model_type`), never given by
hand: `models.families` has `read_backbone(folder)` for a folder, `backbone_of(model)` for a
loaded model.

Each family lives in its own module (`qwen2_5_vl`, `qwen3_vl`, `qwen3_5`), which also knows how
to build a tiny random model of that family for the tests and the demo.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from mini_o3.agent.policy import PolicyError

IMAGE_PAD = "<|image_pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")
"""Tokens a policy must never write (a random model would otherwise sample them)."""


class CheckpointError(PolicyError):
    """A checkpoint directory that cannot be loaded."""


@dataclass(frozen=True)
class Backbone:
    """A vision-language family: the facts the rest of mini-o3 needs and that differ between families."""

    name: str
    """Our name for the family ("qwen2.5-vl"), used in presets, docs and logs."""
    model_types: tuple[str, ...]
    """`model_type` values in config.json that belong to this family."""
    model_class: str
    """The transformers class of the full model (image-text-to-text)."""
    reference: str
    """The released checkpoint our presets start from (e.g. Qwen/Qwen3-VL-8B-Instruct)."""
    patch_size: int
    """Side of one vision patch in pixels (14 on Qwen2.5-VL, 16 on Qwen3-VL and Qwen3.5)."""
    merge_size: int
    """Patches merged per side into one image token (2 on all three: 2x2 patches a token)."""
    image_mean: tuple[float, float, float]
    """Pixel normalisation mean of the family's image processor."""
    image_std: tuple[float, float, float]
    """Pixel normalisation standard deviation."""
    processor_min_pixels: int
    """The released image processor's smallest image in pixels."""
    processor_max_pixels: int
    """The released image processor's largest image in pixels."""
    chat_template: str
    """The family's chat template (Jinja) as published, written into tiny checkpoints."""
    generation_prefix: str = ""
    """Text the template writes after `<|im_start|>assistant\\n` and before the model's own tokens.

    "" on Qwen2.5-VL and Qwen3-VL-Instruct; "<think>\\n" on Qwen3.5, whose template opens the
    thought for the model. It is template (never trained on), and the model's text follows it.
    """
    trims_content: bool = False
    """The template strips whitespace around each message's content (Qwen3.5 does)."""
    extra_tokens: tuple[str, ...] = ()
    """Added (non-special) tokens of the family's vocabulary beyond Qwen2.5-VL's, e.g. <think>."""
    end_tokens: tuple[str, ...] = (IM_END, ENDOFTEXT)
    """Tokens that end an assistant turn."""
    needs_mm_token_type_ids: bool = True
    """The forward pass needs `mm_token_type_ids` (1 on image pads) for its multimodal rotary positions.

    Qwen2.5-VL silently falls back to 1-D positions without it; Qwen3-VL and Qwen3.5 raise.
    """
    processor_class: str = "Qwen2_5_VLProcessor"
    """The family's stock processor class, the name checkpoints give AutoProcessor (see `models.interop`)."""
    tokenizer_class: str = "Qwen2Tokenizer"
    """The transformers tokenizer class the tiny checkpoint is saved with."""
    build_tiny_config: Callable[[Any, Callable[[str], int], int], Any] | None = field(default=None, compare=False, repr=False)
    """(spec, token_id, vocab_size) -> a transformers config of a tiny model of this family."""

    # ------------------------------------------------------------ images

    @property
    def pixels_per_token_side(self) -> int:
        """Side in pixels of the square one image token covers (patch_size x merge_size: 28 or 32)."""
        return self.patch_size * self.merge_size

    def processed_size(self, width: int, height: int, min_pixels: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
        """(width, height) the family's processor resizes an image to: sides rounded to `pixels_per_token_side`.

        The processor's own rule (transformers' `smart_resize`): round each side to the nearest
        multiple, then scale down below `max_pixels` (flooring) or up above `min_pixels` (ceiling).
        """
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        low = self.processor_min_pixels if min_pixels is None else min_pixels
        high = self.processor_max_pixels if max_pixels is None else max_pixels
        new_height, new_width = smart_resize(height, width, self.pixels_per_token_side, low, high)
        return new_width, new_height

    def image_tokens(self, width: int, height: int, min_pixels: int | None = None, max_pixels: int | None = None) -> int:
        """`<|image_pad|>` tokens an image shown at width x height costs (the two vision markers excluded)."""
        new_width, new_height = self.processed_size(width, height, min_pixels, max_pixels)
        unit = self.pixels_per_token_side
        return (new_width // unit) * (new_height // unit)

    def pixels_for_tokens(self, tokens: int) -> int:
        """The pixel budget that costs about `tokens` image tokens in this family."""
        return tokens * self.pixels_per_token_side**2

    # ------------------------------------------------------------ chat markup

    @property
    def assistant_header(self) -> str:
        """What opens an assistant turn before the model writes: the role line and the template's prefix."""
        return f"{IM_START}assistant\n{self.generation_prefix}"

    def assistant_body(self, text: str) -> str:
        """The part of an assistant text the model writes: `text` without the opener the template supplies.

        On Qwen3.5 a Mini-o3 turn "<think>...</think>..." loses its leading "<think>" (and one
        newline after it), which the template's generation prompt already wrote.
        """
        opener = self.generation_prefix.rstrip("\n")
        if opener and text.startswith(opener):
            text = text[len(opener) :]
            if text.startswith("\n"):
                text = text[1:]
        return text

    def render_messages(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render protocol chat messages as this family's template does, one pad token per image.

        Assistant turns are rendered as written (header, then `assistant_body`), so a rendering
        only ever grows by appending: the prompt of turn k+1 starts with the prompt of turn k and
        the tokens sampled there. (Qwen3.5's published template drops the thoughts of assistant
        turns before the last user turn; an agent whose every observation is a user turn would
        then lose all its earlier reasoning and train off-policy, so we keep them, as Mini-o3 does.)
        """
        from mini_o3.agent.protocol import IMAGE_PLACEHOLDER

        out = []
        for message in messages:
            role = message["role"]
            body = "".join(IMAGE_PLACEHOLDER if part["type"] == "image" else part["text"] for part in message["content"])
            if role == "assistant":
                out.append(f"{self.assistant_header}{self.assistant_body(body)}{IM_END}\n")
                continue
            if self.trims_content:
                body = body.strip()
            out.append(f"{IM_START}{role}\n{body}{IM_END}\n")
        if add_generation_prompt:
            out.append(self.assistant_header)
        return "".join(out)

    # ------------------------------------------------------------ model

    def vision_tower(self, model: Any) -> Any:
        """The vision encoder with its merger (projector): what SFT freezes."""
        visual = getattr(getattr(model, "model", model), "visual", None)
        if visual is None:
            raise ValueError(f"{type(model).__name__} has no vision tower at model.visual; a {self.name} model is needed")
        return visual

    def freeze_vision(self, model: Any) -> int:
        """Freeze the vision tower and its merger; return how many parameters were frozen."""
        frozen = 0
        for parameter in self.vision_tower(model).parameters():
            parameter.requires_grad_(False)
            frozen += parameter.numel()
        return frozen

    def image_processor(self, min_pixels: int | None = None, max_pixels: int | None = None, **settings: Any) -> Any:
        """This family's image processor on the PIL backend (no torchvision)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        low = self.processor_min_pixels if min_pixels is None else min_pixels
        high = self.processor_max_pixels if max_pixels is None else max_pixels
        if low > high:
            raise ValueError(f"min_pixels ({low}) must not exceed max_pixels ({high})")
        values = {
            "patch_size": self.patch_size,
            "temporal_patch_size": 2,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        values.update(settings)
        return Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=high, **values)

    def processor(self, tokenizer: Any, image_processor: Any) -> Any:
        """The family's transformers processor without a video processor (no torchvision), for trainers that want one."""
        from mini_o3.models.processors import image_only_processor

        return image_only_processor(self, tokenizer, image_processor)


def template_generation_prefix(tokenizer: Any) -> str | None:
    """What the tokenizer's own chat template writes after `<|im_start|>assistant\n` in a generation prompt.

    None when the tokenizer has no template or it does not render a probe conversation.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        text = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001 - a user's template may raise anything; we then keep the family's
        return None
    header = f"{IM_START}assistant\n"
    return text.rsplit(header, 1)[1] if isinstance(text, str) and header in text else None


def with_checkpoint_template(backbone: Backbone, tokenizer: Any) -> Backbone:
    """`backbone` with the generation prefix the checkpoint's own template writes, where it has one.

    So a Qwen3-VL-Thinking checkpoint (model_type qwen3_vl, a template that opens "<think>\n")
    is rendered as its template does, and Qwen3.5 with `enable_thinking` off by default would be too.
    """
    prefix = template_generation_prefix(tokenizer)
    if prefix is None or prefix == backbone.generation_prefix:
        return backbone
    return dataclasses.replace(backbone, generation_prefix=prefix)


def mrope_section(rotary_dim: int) -> list[int]:
    """Rotary sections (time, height, width) summing to rotary_dim / 2, in Qwen's 16:24:24 ratio."""
    half = rotary_dim // 2
    time = half // 4
    height = (half - time) // 2
    return [time, height, half - time - height]


def round_vocab(size: int) -> int:
    """A vocabulary size padded up to a multiple of 64, as the released models pad theirs."""
    return math.ceil(size / 64) * 64
