"""What a training job shows a person: one progress line, with library noise sent to a file instead.

A transformers Trainer prints every log record as a Python dict (its `PrinterCallback`, or
tqdm's bar with `disable_tqdm=False`); libraries warn through `warnings` and their own
loggers, and draw tqdm bars when loading or saving weights. `show_progress` swaps the
Trainer's printer for one rich line (step of total, elapsed, ETA, the figures that matter),
while the records themselves stay in the JSONL log (`progress.JsonlLogCallback`).
`library_noise_to` sends warnings and library log records to a file and turns the library
bars off for as long as it is open.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text
from transformers import TrainerCallback

LIBRARY_LOG = "library.log"
"""Where a training job's library warnings and log records go, in its output folder."""
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "trl", "accelerate", "deepspeed", "peft", "torch")
"""Loggers that carry their own console handlers (or none) and speak for a library, not for mini-o3."""


@dataclass(frozen=True)
class Figure:
    """One number of the progress line, read from the Trainer's log records."""

    label: str
    """What the line calls it ("loss")."""
    key: str
    """Its key in the log record ("loss", "rollouts/masked_share")."""
    spec: str = ".3f"
    """Its format spec (".3f", ".0%")."""

    def render(self, value: Any) -> str:
        """`label value`, or `label -` before the first record."""
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{self.label} -"
        return f"{self.label} {format(value, self.spec)}"


class ElapsedAndLeft(ProgressColumn):
    """`elapsed, ETA left` while running (from the mean pace of this session's steps), `elapsed` when done."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        text = _clock(elapsed or 0.0)
        done = task.completed - task.fields.get("first", 0)
        if not task.finished and task.total is not None and done > 0 and elapsed:
            text += f", ETA {_clock(elapsed / done * (task.total - task.completed))}"
        return Text(text, style="progress.elapsed")


def _clock(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"


def progress_line(console: Console, *columns: ProgressColumn | str) -> Progress:
    """A rich Progress for one line of a long job: label, bar, count, `columns`, elapsed and ETA.

    It leaves sys.stdout and sys.stderr alone (rich would route them through the bar), so
    whatever else prints meanwhile goes where its caller sent it.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        *columns,
        ElapsedAndLeft(),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
    )


class TrainingProgress(TrainerCallback):
    """One progress line for a Trainer run: steps of total, the latest figures, elapsed and ETA."""

    def __init__(self, label: str, figures: Sequence[Figure], console: Console | None = None, step_scale: int = 1) -> None:
        self.label = label
        self.figures = list(figures)
        self.console = console or Console(stderr=True)
        self.step_scale = max(1, step_scale)
        """Optimizer steps per shown step (RL shows RL steps)."""
        self.latest: dict[str, Any] = {}
        self._progress: Progress | None = None
        self._task: Any = None

    def _steps(self, optimizer_steps: int) -> int:
        return math.ceil(optimizer_steps / self.step_scale)

    def _text(self) -> str:
        return "  ".join(figure.render(self.latest.get(figure.key)) for figure in self.figures)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self._progress is not None:
            return
        self._progress = progress_line(self.console, TextColumn("{task.fields[figures]}"))
        self._progress.start()
        done = self._steps(state.global_step)
        self._task = self._progress.add_task(self.label, total=self._steps(state.max_steps), completed=done, figures=self._text(), first=done)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self._steps(state.global_step))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self._progress is None or not logs:
            return
        self.latest.update({figure.key: logs[figure.key] for figure in self.figures if figure.key in logs})
        self._progress.update(self._task, figures=self._text())

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the line (it stays on screen); safe to call twice, and after a failed run."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def show_progress(trainer: Any, label: str, figures: Sequence[Figure], console: Console | None = None, step_scale: int = 1) -> TrainingProgress:
    """Replace the Trainer's printed log dicts (or tqdm bar) with one `TrainingProgress` line; return it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    line = TrainingProgress(label, figures, console, step_scale)
    trainer.add_callback(line)
    return line


@contextmanager
def library_noise_to(path: str | Path) -> Iterator[TextIO]:
    """While inside: Python warnings and library log records go to `path` (appended), library tqdm bars are off."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        log = stack.enter_context(path.open("a", encoding="utf-8", buffering=1))
        stack.enter_context(warnings.catch_warnings())  # restores showwarning and the filters on the way out

        def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
            log.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        stack.callback(_route_loggers(handler))
        stack.callback(_bars_off())
        yield log


def _route_loggers(handler: logging.Handler) -> Callable[[], None]:
    """Point the library loggers and the root logger at `handler` alone; return what undoes it."""
    saved = []
    for name in (None, *LIBRARY_LOGGERS):
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers = [handler]
        logger.propagate = name is None

    def restore() -> None:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate

    return restore


def _bars_off() -> Callable[[], None]:
    """Turn off the tqdm bars of transformers (weights loading and saving), datasets and the Hub; return what undoes it."""
    import datasets.utils as datasets_bars
    import huggingface_hub.utils as hub_bars
    from transformers.utils import logging as hf_logging

    states = (hf_logging.is_progress_bar_enabled(), datasets_bars.are_progress_bars_disabled(), hub_bars.are_progress_bars_disabled())
    hf_logging.disable_progress_bar()
    datasets_bars.disable_progress_bars()
    hub_bars.disable_progress_bars()

    def restore() -> None:
        transformers_on, datasets_off, hub_off = states
        if transformers_on:
            hf_logging.enable_progress_bar()  # turns the Hub's on too: set the Hub's own state after it
        if not datasets_off:
            datasets_bars.enable_progress_bars()
        (hub_bars.disable_progress_bars if hub_off else hub_bars.enable_progress_bars)()

    return restore
