"""Qwen3-VL: 16 px patches merged 2x2 (one image token per 32 px square), DeepStack vision features.

What differs from Qwen2.5-VL for Mini-o3:
- image geometry: sides round to multiples of 32, so an image of the same pixels costs about
  0.77x the tokens (784 / 1024); the released processor takes 65,536 to 16,777,216 pixels
  (Qwen3-VL-8B-Instruct's preprocessor_config.json: size.shortest_edge / longest_edge), so
  crops smaller than 256x256 are scaled up by the processor itself;
- pixels are normalised with mean 0.5 and std 0.5 (not CLIP's);
- the forward pass raises without `mm_token_type_ids` when images are given (Qwen2.5-VL
  silently falls back to 1-D positions);
- the vocabulary has <think> and </think> as added tokens.
The Instruct template renders a conversation that opens with a system message exactly as
Qwen2.5-VL's does (it has no default system prompt); its generation prompt is the bare role line.
The Thinking variant (Qwen3-VL-8B-Thinking) is a different template; our presets use Instruct.
"""

from __future__ import annotations

from typing import Any, Callable

from mini_o3.models.backbone import Backbone, mrope_section

CHAT_TEMPLATE = r"""{%- if messages[0].role == 'system' -%}
{{- '<|im_start|>system\n' -}}
{%- if messages[0].content is string -%}{{- messages[0].content -}}
{%- else -%}{%- for part in messages[0].content -%}{%- if 'text' in part -%}{{- part.text -}}{%- endif -%}{%- endfor -%}
{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- endif -%}
{%- set image_count = namespace(value=0) -%}
{%- set video_count = namespace(value=0) -%}
{%- for message in messages -%}
{%- if message.role == 'user' or message.role == 'assistant' -%}
{{- '<|im_start|>' + message.role + '\n' -}}
{%- if message.content is string -%}{{- message.content -}}
{%- else -%}{%- for part in message.content -%}
{%- if message.role == 'user' and (part.type == 'image' or 'image' in part or 'image_url' in part) -%}
{%- set image_count.value = image_count.value + 1 -%}
{%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}
{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
{%- elif message.role == 'user' and (part.type == 'video' or 'video' in part) -%}
{%- set video_count.value = video_count.value + 1 -%}
{%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}
{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
{%- elif 'text' in part -%}{{- part.text -}}
{%- endif -%}
{%- endfor -%}{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"""
"""Qwen3-VL-Instruct's chat template as published, for conversations without tools (we write no tool turns)."""


def tiny_config(spec: Any, token_id: Callable[[str], int], vocab_size: int) -> Any:
    """A Qwen3VLConfig of `spec`'s shape (see `models.tiny.TinySpec`) whose special-token ids are the tokenizer's."""
    from transformers import Qwen3VLConfig

    endoftext, im_end = token_id("<|endoftext|>"), token_id("<|im_end|>")
    return Qwen3VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": spec.text_hidden,
            "intermediate_size": spec.text_intermediate,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_kv_heads,
            "head_dim": spec.head_dim,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": mrope_section(spec.head_dim),
                "mrope_interleaved": True,
            },
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
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            # A 16x16 table, interpolated to each image's grid (the released one is 48x48).
            "num_position_embeddings": 256,
            # DeepStack: features of these vision layers are added to the first text layers.
            "deepstack_visual_indexes": list(range(min(spec.vision_depth - 1, 3))) or [0],
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )


BACKBONE = Backbone(
    name="qwen3-vl",
    model_types=("qwen3_vl",),
    model_class="Qwen3VLForConditionalGeneration",
    reference="Qwen/Qwen3-VL-8B-Instruct",
    patch_size=16,
    merge_size=2,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    processor_min_pixels=65_536,
    processor_max_pixels=16_777_216,
    chat_template=CHAT_TEMPLATE,
    extra_tokens=("<think>", "</think>"),
    processor_class="Qwen3VLProcessor",
    build_tiny_config=tiny_config,
)
"""Qwen3-VL (dense; the Instruct template)."""
