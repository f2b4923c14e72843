"""Qwen2.5-VL, the family Mini-o3 was trained on: 14 px patches merged 2x2 (one token per 28 px square).

Its chat template renders a Mini-o3 conversation exactly as `protocol.render_messages` does, and
its generation prompt is the bare role line. The released processor takes 3,136 to 12,845,056
pixels (Qwen2.5-VL-7B-Instruct's preprocessor_config.json), so the environment's sizes pass
through, rounded to multiples of 28.
"""

from __future__ import annotations

from typing import Any, Callable

from mini_o3.models.backbone import Backbone, mrope_section

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


def tiny_config(spec: Any, token_id: Callable[[str], int], vocab_size: int) -> Any:
    """A Qwen2_5_VLConfig of `spec`'s shape (see `models.tiny.TinySpec`) whose special-token ids are the tokenizer's."""
    from transformers import Qwen2_5_VLConfig

    endoftext, im_end = token_id("<|endoftext|>"), token_id("<|im_end|>")
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": spec.text_hidden,
            "intermediate_size": spec.text_intermediate,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_kv_heads,
            "max_position_embeddings": 32768,
            "max_window_layers": spec.text_layers,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section(spec.head_dim)},
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
            # The default names layers 7-31 as full-attention ones; a tiny tower must name its own.
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


BACKBONE = Backbone(
    name="qwen2.5-vl",
    model_types=("qwen2_5_vl", "qwen2_vl"),
    model_class="Qwen2_5_VLForConditionalGeneration",
    reference="Qwen/Qwen2.5-VL-7B-Instruct",
    patch_size=14,
    merge_size=2,
    image_mean=(0.48145466, 0.4578275, 0.40821073),
    image_std=(0.26862954, 0.26130258, 0.27577711),
    processor_min_pixels=3136,
    processor_max_pixels=12_845_056,
    chat_template=CHAT_TEMPLATE,
    build_tiny_config=tiny_config,
)
"""Qwen2.5-VL (and Qwen2-VL, whose checkpoints load the same way)."""
