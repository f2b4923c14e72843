"""A run directory's files: their names, what the directory holds (`RUN_LAYOUT`), and readers.

`latest_trajectories` and `read_results` read back what `mini_o3.eval.runner.run_eval` wrote
(the report and the demo read runs through them); `RunDirError` is raised for a directory
that cannot be resumed or read. Reading config.json back into an `EvalConfig`
(`load_config`) and the resume check stay in `mini_o3.eval.runner`, beside `EvalConfig`, so
this module does not import that one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mini_o3.jsonl import JsonlError, iter_numbered
from mini_o3.agent.trajectory import Trajectory, read_jsonl

CONFIG_FILE = "config.json"
TRAJECTORIES_FILE = "trajectories.jsonl"
RESULTS_FILE = "results.jsonl"
METRICS_FILE = "metrics.json"
JUDGE_CACHE_FILE = "judge_cache.jsonl"
SKIPPED_FILE = "skipped.txt"

RUN_LAYOUT = """\
RUN_DIR/
  config.json                      the EvalConfig, the policy, the package version, what the data spec loaded, the protocol card
  trajectories.jsonl               every finished episode, appended as it finishes (a retried episode's last line wins)
  views/<sample>__r<run>/<i>.jpg   every image the model saw (0 = the original as shown, i = observation_i)
  results.jsonl                    one line per episode: status, turns, answer, rule score, judge score, final score
                                   (appended as episodes finish; rewritten to exactly the run's episodes at the end)
  judge_cache.jsonl                judge verdicts keyed by a hash of (rubric, model, question, truth, answer)
  skipped.txt                      bad data records skipped at load time (skip_bad), one reason a line
  metrics.json                     the protocol card and mini_o3.eval.summary.summarize over the run's episodes
  index.html                       the report: metrics tables, plots, trajectory viewer (mini_o3.eval.report)
  report/                          the plots (accuracy_by_budget.png, turn_histogram.png, accuracy_by_tokens.png) and boxes/<episode>.jpg
"""
"""What a run directory holds."""


class RunDirError(ValueError):
    """A run directory that cannot be resumed or read: another config, or files that are not a run's."""


def latest_trajectories(run_dir: str | Path) -> dict[tuple[str, int], Trajectory]:
    """The last trajectory written for every (sample id, run) of a run directory, in first-seen order."""
    path = Path(run_dir) / TRAJECTORIES_FILE
    latest: dict[tuple[str, int], Trajectory] = {}
    if path.exists():
        for trajectory in read_jsonl(path):
            latest[(trajectory.sample_id, int(trajectory.meta.get("run", 0)))] = trajectory
    return latest


def read_results(run_dir: str | Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The last result record for every (sample id, run) in results.jsonl; a torn last line is skipped."""
    path = Path(run_dir) / RESULTS_FILE
    results: dict[tuple[str, int], dict[str, Any]] = {}
    if not path.exists():
        return results
    hint = "delete the line, then run `rescore`"
    try:
        for number, record in iter_numbered(path):
            try:
                results[(record["sample_id"], int(record["run"]))] = record
            except (KeyError, TypeError, ValueError) as error:
                raise RunDirError(f"{path}:{number}: not a result record (it needs sample_id and run; {type(error).__name__}: {error}); {hint}") from error
    except JsonlError as error:
        raise RunDirError(f"{error}; {hint}") from error
    return results
