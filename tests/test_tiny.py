"""The offline tiny Qwen2.5-VL: build, save, reload, tokenizer and processor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.models import tiny
from mini_o3.agent.policy import PolicyError

QWEN_7B_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}
"""preprocessor_config.json as Qwen2.5-VL-7B-Instruct publishes it."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_tiny(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


def _conversation(image: Image.Image) -> list[dict]:
    return [
        protocol.system_message(),
        protocol.first_user_message(image, "What is the colour of the small sign?"),
        protocol.assistant_message('<think>Zoom.</think>\n<grounding>{"bbox_2d": [0.1, 0.2, 0.5, 0.6], "source": "original_image"}</grounding>'),
        protocol.observation_message(image, 0, 1),
        protocol.assistant_message("<think>Bad.</think>\n<grounding>oops</grounding>"),
        protocol.error_message("the content of <grounding> is not valid JSON"),
    ]


def _model_inputs(image_processor, tokenizer, image: Image.Image) -> dict:
    features = image_processor(images=[image], return_tensors="pt")
    pads = int(features["image_grid_thw"][0].prod()) // 4
    text = protocol.render_messages([protocol.first_user_message(image, "What?")]).replace("<|image_pad|>", "<|image_pad|>" * pads)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    return {
        "input_ids": ids,
        "pixel_values": features["pixel_values"],
        "image_grid_thw": features["image_grid_thw"],
        "mm_token_type_ids": (ids == tokenizer.convert_tokens_to_ids("<|image_pad|>")).long(),
    }


def test_reload_offline_gives_identical_logits(checkpoint: Path) -> None:
    model, tokenizer, image_processor = tiny.load_checkpoint(checkpoint)
    fresh_tokenizer = tiny.build_tokenizer()
    fresh = tiny.build_model(tiny.SIZES["tiny"], fresh_tokenizer, seed=0)
    image = Image.new("RGB", (224, 196), (200, 40, 40))
    inputs = _model_inputs(image_processor, tokenizer, image)
    assert inputs["input_ids"].tolist() == _model_inputs(image_processor, fresh_tokenizer, image)["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, fresh(**inputs).logits)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(image_processor).__name__ == "Qwen2VLImageProcessorPil"


def test_build_is_deterministic_for_a_seed(checkpoint: Path, tmp_path: Path) -> None:
    again = tiny.build_tiny(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "preprocessor_config.json"):
        assert (again / name).read_bytes() == (checkpoint / name).read_bytes(), name
    other = tiny.build_model(tiny.SIZES["tiny"], tiny.build_tokenizer(), seed=1)
    model, _, _ = tiny.load_checkpoint(checkpoint)
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)


def test_config_respects_the_known_gotchas(checkpoint: Path) -> None:
    model, tokenizer, _ = tiny.load_checkpoint(checkpoint)
    config = model.config
    text, vision = config.text_config, config.vision_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert all(0 <= index < vision.depth for index in vision.fullatt_block_indexes)
    assert vision.out_hidden_size == text.hidden_size
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert text.vocab_size >= len(tokenizer)
    for name, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        assert getattr(config, name) == tokenizer.convert_tokens_to_ids(token)
    assert 1_000_000 <= tiny.count_parameters(model) <= 2_000_000
    info = json.loads((checkpoint / tiny.INFO_FILE).read_text())
    assert info["seed"] == 0 and info["parameters"] == tiny.count_parameters(model)


def test_tokenizer_has_qwen_tokens_and_tokenises_protocol_compactly(checkpoint: Path) -> None:
    _, tokenizer, _ = tiny.load_checkpoint(checkpoint)
    for token in tiny.QWEN_SPECIAL_TOKENS + tiny.QWEN_ADDED_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    for text in (protocol.SYSTEM_PROMPT, protocol.error_text("bad box"), "".join(protocol.observation_text_parts(3, 4))):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert len(text) / len(ids) > 4.0  # words are whole tokens, not bytes
    odd = "Ünïcödé ✓ 漢字 \t\r\n 0.125"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd


def test_chat_template_renders_exactly_like_the_protocol(checkpoint: Path) -> None:
    _, tokenizer, _ = tiny.load_checkpoint(checkpoint)
    messages = _conversation(Image.new("RGB", (64, 64)))
    for generation_prompt in (True, False):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        assert rendered == protocol.render_messages(messages, generation_prompt)


def test_image_processor_limits(checkpoint: Path) -> None:
    _, _, image_processor = tiny.load_checkpoint(checkpoint)
    grid = image_processor(images=[Image.new("RGB", (224, 224))], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 16, 16]]  # 64 image tokens after the 2x2 merge
    big = image_processor(images=[Image.new("RGB", (1400, 1000))], return_tensors="pt")["image_grid_thw"][0]
    assert int(big.prod()) // 4 <= tiny.TINY_MAX_PIXELS // (28 * 28)
    _, _, wider = tiny.load_checkpoint(checkpoint, max_pixels=1000 * 1000)
    grid = wider(images=[Image.new("RGB", (700, 504))], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 36, 50]]


def test_loads_a_directory_in_the_published_qwen_format(checkpoint: Path, tmp_path: Path) -> None:
    real = tmp_path / "qwen-like"
    shutil.copytree(checkpoint, real)
    (real / "preprocessor_config.json").write_text(json.dumps(QWEN_7B_PREPROCESSOR))
    (real / tiny.INFO_FILE).unlink()
    model, tokenizer, image_processor = tiny.load_checkpoint(real)
    assert image_processor.size.shortest_edge == 3136 and image_processor.size.longest_edge == 12845056
    # The environment's 2M-pixel images pass through, rounded to multiples of 28.
    grid = image_processor(images=[Image.new("RGB", (1680, 1190))], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 84, 120]]
    assert model.dtype == torch.float32


@pytest.mark.parametrize("problem", ["missing", "empty", "wrong_type", "broken_weights"])
def test_bad_checkpoint_directory_names_the_directory(checkpoint: Path, tmp_path: Path, problem: str) -> None:
    directory = tmp_path / f"ckpt-{problem}"
    if problem == "empty":
        directory.mkdir()
    elif problem == "wrong_type":
        shutil.copytree(checkpoint, directory)
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    elif problem == "broken_weights":
        shutil.copytree(checkpoint, directory)
        (directory / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(tiny.CheckpointError) as caught:
        tiny.load_checkpoint(directory)
    assert str(directory) in str(caught.value)
    assert isinstance(caught.value, PolicyError)


def test_main_builds_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tiny.main([str(tmp_path / "out"), "--seed", "3"]) == 0
    assert "parameters" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / tiny.INFO_FILE).read_text())["seed"] == 3


@pytest.mark.slow
def test_module_cli_and_small_size(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mini_o3.models.tiny", str(tmp_path / "small"), "--size", "small"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    model, _, _ = tiny.load_checkpoint(tmp_path / "small")
    assert 5_000_000 <= tiny.count_parameters(model) <= 12_000_000
