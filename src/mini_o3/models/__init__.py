"""Models: the backbone families (Qwen2.5-VL, Qwen3-VL, Qwen3.5), the tiny offline models, a checkpoint's episode settings."""

from mini_o3.lazy import lazy_exports

_EXPORTS = {
    "Backbone": "backbone",
    "backbones": "backbone",
    "backbone_named": "backbone",
    "backbone_of": "backbone",
    "read_backbone": "backbone",
    "build_tiny": "tiny",
    "load_checkpoint": "tiny",
    "build_processor": "tiny",
    "EpisodeSettings": "episode_settings",
    "read_episode_settings": "episode_settings",
    "write_episode_settings": "episode_settings",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
