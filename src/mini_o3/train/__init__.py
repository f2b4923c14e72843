"""Training: cold-start SFT and GRPO with over-turn masking, on TRL, over the shared episode engine.

Modules: `masking` (the GRPO maths, pure), `tokenize` (episode -> token ids, mask, images),
`config` (job dataclasses and presets), `sft` (`run_sft`), `rl` (`run_rl`, the GRPOTrainer
subclass), `rollouts` (episode settings, reward, per-step figures), `progress` (JSONL logs,
host memory, learning curves), `vllm_policy` (rollouts from a colocated vLLM engine), `verl`
(the same episodes inside verl's agent loop, for many nodes; docs/verl.md).

The names below load on first use, so `import mini_o3.train.masking` stays light.
"""

from __future__ import annotations

from mini_o3.lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _EXPORTS)
