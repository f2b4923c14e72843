"""The demo: the whole recipe end to end on one CPU (`pipeline`), its page (`page`), and the tiny base model's pre-training (`pretrain`)."""

from mini_o3.lazy import lazy_exports

_EXPORTS = {
    "demo_config": "pipeline",
    "run_demo": "pipeline",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
