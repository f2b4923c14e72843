"""Cold start: collecting multi-turn trajectories (in-context exemplars or the scripted oracle) and writing
them as SFT files."""

from mini_o3.lazy import lazy_exports

_EXPORTS = {
    "CollectConfig": "collect",
    "CollectDirError": "collect",
    "OraclePolicy": "oracle",
    "PatternMix": "oracle",
    "load_exemplars": "exemplars",
    "read_sft_rows": "sft_files",
    "write_sft_dataset": "sft_files",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
