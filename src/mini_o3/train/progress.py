"""What training jobs leave behind besides weights: the JSONL step log, host memory, the learning curve."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

from transformers import TrainerCallback


def host_rss_mb() -> float:
    """This process's resident memory in MiB."""
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss / 2**20
    except ImportError:  # psutil is optional; /proc works on Linux
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def trim_jsonl(path: Path, max_step: int, key: str = "step") -> None:
    """Drop records past `max_step` (written after the checkpoint a resumed run restarts from)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a crash
        if record.get(key, 0) <= max_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


class JsonlLogCallback(TrainerCallback):
    """Append every log record (with the step, wall time and host RSS) to a JSONL file, flushed."""

    def __init__(self, path: str | Path, step_scale: int = 1, step_name: str = "step") -> None:
        self.path = Path(path)
        self.step_scale = step_scale
        """Optimizer steps per reported step (RL logs RL steps, not optimizer steps)."""
        self.step_name = step_name
        self.started = time.time()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record: dict[str, Any] = {
            self.step_name: math.ceil(state.global_step / self.step_scale),
            "optimizer_step": state.global_step,
            "elapsed_s": round(time.time() - self.started, 3),
            "host_rss_mb": round(host_rss_mb(), 1),
        }
        for key, value in logs.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            record[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


class SaveImageProcessorCallback(TrainerCallback):
    """Write the image processor (and the episode settings) beside every checkpoint, so each loads and runs as trained."""

    def __init__(self, image_processor: Any, episode: Any = None) -> None:
        self.image_processor = image_processor
        self.episode = episode
        """`models.episode_settings.EpisodeSettings` to write as mini_o3_episode.json, or None."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            self.image_processor.save_pretrained(folder)
            if self.episode is not None:
                from mini_o3.models.episode_settings import write_episode_settings

                write_episode_settings(folder, self.episode)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL step log (a torn last line is skipped)."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_learning_curve(
    log_path: str | Path, out_path: str | Path, series: Iterable[str], title: str, step_key: str = "step"
) -> Path | None:
    """Plot the named series of a JSONL log against the step into a PNG; None when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [record for record in read_log(log_path) if step_key in record]
    present = [name for name in series if any(record.get(name) is not None for record in records)]
    if not present:
        return None
    figure, axes = plt.subplots(len(present), 1, figsize=(7, 2.4 * len(present)), sharex=True, squeeze=False)
    for axis, name in zip(axes[:, 0], present):
        points = [(record[step_key], record[name]) for record in records if record.get(name) is not None]
        axis.plot([x for x, _ in points], [y for _, y in points], marker="o" if len(points) < 30 else None, linewidth=1.2)
        axis.set_ylabel(name, fontsize=8)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(step_key)
    figure.suptitle(title)
    figure.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
