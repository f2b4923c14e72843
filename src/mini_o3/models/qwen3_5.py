"""Qwen3.5: a natively multimodal hybrid (Gated DeltaNet linear attention with a full-attention
layer every fourth), Qwen3-VL's vision geometry (16 px patches merged 2x2: 32 px a token).

What differs for Mini-o3:
- the chat template opens a thought for the model: the generation prompt is
  `<|im_start|>assistant\\n<think>\\n` (`enable_thinking` on, its default), so a Mini-o3 turn's
  leading "<think>" is template and the model writes from the thought on;
- the template trims each message's content, and drops the thoughts of assistant turns before
  the last user turn; we keep them (see `Backbone.render_messages`);
- the tokenizer is `Qwen3_5Tokenizer` (its own pre-tokenising pattern); the forward pass needs
  `mm_token_type_ids`; `model.model.visual` is the vision tower, as in the other two.
- On CPU the linear-attention layers run transformers' reference PyTorch kernels (correct, slower);
  on GPUs `flash-linear-attention` and `causal-conv1d` are the fast path.
"""

from __future__ import annotations

from typing import Any, Callable

from mini_o3.models.backbone import Backbone, mrope_section

CHAT_TEMPLATE = r"""{%- macro render(content) -%}
{%- if content is string -%}{{- content -}}
{%- elif content is not none -%}{%- for part in content -%}
{%- if part.type == 'image' or 'image' in part or 'image_url' in part -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
{%- elif part.type == 'video' or 'video' in part -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
{%- elif 'text' in part -%}{{- part.text -}}
{%- endif -%}
{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(last_query=-1) -%}
{%- for message in messages -%}{%- if message.role == 'user' -%}{%- set ns.last_query = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- for message in messages -%}
{%- set content = render(message.content) | trim -%}
{%- if message.role == 'system' or message.role == 'user' -%}
{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' -}}
{%- elif message.role == 'assistant' -%}
{%- set reasoning = '' -%}
{%- if message.reasoning_content is string -%}{%- set reasoning = message.reasoning_content -%}
{%- elif '</think>' in content -%}
{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') -%}
{%- set content = content.split('</think>')[-1].lstrip('\n') -%}
{%- endif -%}
{%- if loop.index0 > ns.last_query -%}
{{- '<|im_start|>assistant\n<think>\n' + reasoning | trim + '\n</think>\n\n' + content + '<|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' -}}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\n\n</think>\n\n' -}}{%- else -%}{{- '<think>\n' -}}{%- endif -%}
{%- endif -%}"""
"""Qwen3.5's chat template as published, for conversations without tools (we write no tool turns)."""


def tiny_config(spec: Any, token_id: Callable[[str], int], vocab_size: int) -> Any:
    """A Qwen3_5Config of `spec`'s shape (see `models.tiny.TinySpec`) whose special-token ids are the tokenizer's."""
    from transformers import Qwen3_5Config

    endoftext, im_end = token_id("<|endoftext|>"), token_id("<|im_end|>")
    # One linear-attention layer for every full-attention one, ending on full attention, so that
    # a two-layer model has one of each (the released models: three linear, then one full).
    layer_types = ["linear_attention" if index % 2 == 0 else "full_attention" for index in range(spec.text_layers)]
    partial_rotary = 0.25
    return Qwen3_5Config(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": spec.text_hidden,
            "intermediate_size": spec.text_intermediate,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_kv_heads,
            "head_dim": spec.head_dim,
            "layer_types": layer_types,
            "linear_num_key_heads": spec.text_kv_heads,
            "linear_num_value_heads": spec.text_heads,
            "linear_key_head_dim": spec.head_dim,
            "linear_value_head_dim": spec.head_dim,
            "linear_conv_kernel_dim": 4,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10_000_000.0,
                # Only a quarter of each head is rotated; the sections split that quarter.
                "partial_rotary_factor": partial_rotary,
                "mrope_section": mrope_section(int(spec.head_dim * partial_rotary)),
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
            "num_position_embeddings": 256,
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )


BACKBONE = Backbone(
    name="qwen3.5",
    model_types=("qwen3_5",),
    model_class="Qwen3_5ForConditionalGeneration",
    reference="Qwen/Qwen3.5-9B",
    patch_size=16,
    merge_size=2,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    processor_min_pixels=65_536,
    processor_max_pixels=16_777_216,
    chat_template=CHAT_TEMPLATE,
    generation_prefix="<think>\n",
    trims_content=True,
    extra_tokens=("<think>", "</think>"),
    tokenizer_class="Qwen3_5Tokenizer",
    processor_class="Qwen3VLProcessor",
    build_tiny_config=tiny_config,
)
"""Qwen3.5 (dense hybrid; thinking on, as its template defaults)."""
