"""An offline tiny Qwen2.5-VL (model, tokenizer, image processor) and a loader for any Qwen2.5-VL checkpoint.

`build_tiny(dir)` writes a random-weight Qwen2.5-VL built from a config, a byte-level BPE
tokenizer trained here on a built-in corpus (every protocol string plus the Qwen special
tokens, so prompts tokenise compactly), the Qwen2.5-VL chat template and a PIL image
processor (no torchvision). Everything reloads offline with `load_checkpoint(dir)`, which also
loads a real Qwen2.5-VL-class checkpoint directory (e.g. Qwen2.5-VL-7B-Instruct).

Image sizes: the environment's `ResizePolicy` decides the size of every image the model is
shown (at most 2M pixels by default); the image processor then rounds each side to a multiple
of 28 (`smart_resize`) and shrinks anything above its own `max_pixels`. A real checkpoint
keeps its processor limits (Qwen2.5-VL-7B: 3,136 to 12,845,056, so the environment's sizes
pass through, rounded). The tiny checkpoint caps images at `TINY_MAX_PIXELS` = 448x448
(256 image tokens at most; a 224x224 image costs 64) so that CPU runs stay fast; pair it with
a small `ResizePolicy` (e.g. max_pixels 224*224) to keep episodes cheap. Every image costs
(h/28)*(w/28) `<|image_pad|>` tokens after rounding, plus the two vision markers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import Qwen2_5_VLProcessor

from mini_o3.agent import protocol
from mini_o3.agent.policy import PolicyError
from mini_o3.models.interop import SAMPLING_DEFAULTS, STOCK_PROCESSOR_CLASS, mark_for_saving

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""Qwen2.5-VL's special tokens, in the order of its vocabulary."""

QWEN_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
"""Qwen2.5-VL's added tokens that are not special (kept in decoded text)."""

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The Qwen2.5-VL chat template; renders protocol messages byte-identically to `protocol.render_messages`."""

TINY_MIN_PIXELS = 28 * 28 * 4
"""The tiny processor's smallest image (56x56, 4 image tokens), Qwen's own default."""
TINY_MAX_PIXELS = 448 * 448
"""The tiny processor's largest image: 256 image tokens, to keep CPU runs fast."""

INFO_FILE = "mini_o3_tiny.json"


@dataclass(frozen=True)
class TinySpec:
    """The shape of a tiny Qwen2.5-VL."""

    text_hidden: int = 128
    """Hidden size of the language model (also the vision merger's output size)."""
    text_layers: int = 2
    """Decoder layers."""
    text_heads: int = 4
    """Attention heads; head_dim = text_hidden / text_heads."""
    text_kv_heads: int = 2
    """Key-value heads (grouped-query attention, as Qwen2.5-VL)."""
    text_intermediate: int = 256
    """MLP width of the language model."""
    vision_hidden: int = 128
    """Hidden size of the vision tower."""
    vision_depth: int = 2
    """Vision blocks; the last one uses full attention, the others windowed."""
    vision_heads: int = 4
    """Vision attention heads."""
    vision_intermediate: int = 256
    """MLP width of the vision tower."""
    bpe_vocab: int = 2048
    """Target size of the trained BPE vocabulary (the built-in corpus supports about 960)."""

    @property
    def head_dim(self) -> int:
        """Per-head width of the language model."""
        return self.text_hidden // self.text_heads

    def mrope_section(self) -> list[int]:
        """Rotary sections for (time, height, width), summing to head_dim / 2 (Qwen's 16:24:24 ratio)."""
        half = self.head_dim // 2
        time = half // 4
        height = (half - time) // 2
        return [time, height, half - time - height]


SIZES: dict[str, TinySpec] = {
    "tiny": TinySpec(),
    "small": TinySpec(
        text_hidden=256,
        text_layers=4,
        text_heads=8,
        text_kv_heads=4,
        text_intermediate=768,
        vision_hidden=256,
        vision_depth=4,
        vision_heads=4,
        vision_intermediate=512,
    ),
}
"""Presets: "tiny" (1.24M parameters), "small" (7.66M)."""


class CheckpointError(PolicyError):
    """A checkpoint directory that cannot be loaded."""


# ---------------------------------------------------------------- tokenizer

_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey", "gray", "cyan", "magenta")
_SHAPES = ("square", "circle", "triangle", "star", "ring", "cross", "diamond", "rectangle", "dot", "line")
_OBJECTS = (
    "sign", "car", "person", "dog", "cat", "bird", "tree", "house", "window", "door", "flag", "clock", "bottle",
    "cup", "book", "phone", "bag", "hat", "shirt", "glove", "umbrella", "bicycle", "boat", "lamp", "chair", "table",
    "number", "letter", "word", "text", "logo", "target", "object", "region", "image", "picture", "photo", "scene",
)
_PLACES = (
    "top left", "top right", "bottom left", "bottom right", "center", "centre", "middle", "left side", "right side",
    "upper half", "lower half", "corner", "edge", "background", "foreground",
)
_ANSWERS = ("A", "B", "C", "D", "E", "yes", "no", "none", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10")
_THOUGHTS = (
    "I need to find the {obj} in the image.",
    "The {obj} is too small to see clearly, so I will zoom in on the {place}.",
    "Let me zoom in on the {place} of the original image.",
    "I can see a {colour} {shape} near the {place}.",
    "There is nothing here; I should go back and try another region.",
    "I am still looking for the {colour} {obj}.",
    "The observation shows the {obj} clearly: it is {colour}.",
    "Now I can see that the answer is {answer}.",
    "The {obj} in observation_{n} is {colour}, so the answer is {answer}.",
    "Zooming in further on observation_{n} should help.",
    "The region is empty. Let me check the {place} instead.",
    "I cannot see the {obj} yet. The target may be in the {place}.",
)
_QUESTIONS = (
    "What is the colour of the {obj}?",
    "What is the color of the small {obj}?",
    "What is written on the small {obj}?",
    "How many {colour} {shape}s are there?",
    "Is there a {colour} {shape} in the {place}?",
    "Where is the {colour} {obj}?",
    "Which {obj} is {colour}?",
    "What is the material of the {obj}?",
    "Is the {obj} on the left or right side of the {obj2}?",
    "What shape is the {colour} target?",
)
_ERRORS = (
    "the <grounding> tag is empty; write " + protocol.ACTION_EXAMPLE,
    '"bbox_2d" must be a list of 4 numbers [x0, y0, x1, y1], got [0.1, 0.2]',
    "'observation_3' does not exist yet; the images you can zoom in are: original_image, observation_1",
    "invalid bbox_2d [0.5, 0.5, 0.5, 0.5] on original_image: the box selects a region of 0x0 pixels; x1 must be "
    "greater than x0 and y1 greater than y0, with coordinates relative to the source image (between 0 and 1)",
    "the content of <grounding> is not valid JSON",
)


def tokenizer_corpus() -> list[str]:
    """The built-in training text: every protocol string, many times, plus short questions and thoughts."""
    import random

    rng = random.Random(0)
    texts: list[str] = []
    fixed = [
        protocol.SYSTEM_PROMPT,
        protocol.OBSERVATION_TAIL,
        protocol.ERROR_TAIL,
        protocol.ACTION_EXAMPLE,
        "system\nuser\nassistant\n",
        "Answer with the option's letter from the given choices directly.",
        "Answer the question using a single word or phrase.",
        "The best answer is",
    ]
    texts += fixed * 40
    for turn in range(32):
        head, tail = protocol.observation_text_parts(turn, turn + 1)
        texts += [head + "." + tail] * 2
    texts += [protocol.error_text(error) for error in _ERRORS] * 8
    for _ in range(600):
        slots = {
            "obj": rng.choice(_OBJECTS),
            "obj2": rng.choice(_OBJECTS),
            "colour": rng.choice(_COLOURS),
            "shape": rng.choice(_SHAPES),
            "place": rng.choice(_PLACES),
            "answer": rng.choice(_ANSWERS),
            "n": rng.randint(1, 12),
        }
        question = rng.choice(_QUESTIONS).format(**slots)
        options = "".join(f"\n({letter}) {rng.choice(_COLOURS)}" for letter in "ABCD")
        texts.append("\n" + question + options + "\nAnswer with the option's letter from the given choices directly.")
        thought = " ".join(rng.choice(_THOUGHTS).format(**slots) for _ in range(2))
        box = tuple(sorted(round(rng.random(), rng.choice((1, 2, 3))) for _ in range(2)))
        box2 = tuple(sorted(round(rng.random(), rng.choice((1, 2, 3))) for _ in range(2)))
        source = protocol.ORIGINAL_SOURCE if rng.random() < 0.6 else f"observation_{slots['n']}"
        zoom = protocol.Zoom((box[0], box2[0], box[1], box2[1]), source)
        texts.append(f"<think>{thought}</think>\n{protocol.render_zoom(zoom)}")
        texts.append(f"<think>{thought}</think>\n{protocol.render_answer(slots['answer'])}")
    return texts


def build_tokenizer(vocab_size: int = 2048) -> Any:
    """A Qwen2-style byte-level BPE trained on `tokenizer_corpus()`, with Qwen's special tokens and chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    backend = Tokenizer(
        BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_corpus(), trainer)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in QWEN_SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in QWEN_ADDED_TOKENS])
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# ---------------------------------------------------------------- image processor and model


def build_image_processor(min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS) -> Any:
    """A Qwen2-VL image processor on the PIL backend (no torchvision): 14 px patches, 2x2 merge."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2)


def build_config(spec: TinySpec, tokenizer: Any) -> Any:
    """A Qwen2_5_VLConfig of `spec`'s shape whose special-token ids are `tokenizer`'s."""
    from transformers import Qwen2_5_VLConfig

    def token_id(token: str) -> int:
        return tokenizer.convert_tokens_to_ids(token)

    vocab = -(-len(tokenizer) // 64) * 64
    endoftext, im_end = token_id("<|endoftext|>"), token_id("<|im_end|>")
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": spec.text_hidden,
            "intermediate_size": spec.text_intermediate,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_kv_heads,
            "max_position_embeddings": 32768,
            "max_window_layers": spec.text_layers,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": spec.mrope_section()},
            "bos_token_id": endoftext,
            "eos_token_id": im_end,
            "pad_token_id": endoftext,
        },
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_intermediate,
            "num_heads": spec.vision_heads,
            "out_hidden_size": spec.text_hidden,
            "fullatt_block_indexes": list(range(spec.vision_depth - 1, spec.vision_depth)),
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def generation_config(tokenizer: Any) -> Any:
    """Qwen2.5-VL's end tokens in `tokenizer`'s ids (a turn ends at <|im_end|> or <|endoftext|>), sampling as mini-o3 does."""
    from transformers import GenerationConfig

    endoftext, im_end = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")
    return GenerationConfig(bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext, **SAMPLING_DEFAULTS)


def build_model(spec: TinySpec, tokenizer: Any, seed: int = 0) -> Any:
    """A random-weight Qwen2_5_VLForConditionalGeneration, the same for the same seed."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = build_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = generation_config(tokenizer)
    return model.eval()


def count_parameters(model: Any) -> int:
    """Parameters of a model (tied weights counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def build_tiny(
    out_dir: str | Path,
    seed: int = 0,
    size: str = "tiny",
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
) -> Path:
    """Write a random tiny Qwen2.5-VL checkpoint (model, tokenizer, image processor) to `out_dir` and return it."""
    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    spec = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.bpe_vocab)
    image_processor = build_image_processor(min_pixels, max_pixels)
    model = build_model(spec, tokenizer, seed)
    mark_for_saving(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    info = {"size": size, "seed": seed, "spec": asdict(spec), "parameters": count_parameters(model), "tokenizer_size": len(tokenizer)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


# ---------------------------------------------------------------- loading


def load_checkpoint(
    path: str | Path,
    device: str = "cpu",
    dtype: Any = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image_processor) from a tiny or real Qwen2.5-VL-class checkpoint directory, offline.

    `dtype` defaults to float32 on CPU and bfloat16 elsewhere; `min_pixels` / `max_pixels`
    override the processor's own limits. The processor is always the PIL one (no torchvision).
    """
    import torch

    directory = Path(path)
    _check_directory(directory)
    if dtype is None:
        dtype = torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    elif isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    try:
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(directory, dtype=dtype, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - safetensors, json and transformers each raise their own types
        raise CheckpointError(
            f"cannot load the checkpoint in {directory}: {error} (a Qwen2.5-VL-class directory needs config.json, "
            "the weights (*.safetensors) and the tokenizer files)"
        ) from error
    model = model.to(device).eval()
    mark_for_saving(model, tokenizer)  # whatever saves them next (SFT, RL, pre-training) writes files other tools read right
    image_processor = _load_image_processor(directory, min_pixels, max_pixels)
    return model, tokenizer, image_processor


def _check_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist (build one with `python -m mini_o3.models.tiny {directory}`)")
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint directory {directory} has no {' or '.join(missing)}; point at a Qwen2.5-VL-class model "
            "folder (as downloaded from the Hub) or build a tiny one with `python -m mini_o3.models.tiny DIR`"
        )
    try:
        model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {directory / 'config.json'}: {error}") from error
    if model_type not in ("qwen2_5_vl", "qwen2_vl"):
        raise CheckpointError(f"checkpoint {directory} is a {model_type!r} model; a Qwen2.5-VL-class model is needed (qwen2_5_vl or qwen2_vl)")


def _load_image_processor(directory: Path, min_pixels: int | None, max_pixels: int | None) -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    try:
        settings = json.loads((directory / "preprocessor_config.json").read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {directory / 'preprocessor_config.json'}: {error}") from error
    size = settings.get("size") or {}
    low = min_pixels or settings.get("min_pixels") or size.get("shortest_edge") or TINY_MIN_PIXELS
    high = max_pixels or settings.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280
    keys = (
        "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "resample",
        "do_resize", "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb",
    )
    return Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=high, **{key: settings[key] for key in keys if key in settings})


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor with no video processor, so it needs no torchvision.

    It saves under the stock name (`Qwen2_5_VLProcessor`), so that other tools load checkpoints
    with the family's processor (see mini_o3.models.interop); only mini-o3 makes this subclass.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """processor_config.json's content, naming the stock processor."""
        return {**super().to_dict(), "processor_class": STOCK_PROCESSOR_CLASS}

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> Any:
        """Save as Qwen2_5_VLProcessor would: the base class wrote this class's name into tokenizer_config.json, so write it again."""
        saved = super().save_pretrained(save_directory, **kwargs)
        mark_for_saving(tokenizer=self.tokenizer)
        self.tokenizer.save_pretrained(save_directory)
        return saved


def build_processor(tokenizer: Any, image_processor: Any) -> ImageOnlyQwen2_5_VLProcessor:
    """A Qwen2.5-VL processor (tokenizer + image processor, no video) for trainers that want one object."""
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template or CHAT_TEMPLATE)


def main(argv: list[str] | None = None) -> int:
    """`python -m mini_o3.models.tiny OUT_DIR [--seed N] [--size tiny|small]`."""
    parser = argparse.ArgumentParser(prog="python -m mini_o3.models.tiny", description="Build an offline tiny random Qwen2.5-VL checkpoint.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--max-pixels", type=int, default=TINY_MAX_PIXELS, help="The image processor's largest image in pixels.")
    args = parser.parse_args(argv)
    out = build_tiny(args.out_dir, seed=args.seed, size=args.size, max_pixels=args.max_pixels)
    info = json.loads((out / INFO_FILE).read_text())
    print(f"wrote {out}: {info['parameters']:,} parameters, {info['tokenizer_size']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
