"""Trajectories on disk: an append-only JSONL file plus the images each episode showed."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mini_o3.agent.loop import Episode
from mini_o3.jsonl import JsonlAppender
from mini_o3.agent.trajectory import Trajectory, read_jsonl


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
        """Save an episode's views, then append its trajectory (so a written line has its images)."""
        trajectory = episode.trajectory
        if self.save_views and episode.views:
            folder = Path("views") / f"{safe_name(trajectory.sample_id)}__r{episode.run}"
            (self.root / folder).mkdir(parents=True, exist_ok=True)
            for view, record in zip(episode.views, trajectory.views):
                relative = folder / f"{record.index}.jpg"
                view.image.save(self.root / relative, format="JPEG", quality=92)
                record.file = relative.as_posix()
        self._appender.append(trajectory.to_dict())
        return trajectory

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
