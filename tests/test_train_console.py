"""What a training job shows: one progress line with its figures, and library noise sent to a file."""

from __future__ import annotations

import io
import logging
import sys
import warnings
from pathlib import Path

from rich.console import Console
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging

from mini_o3.train.console import Figure, TrainingProgress, library_noise_to


def _drive(line: TrainingProgress, state: TrainerState, records: list[dict[str, float]]) -> None:
    """Call the callback as a Trainer does: begin, then a step end and a log per record, then end."""
    args, control = None, TrainerControl()  # the line reads the state only
    line.on_train_begin(args, state, control)
    for record in records:
        state.global_step += 1
        line.on_step_end(args, state, control)
        line.on_log(args, state, control, logs=dict(record))
    line.on_train_end(args, state, control)


def test_the_line_shows_steps_of_total_and_the_latest_figures() -> None:
    out = io.StringIO()
    figures = [Figure("reward", "reward", ".2f"), Figure("masked", "rollouts/masked_share", ".0%")]
    line = TrainingProgress("RL", figures, Console(file=out, width=80), step_scale=2)
    # two optimizer steps make one RL step; the records carry many more keys than the line shows
    records = [{"reward": 0.25, "rollouts/masked_share": 0.5, "loss": 0.1, "grad_norm": 3.0}, {"reward": 0.75, "rollouts/masked_share": 0.125}]
    _drive(line, TrainerState(max_steps=4, global_step=2), records)
    text = out.getvalue()
    assert text.count("\n") == 1  # one line on a non-terminal: the final state
    assert "RL" in text and "2/2" in text and "reward 0.75" in text and "masked 12%" in text
    assert "grad_norm" not in text and "{" not in text


def test_a_figure_before_its_first_record_shows_a_dash() -> None:
    out = io.StringIO()
    line = TrainingProgress("SFT", [Figure("loss", "loss")], Console(file=out, width=80))
    _drive(line, TrainerState(max_steps=3), [{"learning_rate": 1e-3}])
    assert "loss -" in out.getvalue() and "1/3" in out.getvalue()


def test_other_processes_show_nothing() -> None:
    out = io.StringIO()
    line = TrainingProgress("SFT", [Figure("loss", "loss")], Console(file=out, width=80))
    _drive(line, TrainerState(max_steps=2, is_world_process_zero=False), [{"loss": 1.0}])
    assert out.getvalue() == ""


def test_library_warnings_records_and_bars_go_to_the_file_and_come_back(tmp_path: Path, capsys) -> None:
    log = tmp_path / "stage" / "library.log"
    root_handlers = list(logging.getLogger().handlers)
    with library_noise_to(log):
        warnings.warn("a deprecated argument", FutureWarning)
        logging.getLogger("transformers.modeling_utils").warning("weights not initialised")
        logging.getLogger("trl.trainer").warning("a TRL warning")
        logging.getLogger("some.other.library").error("an error elsewhere")
        assert not hf_logging.is_progress_bar_enabled()
        print("a print stays where stdout is", file=sys.stdout)
    written = log.read_text()
    for text in ("FutureWarning: a deprecated argument", "weights not initialised", "a TRL warning", "an error elsewhere"):
        assert text in written
    captured = capsys.readouterr()
    assert "deprecated" not in captured.err and "initialised" not in captured.err and "TRL" not in captured.err
    assert "a print stays" in captured.out and "a print stays" not in written
    # everything is as it was afterwards
    assert hf_logging.is_progress_bar_enabled()
    assert logging.getLogger().handlers == root_handlers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("after", UserWarning)
    assert [str(item.message) for item in caught] == ["after"]


def test_show_progress_takes_the_printer_off_the_trainer(tmp_path: Path) -> None:
    import torch
    from transformers import Trainer

    from mini_o3.train.console import show_progress

    trainer = Trainer(model=torch.nn.Linear(2, 1), args=TrainingArguments(output_dir=str(tmp_path), disable_tqdm=True, report_to=[], use_cpu=True))
    assert any(isinstance(callback, PrinterCallback) for callback in trainer.callback_handler.callbacks)  # it prints every log dict
    line = show_progress(trainer, "SFT", [Figure("loss", "loss")], Console(file=io.StringIO()))
    callbacks = trainer.callback_handler.callbacks
    assert not any(isinstance(callback, PrinterCallback) for callback in callbacks) and line in callbacks
