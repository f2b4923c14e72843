"""Checkpoints mini-o3 writes load in other tools as the family's own: processor class, sampling, thought parsing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.models import tiny
from mini_o3.models.interop import RESPONSE_TEMPLATE, STOCK_PROCESSOR_CLASS
from mini_o3.policies.http import join_reasoning

GROUNDING = '<grounding>{"bbox_2d": [0.1, 0.2, 0.6, 0.7], "source": "original_image"}</grounding>'


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint saved as SFT and RL save theirs: the trainer's processor, then the tokenizer and image processor again."""
    base = tiny.build_tiny(tmp_path_factory.mktemp("tiny") / "base", seed=0)
    model, tokenizer, image_processor = tiny.load_checkpoint(base)
    out = base.parent / "final"
    model.save_pretrained(out)
    tiny.build_processor(tokenizer, image_processor).save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    return out


def test_the_files_name_the_stock_processor(saved: Path) -> None:
    for name in ("processor_config.json", "tokenizer_config.json"):
        assert json.loads((saved / name).read_text())["processor_class"] == STOCK_PROCESSOR_CLASS, name


def test_autoprocessor_picks_the_stock_processor_and_our_loader_still_works(saved: Path) -> None:
    from transformers import AutoProcessor

    image = Image.new("RGB", (120, 90), (200, 40, 40))
    text = protocol.render_messages([protocol.first_user_message(image, "What?")])
    if importlib.util.find_spec("torchvision") is not None:
        processor = AutoProcessor.from_pretrained(saved)
        assert type(processor).__name__ == STOCK_PROCESSOR_CLASS
        assert processor(images=[image], text=[text], return_tensors="pt")["pixel_values"].shape[0] > 0
    else:
        # Without torchvision (this CPU stack) the stock processor cannot build its video half: the
        # error shows AutoProcessor chose it. Naming our subclass made it return the bare tokenizer.
        with pytest.raises(ImportError, match="Torchvision"):
            AutoProcessor.from_pretrained(saved)
    _, tokenizer, image_processor = tiny.load_checkpoint(saved)
    features = tiny.build_processor(tokenizer, image_processor)(images=[image], text=[text], return_tensors="pt")
    assert features["pixel_values"].shape[0] > 0 and int(features["image_grid_thw"][0].prod()) > 0


def test_generation_config_samples_at_the_papers_settings(saved: Path) -> None:
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(saved)
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 1.0, 1.0, 0)
    assert config.eos_token_id == json.loads((saved / "generation_config.json").read_text())["eos_token_id"]


@pytest.mark.parametrize("wrote, closed", [
    ("<think>\nLine one.\nLine two.\n</think>\n<answer>red</answer>", True),
    ("<think> The sign is small. </think>" + GROUNDING, True),
    ("<think>out of tokens in the middle of a thou", False),
    ("<think>ünïcödé 标志</think>  <answer>A</answer>\n", True),
])
def test_transformers_serve_splits_the_thought_so_it_rebuilds_byte_exact(saved: Path, wrote: str, closed: bool) -> None:
    """What `transformers serve` does with a reply: parse the generated ids with the tokenizer's response template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert tokenizer.response_template == RESPONSE_TEMPLATE
    prompt = protocol.render_messages([protocol.system_message(), {"role": "user", "content": [protocol.text_part("q")]}])
    prefix = tokenizer.encode(prompt + "<|im_start|>assistant\n", add_special_tokens=False)
    end = [tokenizer.convert_tokens_to_ids("<|im_end|>")] if closed else []  # an unclosed thought ran out of tokens
    generated = tokenizer.encode(wrote, add_special_tokens=False) + end
    parsed = tokenizer.parse_response(generated, prefix=prefix)
    assert join_reasoning(parsed.get("reasoning_content"), parsed.get("content", ""), closed) == wrote
