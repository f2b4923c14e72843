"""A checkpoint remembers how it sees: the episode settings it was trained with, in a file beside config.json.

A model trained on 112-pixel views answers nonsense when shown 2-megapixel ones, and one whose
turns were cut at 160 tokens may ramble for 8,192. So every checkpoint that `mini-o3 sft`,
`mini-o3 rl`, `mini-o3 pretrain` or the demo writes carries `mini_o3_episode.json`:

    {"view_max_pixels": 12544, "view_min_pixels": 3136, "max_turns": 12, "max_new_tokens": 160,
     "numbering": "reference", ...}

and `search`, `eval`, `collect`, `serve` and `rl` use it by default; a command-line flag
overrides any one value, and every job prints where each setting came from. A checkpoint
without the file (a model from the Hub) runs with the paper's settings (2M pixels, 32 turns).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EPISODE_FILE = "mini_o3_episode.json"


@dataclass(frozen=True)
class EpisodeSettings:
    """How a model is run in an episode: what it was trained with, and what inference uses by default."""

    view_max_pixels: int = 2_000_000
    """Every image (original and crops) is shown at most this many pixels (the paper: 2M)."""
    view_min_pixels: int = 40_000
    """Every image is shown at least this many pixels."""
    max_turns: int = 32
    """Assistant turns an inference episode (search, eval) gets by default (the paper's curve: 32)."""
    max_new_tokens: int = 8_192
    """Tokens per assistant turn at most."""
    numbering: str = "reference"
    """Observation labels the model was trained with: "reference" or "consistent"."""
    max_context_tokens: int = 32_768
    """The context window episodes were cut at."""
    context_reserve: int = 2_000
    """An episode ends as over_context this many tokens before the window."""
    train_max_turns: int | None = None
    """Turns per episode in the last training stage (RL: 6 in the paper); None where unknown."""
    train_max_images: int | None = None
    """Images per episode in the last training stage (RL: 12 in the paper); None where unknown or unlimited."""
    written_by: str = ""
    """The job that wrote the file (sft, rl, pretrain, collect), for people reading it."""

    def __post_init__(self) -> None:
        if self.view_min_pixels > self.view_max_pixels:
            raise ValueError(f"view_min_pixels ({self.view_min_pixels}) must not exceed view_max_pixels ({self.view_max_pixels})")
        if self.numbering not in ("reference", "consistent"):
            raise ValueError(f"numbering must be 'reference' or 'consistent', got {self.numbering!r}")
        if self.max_turns < 1 or self.max_new_tokens < 1:
            raise ValueError(f"max_turns and max_new_tokens must be at least 1, got {self.max_turns} and {self.max_new_tokens}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "EpisodeSettings":
        """A copy with the given fields changed."""
        return dataclasses.replace(self, **changes)


DEFAULT_SETTINGS = EpisodeSettings()
"""The paper's inference settings, for checkpoints that carry no file."""


def write_episode_settings(folder: str | Path, settings: EpisodeSettings) -> Path:
    """Write `settings` as `folder/mini_o3_episode.json` (atomically) and return the path."""
    path = Path(folder) / EPISODE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(settings.to_dict(), indent=1) + "\n", encoding="utf-8")
    staging.replace(path)
    return path


def read_episode_settings(folder: str | Path | None) -> EpisodeSettings | None:
    """The settings stored in `folder`, or None when it holds no settings file (or is None).

    Raises ValueError naming the file when it exists but cannot be read; unknown keys are
    ignored, so that a newer file still loads.
    """
    if folder is None:
        return None
    path = Path(folder) / EPISODE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        known = {item.name for item in dataclasses.fields(EpisodeSettings)}
        return EpisodeSettings(**{key: value for key, value in raw.items() if key in known})
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"cannot read the episode settings in {path}: {error}") from error


@dataclass(frozen=True)
class ResolvedSettings:
    """Episode settings for a job, and where each came from."""

    settings: EpisodeSettings
    """The values the job runs with."""
    sources: dict[str, str]
    """Field name -> "flag", the settings file's path, or "default"."""

    def describe(self) -> str:
        """One line per setting: value and source, for the job's console."""
        return "\n".join(f"  {name} = {getattr(self.settings, name)}  ({source})" for name, source in self.sources.items())


def resolve_settings(folder: str | Path | None, fields: tuple[str, ...], **flags: Any) -> ResolvedSettings:
    """The settings `fields` for a job on the checkpoint in `folder`: a flag (not None) wins, then the file, then the default."""
    stored = read_episode_settings(folder)
    origin = str(Path(folder) / EPISODE_FILE) if stored is not None else "default"
    base = stored or DEFAULT_SETTINGS
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in fields:
        flag = flags.get(name)
        if flag is not None:
            values[name], sources[name] = flag, "flag"
        else:
            values[name], sources[name] = getattr(base, name), origin
    unknown = set(flags) - set(fields)
    if unknown:
        raise ValueError(f"unknown episode settings {sorted(unknown)}")
    low, high = values.get("view_min_pixels", base.view_min_pixels), values.get("view_max_pixels", base.view_max_pixels)
    if low > high and sources.get("view_min_pixels") != "flag":
        # Asking for smaller views than the stored minimum lowers the minimum with them.
        values["view_min_pixels"] = high
        sources["view_min_pixels"] = f"{sources.get('view_min_pixels', origin)}, lowered to view_max_pixels"
    return ResolvedSettings(base.replace(**values), sources)
