"""Training: cold-start SFT and GRPO with over-turn masking, on TRL, over the shared episode engine.

Modules: `masking` (the GRPO maths, pure), `tokenize` (episode -> token ids, mask, images),
`config` (job dataclasses and presets), `sft` (`run_sft`), `rl` (`run_rl`, the GRPOTrainer
subclass), `rollouts` (episode settings, reward, per-step figures), `progress` (JSONL logs,
host memory, learning curves), `vllm_policy` (rollouts from a colocated vLLM engine).

The names below load on first use, so `import mini_o3.train.masking` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Preset": "config",
    "RLJobConfig": "config",
    "SFTJobConfig": "config",
    "load_preset": "config",
    "with_overrides": "config",
    "run_rl": "rl",
    "run_sft": "sft",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mini_o3.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mini_o3.train.{_EXPORTS[name]}"), name)
