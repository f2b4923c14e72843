"""What a checkpoint mini-o3 writes tells other tools (AutoProcessor, `transformers serve`, vLLM) about itself.

- The processor class is the family's stock one, `Qwen2_5_VLProcessor`, in processor_config.json
  and tokenizer_config.json (where AutoProcessor looks), as in the model it was trained from.
  mini-o3's own loader substitutes its image-only subclass (no torchvision needed); naming that
  subclass in the files made AutoProcessor find no such class and fall back to the bare tokenizer
  (transformers models/auto/processing_auto.py, `AutoProcessor.from_pretrained`), so every image
  was dropped.
- generation_config.json samples (`do_sample`) at the settings Mini-o3 trains and evaluates with
  (temperature 1.0, top_p 1.0, no top-k): a server that honours the file (vLLM reads it by
  default, `transformers serve` too) would otherwise decode greedily whatever temperature a
  request asks, and Avg@K would be K copies of one run.
- tokenizer_config.json carries a `response_template` that splits the thought out verbatim:
  `transformers serve` parses replies with it in place of its qwen2_5_vl default, which strips
  whitespace from each field, so `<think>...</think>` rebuilds byte-exact on the client
  (mini_o3.policies.http).
"""

from __future__ import annotations

from typing import Any

STOCK_PROCESSOR_CLASS = "Qwen2_5_VLProcessor"
"""The processor class Qwen2.5-VL checkpoints name; AutoProcessor resolves it."""

SAMPLING_DEFAULTS: dict[str, Any] = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
"""generation_config.json's sampling fields: the paper's temperature 1.0, nothing truncated (top_k 0 is off in vLLM and transformers)."""

RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close": "</think>", "content": "text", "content_args": {"strip": False}},
        "content": {"close_pattern": r"(?:<\|im_end\|>|<\|endoftext\|>)", "content": "text", "content_args": {"strip": False}},
    },
}
"""transformers' response-template form: the thought and the rest, each kept exactly as written."""


def with_sampling_defaults(generation_config: Any) -> Any:
    """`generation_config` (a transformers GenerationConfig) set to sample as a mini-o3 checkpoint should; returned too."""
    for name, value in SAMPLING_DEFAULTS.items():
        setattr(generation_config, name, value)
    return generation_config


def mark_for_saving(model: Any = None, tokenizer: Any = None) -> None:
    """Set what the files a later save_pretrained writes must say: sampling defaults, response template, stock processor."""
    if model is not None and getattr(model, "generation_config", None) is not None:
        with_sampling_defaults(model.generation_config)
    if tokenizer is not None:
        tokenizer.response_template = RESPONSE_TEMPLATE
        tokenizer._set_processor_class(STOCK_PROCESSOR_CLASS)  # the name tokenizer_config.json gives AutoProcessor
