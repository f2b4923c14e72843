"""Trajectories on disk: an append-only JSONL file plus the images each episode showed.

Every episode handed to `add` ends up as one line: one that cannot be written as it ran (text
no boundary cleaned, a NaN, an object that is no JSON) is written as an `error` episode
(error_kind "save") with everything made JSON-safe, so what an episode holds never stops a
job, and a rerun with retry_errors runs it again. Only the file system failing (an OSError:
a full disk, a file where the views folder goes) raises, since then nothing can be saved.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mini_o3.agent.loop import Episode
from mini_o3.agent.trajectory import Status, Trajectory, read_jsonl
from mini_o3.jsonl import JsonlAppender, encode_line, json_safe


def safe_name(text: str) -> str:
    """A file-system-safe name for a sample id, distinct for distinct ids."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:100] or "sample"
    if cleaned == text:
        return cleaned
    # Ids that had to be changed get a hash of the original, so "a/b" and "a_b" never collide.
    return f"{cleaned}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


class TrajectoryStore:
    """`trajectories.jsonl` and `views/<episode>/<i>.jpg` under one folder; safe for many threads."""

    def __init__(self, root: str | Path, save_views: bool = True, filename: str = "trajectories.jsonl") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / filename
        self.save_views = save_views
        self._appender = JsonlAppender(self.path)

    def add(self, episode: Episode) -> Trajectory:
        """Save an episode's views, then append its trajectory (so a written line has its images); returns what was saved."""
        trajectory = episode.trajectory
        if self.save_views and episode.views:
            self._save_views(episode)  # an OSError (disk full, a file where a folder goes) stops the job: nothing could be saved
        try:
            line = encode_line(trajectory.to_dict())
        except Exception as error:  # noqa: BLE001 - what the episode holds, whatever it is, is kept as an error
            trajectory = _saved_as_error(trajectory, error)
            line = encode_line(trajectory.to_dict())
        self._appender.append_line(line)
        return trajectory

    def _save_views(self, episode: Episode) -> None:
        folder = Path("views") / f"{safe_name(episode.trajectory.sample_id)}__r{episode.run}"
        (self.root / folder).mkdir(parents=True, exist_ok=True)
        for view, record in zip(episode.views, episode.trajectory.views):
            relative = folder / f"{record.index}.jpg"
            view.image.save(self.root / relative, format="JPEG", quality=92)
            record.file = relative.as_posix()

    def close(self) -> None:
        """Close the JSONL file (it reopens on the next add)."""
        self._appender.close()

    def __enter__(self) -> "TrajectoryStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self) -> list[Trajectory]:
        """Every trajectory written so far."""
        return list(read_jsonl(self.path)) if self.path.exists() else []

    def finished_keys(self) -> set[tuple[str, int]]:
        """(sample id, run) of every episode already written, for resuming."""
        return {(t.sample_id, int(t.meta.get("run", 0))) for t in self.load()}


def _saved_as_error(trajectory: Trajectory, error: Exception) -> Trajectory:
    """The trajectory as an `error` episode with every field made JSON-safe (error_kind "save")."""
    record = json_safe(trajectory)
    problem = f"{type(error).__name__}: {error}"[:500]
    was = record.get("status")
    record.update(
        status=Status.ERROR.value,
        error=json_safe(f"cannot save this episode as it ran ({problem}); saved as an error with its text made safe"
                        + (f" (it had ended {was})" if was and was != Status.ERROR.value else "")),
        error_kind="save",
    )
    return Trajectory.from_dict(record)
