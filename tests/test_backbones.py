"""The backbone interface: each family's image tokens, chat markup and loading, on real tiny models of all three."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.policy import PolicyError, SamplingParams
from mini_o3.models.backbone import CheckpointError
from mini_o3.models.families import backbone_named, backbone_of, backbones, read_backbone
from mini_o3.models.tiny import build_tiny, load_checkpoint
from mini_o3.policies.local import LocalPolicy, PromptEncoder
from mini_o3.train.tokenize import ConversationEncoder

FAMILIES = ("qwen2.5-vl", "qwen3-vl", "qwen3.5")
MODEL_CLASSES = {
    "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3-vl": "Qwen3VLForConditionalGeneration",
    "qwen3.5": "Qwen3_5ForConditionalGeneration",
}


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    family = request.param
    return family, build_tiny(tmp_path_factory.mktemp(family) / "ckpt", seed=0, family=family)


def conversation(image: Image.Image, crop: Image.Image) -> list[dict]:
    """A Mini-o3 conversation: system, question, a zoom, its observation, an error, an answer."""
    return [
        protocol.system_message(),
        protocol.first_user_message(image, "What colour is the sign?"),
        protocol.assistant_message('<think>Small.</think>\n<grounding>{"bbox_2d": [0.1, 0.1, 0.5, 0.5], "source": "original_image"}</grounding>'),
        protocol.observation_message(crop, 0, 1),
        protocol.assistant_message("<think>Bad box.</think>\n<grounding>{}</grounding>"),
        protocol.error_message("the box is empty"),
        protocol.assistant_message("<think>Red.</think>\n<answer>red</answer>"),
    ]


def test_the_registry_knows_three_families_by_name_and_model_type() -> None:
    assert list(backbones()) == list(FAMILIES)
    assert backbone_named("qwen3_vl").name == "qwen3-vl" and backbone_named("qwen2_vl").name == "qwen2.5-vl"
    with pytest.raises(ValueError, match="qwen3.5"):
        backbone_named("llava")


def test_the_family_is_read_from_config_json(tiny: tuple[str, Path], tmp_path: Path) -> None:
    family, checkpoint = tiny
    assert read_backbone(checkpoint).name == family
    model, tokenizer, image_processor = load_checkpoint(checkpoint)
    assert type(model).__name__ == MODEL_CLASSES[family] and backbone_of(model).name == family
    assert image_processor.patch_size == backbone_named(family).patch_size
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (alien / "preprocessor_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="llava.*qwen3-vl"):
        load_checkpoint(alien)


@pytest.mark.parametrize("size", [(224, 160), (500, 300), (100, 700), (33, 1000), (448, 448)])
@pytest.mark.parametrize("family", FAMILIES)
def test_image_tokens_match_what_the_processor_makes(family: str, size: tuple[int, int]) -> None:
    backbone = backbone_named(family)
    processor = backbone.image_processor(min_pixels=4 * backbone.pixels_per_token_side**2, max_pixels=448 * 448)
    grid = processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"][0]
    assert backbone.image_tokens(*size, min_pixels=4 * backbone.pixels_per_token_side**2, max_pixels=448 * 448) == int(grid.prod()) // 4


def test_a_qwen3_token_covers_32_pixels_where_a_qwen2_5_token_covers_28() -> None:
    qwen25, qwen3 = backbone_named("qwen2.5-vl"), backbone_named("qwen3-vl")
    assert (qwen25.pixels_per_token_side, qwen3.pixels_per_token_side) == (28, 32)
    # 224x160 rounds to 224x168 (8x6 tokens) on Qwen2.5-VL and stays 224x160 (7x5) on Qwen3-VL.
    assert qwen25.image_tokens(224, 160, 3136, 10**7) == 48
    assert qwen3.image_tokens(224, 160, 4096, 10**7) == 35
    assert qwen3.pixels_for_tokens(2500) == 2_560_000


def test_rendering_is_the_published_templates(tiny: tuple[str, Path]) -> None:
    family, checkpoint = tiny
    backbone = read_backbone(checkpoint)
    _, tokenizer, _ = load_checkpoint(checkpoint)
    image = Image.new("RGB", (64, 64))
    messages = conversation(image, image)
    first = [messages[0], protocol.first_user_message(image, "What colour is the sign? \n")]  # Qwen3.5's template trims
    assert backbone.render_messages(first) == tokenizer.apply_chat_template(first, tokenize=False, add_generation_prompt=True)
    if family == "qwen3.5":
        assert backbone.render_messages(first).endswith("<|im_start|>assistant\n<think>\n")
        # The template renders a turn after the last user turn as <think>\n{thought}\n</think>\n\n{answer}.
        turn = "The sign is red.\n</think>\n\n<answer>red</answer>"
        closed = first + [protocol.assistant_message(turn)]
        assert backbone.render_messages(closed, False) == tokenizer.apply_chat_template(closed, tokenize=False)
    else:
        assert backbone.render_messages(first) == protocol.render_messages(first)
        full = backbone.render_messages(messages, add_generation_prompt=False)
        assert full == tokenizer.apply_chat_template(messages, tokenize=False) == protocol.render_messages(messages, False)


def test_a_rendering_only_grows_by_appending(tiny: tuple[str, Path]) -> None:
    backbone = read_backbone(tiny[1])
    messages = conversation(Image.new("RGB", (64, 64)), Image.new("RGB", (32, 32)))
    for cut in (3, 5, 7):  # after each assistant turn: the prompt before it + its text + the closing
        before = backbone.render_messages(messages[: cut - 1])
        after = backbone.render_messages(messages[:cut], add_generation_prompt=False)
        assert after.startswith(before)
        assert after[len(before) :] == backbone.assistant_body(messages[cut - 1]["content"][0]["text"]) + "<|im_end|>\n"


def test_a_prompt_encoded_message_by_message_is_the_whole_rendering_tokenised(tiny: tuple[str, Path]) -> None:
    # PromptEncoder (and train.tokenize, verl's EpisodeTokens) encode one message at a time; that
    # must give the ids of the family's rendering of the whole conversation, markup and thought
    # handling included (Qwen3.5's header opens "<think>", its turns lose their own).
    family, checkpoint = tiny
    model, tokenizer, image_processor = load_checkpoint(checkpoint)
    backbone = backbone_of(model)
    encoder = PromptEncoder(tokenizer, image_processor, backbone=backbone)
    messages = conversation(Image.new("RGB", (96, 64)), Image.new("RGB", (64, 64)))
    messages[1]["content"][-1]["text"] += " \n"  # Qwen3.5 trims each message's content
    for cut in range(2, len(messages) + 1):
        for generation_prompt in (True, False):
            prompt = encoder.encode(messages[:cut], generation_prompt)
            pad = prompt.image_token_id
            collapsed = [token for index, token in enumerate(prompt.input_ids) if token != pad or prompt.input_ids[index - 1] != pad]
            assert collapsed == encoder.encode_text(backbone.render_messages(messages[:cut], generation_prompt))
    whole = backbone.render_messages(messages)
    assert whole.count(backbone.assistant_header) == 4
    if family == "qwen3.5":
        assert "<|im_start|>assistant\n<think>\n<think>" not in whole and "sign? \n" not in whole


def test_sft_labels_cover_what_the_model_writes_and_not_the_templates_opener(tiny: tuple[str, Path]) -> None:
    family, checkpoint = tiny
    model, tokenizer, image_processor = load_checkpoint(checkpoint)
    encoder = ConversationEncoder(tokenizer, image_processor, backbone_of(model))
    messages = conversation(Image.new("RGB", (96, 64)), Image.new("RGB", (64, 64)))
    encoded = encoder.encode_messages(messages)
    trained = encoder.decode([token for token, on in zip(encoded.input_ids, encoded.assistant_mask) if on])
    texts = [part["text"] for message in messages if message["role"] == "assistant" for part in message["content"]]
    expected = [text[len("<think>") :] if family == "qwen3.5" else text for text in texts]
    assert trained == "".join(text + "<|im_end|>" for text in expected)
    full = encoder.decode(encoded.input_ids)
    assert full.count("<|im_start|>assistant\n<think>\n") == (3 if family == "qwen3.5" else 0)
    backbone, limits = backbone_of(model), (image_processor.size["shortest_edge"], image_processor.size["longest_edge"])
    assert encoded.image_tokens == [backbone.image_tokens(96, 64, *limits), backbone.image_tokens(64, 64, *limits)]


def test_the_local_policy_generates_on_each_family(tiny: tuple[str, Path]) -> None:
    family, checkpoint = tiny
    messages = [protocol.system_message(), protocol.first_user_message(Image.new("RGB", (200, 120), (200, 40, 40)), "What colour?")]
    with LocalPolicy(checkpoint, max_batch_size=4) as policy:
        assert policy.backbone.name == family
        # The cached engine drives Qwen2.5-VL only (Qwen3-VL's decoder takes its mask and deepstack
        # features otherwise, Qwen3.5's linear-attention layers keep no keys): auto picks generate.
        assert policy.engine == ("cached" if family == "qwen2.5-vl" else "generate")
        if family != "qwen2.5-vl":
            with pytest.raises(PolicyError, match="cached engine does not drive"):
                LocalPolicy((policy.model, policy.tokenizer, policy.image_processor), engine="cached")
        prompt = policy.encode(messages)
        assert sum(prompt.mm_token_type_ids()) == policy.image_tokens(200, 120) > 0
        rendered = policy.encoder.decode(prompt.input_ids, skip_special_tokens=False)
        assert rendered.endswith(backbone_named(family).assistant_header)
        generations = [policy.generate(messages, SamplingParams(max_new_tokens=6, seed=seed, temperature=1.0)) for seed in (0, 0, 1)]
        # The first token's log-prob is the one a teacher-forced forward pass with the image's
        # multimodal positions gives (generation without mm_token_type_ids silently falls back
        # to 1-D positions on every family and would differ).
        ids = torch.tensor([prompt.input_ids])
        with torch.no_grad():
            logits = policy.model(
                input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prompt.pixel_values,
                image_grid_thw=prompt.image_grid_thw, mm_token_type_ids=torch.tensor([prompt.mm_token_type_ids()]),
            ).logits[0, -1]
        expected = torch.log_softmax(logits.float(), dim=-1)[generations[0].token_ids[0]].item()
    assert generations[0].logprobs[0] == pytest.approx(expected, abs=1e-4)
    assert generations[0].token_ids == generations[1].token_ids  # seeded: the same tokens
    assert all(len(g.logprobs) == len(g.token_ids) > 0 for g in generations)
    assert all(value <= 0 for g in generations for value in g.logprobs)


def test_freezing_the_vision_tower_leaves_the_language_model_trainable(tiny: tuple[str, Path]) -> None:
    model, _, _ = load_checkpoint(tiny[1])
    backbone = backbone_of(model)
    frozen = backbone.freeze_vision(model)
    assert frozen == sum(p.numel() for p in backbone.vision_tower(model).parameters()) > 0
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any(".visual." in name for name in trainable)
    assert model.get_input_embeddings().weight.requires_grad


@pytest.mark.parametrize(("preset", "family"), [("qwen3-vl-8b", "qwen3-vl"), ("qwen3.5-9b", "qwen3.5")])
def test_presets_spend_the_papers_image_budget_in_their_familys_tokens(preset: str, family: str) -> None:
    import dataclasses

    from mini_o3.train.config import load_preset

    paper, adapted, backbone = load_preset("qwen2.5-vl-7b"), load_preset(preset), backbone_named(family)
    paper_tokens = paper.rl.image_max_pixels // backbone_named("qwen2.5-vl").pixels_per_token_side ** 2
    assert abs(adapted.rl.image_max_pixels // backbone.pixels_per_token_side**2 - paper_tokens) <= 1
    assert adapted.rl.image_min_pixels == backbone.processor_min_pixels
    # Everything else is the paper's recipe: the departures are the image budget alone.
    for section in ("sft", "rl"):
        ours, theirs = dataclasses.asdict(getattr(adapted, section)), dataclasses.asdict(getattr(paper, section))
        differ = {name for name in ours if ours[name] != theirs[name]}
        assert differ <= {"image_max_pixels", "image_min_pixels"}, differ


def test_a_checkpoint_whose_template_opens_the_thought_is_rendered_so(tmp_path: Path) -> None:
    from mini_o3.models import qwen3_5

    checkpoint = build_tiny(tmp_path / "thinking", seed=0, family="qwen3-vl")
    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    # A Qwen3-VL-Thinking-like checkpoint: model_type qwen3_vl, a template that writes "<think>\n".
    (checkpoint / "chat_template.jinja").write_text(qwen3_5.CHAT_TEMPLATE)
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(config))
    with LocalPolicy(checkpoint) as policy:
        assert policy.backbone.name == "qwen3-vl" and policy.backbone.generation_prefix == "<think>\n"
        prompt = policy.encode([protocol.system_message(), protocol.first_user_message(Image.new("RGB", (64, 64)), "Q?")])
        assert policy.encoder.decode(prompt.input_ids, skip_special_tokens=False).endswith("<|im_start|>assistant\n<think>\n")


def test_checkpoints_name_their_familys_stock_processor(tiny: tuple[str, Path], tmp_path: Path) -> None:
    from mini_o3.models.tiny import build_processor

    family, checkpoint = tiny
    stock = backbone_named(family).processor_class
    assert stock == ("Qwen2_5_VLProcessor" if family == "qwen2.5-vl" else "Qwen3VLProcessor")
    assert json.loads((checkpoint / "tokenizer_config.json").read_text())["processor_class"] == stock
    model, tokenizer, image_processor = load_checkpoint(checkpoint)
    build_processor(tokenizer, image_processor, backbone_of(model)).save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "processor_config.json").read_text())["processor_class"] == stock
    assert json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["processor_class"] == stock
