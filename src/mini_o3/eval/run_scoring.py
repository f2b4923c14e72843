"""Scoring a run's episodes: rules, the optional LLM judge, results.jsonl records, metrics.json.

Every episode gets a rule score; with a judge configured, the judge is asked (once per
distinct question, truth and answer, with a disk cache in the run directory) where the rules
say wrong ("rescue") or on every answer ("all"). `result_record` is one results.jsonl line,
`summarize_run` writes metrics.json. `mini_o3.eval.runner.run_eval` scores as episodes finish
and after the run; `mini_o3.eval.runner.rescore` scores a finished run again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from mini_o3.eval.run_dir import JUDGE_CACHE_FILE, METRICS_FILE, RESULTS_FILE
from mini_o3.jsonl import write_atomic, write_json
from mini_o3.eval.judge import JudgeConfig, JudgeError, LLMJudge
from mini_o3.eval.scoring import Score, score_trajectory
from mini_o3.agent.trajectory import Trajectory


def result_record(trajectory: Trajectory, rule: Score, judge: Score | None = None, judge_error: str | None = None, judge_mode: str = "rescue") -> dict[str, Any]:
    """The results.jsonl line of one episode: what it did, the rule score, the judge's, and the final score."""
    final = rule
    if judge is not None and (judge_mode == "all" or not rule.correct):
        final = judge
    return {
        "sample_id": trajectory.sample_id,
        "run": int(trajectory.meta.get("run", 0)),
        "status": trajectory.status.value,
        "turns": trajectory.num_turns,
        "zooms": trajectory.num_zooms,
        "split": trajectory.split,
        "category": trajectory.category,
        "answer": trajectory.answer,
        "ground_truth": trajectory.ground_truth,
        "rule": rule.to_dict(),
        "judge": judge.to_dict() if judge is not None else None,
        "judge_error": judge_error,
        "score": final.to_dict(),
    }


def rule_score(trajectory: Trajectory) -> Score:
    """The rule-based score of a trajectory; a sample the rules cannot score is wrong, with the reason."""
    try:
        return score_trajectory(trajectory)
    except Exception as error:  # one bad ground truth must not stop a run: it is recorded and counted
        return Score(False, None, "none", f"could not score: {type(error).__name__}: {error}")


def _judge_one(judge: LLMJudge, trajectory: Trajectory, rule: Score, mode: str) -> tuple[Score | None, str | None]:
    if mode == "rescue" and rule.correct:
        return None, None
    if trajectory.answer is None or not trajectory.answer.strip():
        return None, None  # nothing to judge; the rule score (wrong) stands
    try:
        verdict = judge.judge(trajectory.question, _truth_for_judge(trajectory), trajectory.answer)
    except JudgeError as error:
        return None, str(error)
    return verdict.as_score(rule.extracted), None


def _judge_key(trajectory: Trajectory, rule: Score, mode: str) -> tuple[Any, ...]:
    skip = (mode == "rescue" and rule.correct) or not (trajectory.answer or "").strip()
    return ("skip",) if skip else (trajectory.question, _truth_for_judge(trajectory), trajectory.answer, rule.extracted)


def _truth_for_judge(trajectory: Trajectory) -> str:
    truth = trajectory.ground_truth
    option = trajectory.options.get(truth.strip()) if trajectory.options else None
    return f"({truth.strip()}) {option}" if option else truth


def _judge_config(config: JudgeConfig, run_dir: Path) -> JudgeConfig:
    if config.cache_path is None:
        return replace(config, cache_path=run_dir / JUDGE_CACHE_FILE)
    return config


def score_run(
    run_dir: str | Path,
    trajectories: dict[tuple[str, int], Trajectory],
    judge: JudgeConfig | None = None,
    judge_mode: str = "rescue",
    judge_concurrency: int = 8,
    console: Console | None = None,
    rules: dict[tuple[str, int], Score] | None = None,
) -> tuple[dict[tuple[str, int], dict[str, Any]], int]:
    """Score trajectories by the rules (unless `rules` holds them already) and, when given, the judge.

    Returns (results.jsonl records by key, episodes the judge gave no verdict on).
    """
    run_dir = Path(run_dir)
    keys = list(trajectories)
    known = rules or {}
    rules = {key: known[key] if key in known else rule_score(trajectories[key]) for key in keys}
    verdicts: dict[tuple[str, int], tuple[Score | None, str | None]] = {}
    if judge is not None:
        with LLMJudge(_judge_config(judge, run_dir)) as client, ThreadPoolExecutor(judge_concurrency, thread_name_prefix="judge") as pool:
            # K runs often give the same answer: ask once per distinct question, truth and answer.
            futures: dict[tuple[Any, ...], Any] = {}
            for key in keys:
                asked = _judge_key(trajectories[key], rules[key], judge_mode)
                if asked not in futures:
                    futures[asked] = pool.submit(_judge_one, client, trajectories[key], rules[key], judge_mode)
                verdicts[key] = futures[asked]  # type: ignore[assignment]
            verdicts = {key: future.result() for key, future in verdicts.items()}  # type: ignore[attr-defined]
            if console is not None:
                console.print(f"judge: {client.requests_sent} requests, {len(client.cache)} verdicts cached")
    records = {}
    errors = 0
    for key in keys:
        judged, problem = verdicts.get(key, (None, None))
        errors += problem is not None
        records[key] = result_record(trajectories[key], rules[key], judged, problem, judge_mode)
    return records, errors


def write_results(run_dir: Path, records: Iterable[dict[str, Any]]) -> None:
    write_atomic(run_dir / RESULTS_FILE, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def episode_results(trajectories: dict[tuple[str, int], Trajectory], records: dict[tuple[str, int], dict[str, Any]]) -> list[Any]:
    """A run's scored episodes as mini_o3.eval.metrics.EpisodeResult (`latest_trajectories` and `read_results` give the inputs)."""
    from mini_o3.eval.metrics import EpisodeResult

    return [EpisodeResult.from_trajectory(trajectories[key], Score.from_dict(records[key]["score"]), key[1]) for key in trajectories]


def summarize_run(
    run_dir: str | Path,
    trajectories: dict[tuple[str, int], Trajectory],
    records: dict[tuple[str, int], dict[str, Any]],
    max_turns: int,
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """mini_o3.eval.summary.summarize over a run's episodes, with the run's protocol card, written to metrics.json."""
    from mini_o3.eval.summary import summarize

    # An image that cannot be decoded says nothing about the model: left out, and listed apart.
    unreadable = {key: t for key, t in trajectories.items() if t.error_kind == "image"}
    readable = {key: t for key, t in trajectories.items() if key not in unreadable}
    summary = {"protocol": card or {}, **summarize(episode_results(readable, records), max_turns)}
    ids = sorted({t.sample_id for t in unreadable.values()})
    summary["unreadable_images"] = {"episodes": len(unreadable), "samples": len(ids), "ids": ids[:100]}
    write_json(Path(run_dir) / METRICS_FILE, summary)
    return summary
