"""Models: the tiny offline Qwen2.5-VL built from a config (tests and the demo), and backbone specifics."""

from mini_o3.lazy import lazy_exports

_EXPORTS = {
    "build_tiny": "tiny",
    "load_checkpoint": "tiny",
    "build_processor": "tiny",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
