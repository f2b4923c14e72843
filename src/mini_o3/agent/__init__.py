"""The agent: the wire protocol, images and boxes, one episode's environment, the episode loop,
trajectories and their store. Everything else in mini-o3 builds on this package; it imports none of them.

The Policy contract lives here (`policy`) because the loop calls it; `mini_o3.policies` implements it.
"""

from mini_o3.lazy import lazy_exports

_EXPORTS = {
    "Sample": "sample",
    "Policy": "policy",
    "PolicyError": "policy",
    "Generation": "policy",
    "SamplingParams": "policy",
    "Trajectory": "trajectory",
    "TurnRecord": "trajectory",
    "ViewRecord": "trajectory",
    "Status": "trajectory",
    "ZoomEnv": "env",
    "Limits": "env",
    "INFERENCE_LIMITS": "env",
    "EpisodeConfig": "loop",
    "Episode": "loop",
    "run_episode": "loop",
    "run_episodes": "loop",
    "TrajectoryStore": "store",
    "ResizePolicy": "images",
    "open_image": "images",
    "ImageLoadError": "images",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
