"""Offline tiny models of each supported family (model, tokenizer, image processor) and a loader for any checkpoint.

`build_tiny(dir, family=...)` writes a random-weight model of one family (Qwen2.5-VL by default,
Qwen3-VL, Qwen3.5; see `models.backbone`) built from a config, a byte-level BPE tokenizer
trained here on a built-in corpus (every protocol string plus the family's special tokens, so
prompts tokenise compactly), the family's chat template and a PIL image processor (no
torchvision). Everything reloads offline with `load_checkpoint(dir)`, which also loads a real
checkpoint directory of a supported family (e.g. Qwen2.5-VL-7B-Instruct, Qwen3-VL-8B-Instruct).

Image sizes: the environment's `ResizePolicy` decides the size of every image the model is
shown (at most 2M pixels by default); the image processor then rounds each side to a multiple
of the family's token side (28 px on Qwen2.5-VL, 32 px on Qwen3-VL and Qwen3.5: `smart_resize`)
and shrinks anything above its own `max_pixels`. A real checkpoint keeps its processor limits.
The tiny checkpoints cap images at `TINY_MAX_PIXELS` = 448x448 (256 image tokens at most on
Qwen2.5-VL, 196 on the 32 px families) so that CPU runs stay fast; pair one with a small
`ResizePolicy` (e.g. max_pixels 224*224) to keep episodes cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mini_o3.agent import protocol
from mini_o3.models.backbone import Backbone, CheckpointError, round_vocab  # noqa: F401 - CheckpointError is re-exported
from mini_o3.models.families import backbone_named, read_backbone
from mini_o3.models.processors import ImageOnlyQwen2_5_VLProcessor  # noqa: F401 - re-exported
from mini_o3.models.qwen2_5_vl import CHAT_TEMPLATE  # noqa: F401 - re-exported
from mini_o3.models.interop import SAMPLING_DEFAULTS, mark_for_saving

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

TINY_MIN_PIXELS = 28 * 28 * 4
"""The tiny Qwen2.5-VL processor's smallest image (56x56, 4 image tokens), Qwen's own default."""
DEFAULT_FAMILY = "qwen2.5-vl"
"""The family `build_tiny` makes unless told otherwise (the paper's)."""
TINY_MAX_PIXELS = 448 * 448
"""The tiny processor's largest image: 256 image tokens, to keep CPU runs fast."""

INFO_FILE = "mini_o3_tiny.json"


def tiny_min_pixels(family: str = DEFAULT_FAMILY) -> int:
    """The tiny processor's smallest image: 2x2 image tokens of the family (56x56 or 64x64)."""
    return backbone_named(family).pixels_per_token_side ** 2 * 4


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


def build_tokenizer(vocab_size: int = 2048, family: str = DEFAULT_FAMILY) -> Any:
    """A Qwen-style byte-level BPE trained on `tokenizer_corpus()`, with the family's special tokens and chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    backbone = backbone_named(family)
    tokenizer_class: Any = Qwen2Tokenizer
    pattern = PRETOKENIZE_REGEX
    if backbone.tokenizer_class == "Qwen3_5Tokenizer":
        from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX as QWEN3_5_REGEX
        from transformers.models.qwen3_5.tokenization_qwen3_5 import Qwen3_5Tokenizer

        tokenizer_class, pattern = Qwen3_5Tokenizer, QWEN3_5_REGEX

    backend = Tokenizer(
        BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
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
    added = QWEN_ADDED_TOKENS + backbone.extra_tokens
    backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in added])
    tokenizer = tokenizer_class(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
        padding_side="left",
    )
    tokenizer.chat_template = backbone.chat_template
    return tokenizer


# ---------------------------------------------------------------- image processor and model


def build_image_processor(min_pixels: int | None = None, max_pixels: int = TINY_MAX_PIXELS, family: str = DEFAULT_FAMILY) -> Any:
    """The family's image processor on the PIL backend (no torchvision): 14 or 16 px patches, 2x2 merge."""
    low = tiny_min_pixels(family) if min_pixels is None else min_pixels
    if low > max_pixels:
        raise ValueError(f"min_pixels ({low}) must not exceed max_pixels ({max_pixels})")
    return backbone_named(family).image_processor(low, max_pixels)


def build_config(spec: TinySpec, tokenizer: Any, family: str = DEFAULT_FAMILY) -> Any:
    """A config of `family` in `spec`'s shape whose special-token ids are `tokenizer`'s."""
    backbone = backbone_named(family)
    return backbone.build_tiny_config(spec, tokenizer.convert_tokens_to_ids, round_vocab(len(tokenizer)))


def generation_config(tokenizer: Any) -> Any:
    """The Qwen families' end tokens in `tokenizer`'s ids (a turn ends at <|im_end|> or <|endoftext|>), sampling as mini-o3 does."""
    from transformers import GenerationConfig

    endoftext, im_end = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")
    return GenerationConfig(bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext, **SAMPLING_DEFAULTS)


def build_model(spec: TinySpec, tokenizer: Any, seed: int = 0, family: str = DEFAULT_FAMILY) -> Any:
    """A random-weight model of `family` (e.g. Qwen2_5_VLForConditionalGeneration), the same for the same seed."""
    import torch
    import transformers

    config = build_config(spec, tokenizer, family)
    model_class = getattr(transformers, backbone_named(family).model_class)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.generation_config = generation_config(tokenizer)
    return model.eval()


def count_parameters(model: Any) -> int:
    """Parameters of a model (tied weights counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def build_tiny(
    out_dir: str | Path,
    seed: int = 0,
    size: str = "tiny",
    min_pixels: int | None = None,
    max_pixels: int = TINY_MAX_PIXELS,
    family: str = DEFAULT_FAMILY,
) -> Path:
    """Write a random tiny checkpoint of `family` (model, tokenizer, image processor) to `out_dir` and return it."""
    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    spec = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    family = backbone_named(family).name
    tokenizer = build_tokenizer(spec.bpe_vocab, family)
    image_processor = build_image_processor(min_pixels, max_pixels, family)
    model = build_model(spec, tokenizer, seed, family)
    mark_for_saving(model, tokenizer, backbone_named(family).processor_class)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    info = {"size": size, "seed": seed, "spec": asdict(spec), "parameters": count_parameters(model), "tokenizer_size": len(tokenizer)}
    if family != DEFAULT_FAMILY:  # the Qwen2.5-VL file stays byte-identical to before families existed
        info["family"] = family
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
    """(model, tokenizer, image_processor) from a tiny or real checkpoint directory of a supported family, offline.

    The family comes from config.json (`models.families.read_backbone`). `dtype` defaults to
    float32 on CPU and bfloat16 elsewhere; `min_pixels` / `max_pixels` override the processor's
    own limits. The processor is always the PIL one (no torchvision).
    """
    import torch

    directory = Path(path)
    backbone = _check_directory(directory)
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
            f"cannot load the {backbone.name} checkpoint in {directory}: {error} (a checkpoint directory needs "
            "config.json, the weights (*.safetensors) and the tokenizer files)"
        ) from error
    model = model.to(device).eval()
    mark_for_saving(model, tokenizer, backbone.processor_class)  # whatever saves them next (SFT, RL, pre-training) writes files other tools read right
    image_processor = _load_image_processor(directory, backbone, min_pixels, max_pixels)
    return model, tokenizer, image_processor


def _check_directory(directory: Path) -> Backbone:
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist (build one with `python -m mini_o3.models.tiny {directory}`)")
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint directory {directory} has no {' or '.join(missing)}; point at a model folder of a supported "
            "family (as downloaded from the Hub) or build a tiny one with `python -m mini_o3.models.tiny DIR`"
        )
    return read_backbone(directory)


def _load_image_processor(directory: Path, backbone: Backbone, min_pixels: int | None, max_pixels: int | None) -> Any:
    try:
        settings = json.loads((directory / "preprocessor_config.json").read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {directory / 'preprocessor_config.json'}: {error}") from error
    size = settings.get("size") or {}
    low = min_pixels or settings.get("min_pixels") or size.get("shortest_edge") or backbone.processor_min_pixels
    high = max_pixels or settings.get("max_pixels") or size.get("longest_edge") or backbone.processor_max_pixels
    keys = (
        "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "resample",
        "do_resize", "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb",
    )
    return backbone.image_processor(low, high, **{key: settings[key] for key in keys if key in settings})


def build_processor(tokenizer: Any, image_processor: Any, backbone: Backbone | None = None) -> Any:
    """The family's processor (tokenizer + image processor, no video) for trainers that want one object."""
    return (backbone or backbone_named(DEFAULT_FAMILY)).processor(tokenizer, image_processor)


def main(argv: list[str] | None = None) -> int:
    """`python -m mini_o3.models.tiny OUT_DIR [--seed N] [--size tiny|small] [--family NAME]`."""
    from mini_o3.models.families import backbones

    parser = argparse.ArgumentParser(prog="python -m mini_o3.models.tiny", description="Build an offline tiny random checkpoint of a supported family.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--max-pixels", type=int, default=TINY_MAX_PIXELS, help="The image processor's largest image in pixels.")
    parser.add_argument("--family", choices=list(backbones()), default=DEFAULT_FAMILY, help="The model family.")
    args = parser.parse_args(argv)
    out = build_tiny(args.out_dir, seed=args.seed, size=args.size, max_pixels=args.max_pixels, family=args.family)
    info = json.loads((out / INFO_FILE).read_text())
    print(f"wrote {out}: {info['parameters']:,} parameters, {info['tokenizer_size']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
