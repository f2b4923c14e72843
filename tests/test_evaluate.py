"""The eval runner: through a real loopback server, resume after SIGKILL, errors and retries, rescoring, seeds, budgets."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from mini_o3.agent import protocol
from mini_o3.eval.runner import (
    RESULTS_FILE,
    TRAJECTORIES_FILE,
    EvalConfig,
    RunDirError,
    latest_trajectories,
    read_results,
    rescore,
    run_eval,
)
from mini_o3.eval.judge import JudgeConfig
from mini_o3.agent.policy import Generation, SamplingParams
from mini_o3.policies.http import HttpPolicy
from mini_o3.policies.scripted import ScriptedPolicy
from mini_o3.policies.seeded import turn_seed

ZOOM = "<think>Let me look closer.</think>" + protocol.render_zoom(protocol.Zoom((0.1, 0.1, 0.6, 0.6)))


def make_dataset(folder: Path, count: int = 6, corrupt: tuple[int, ...] = ()) -> str:
    """A generic-form dataset of `count` small images; odd ids have the answer "red", even ones "blue"."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        path = folder / f"img{index}.png"
        if index in corrupt:
            path.write_bytes(b"not an image at all")
        else:
            Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(path)
        records.append(
            {"id": f"q{index}", "image": path.name, "question": f"What colour is the sign? zooms={index % 3}",
             "answer": "red" if index % 2 else "blue", "category": f"c{index % 2}"}
        )
    (folder / "data.json").write_text(json.dumps(records))
    return f"json:{folder / 'data.json'}"


def config(data: str, out: Path, **overrides: Any) -> EvalConfig:
    settings: dict[str, Any] = dict(data=data, out=out, samples=2, max_turns=6, concurrency=4, progress=False, report=False,
                                    max_pixels=160 * 120, min_pixels=28 * 28)
    settings.update(overrides)
    return EvalConfig(**settings)


def zoom_then_red() -> ScriptedPolicy:
    return ScriptedPolicy([ZOOM, "<think>It is red.</think><answer>red</answer>"])


def by_question(messages: list[dict[str, Any]]) -> str:
    """Zoom as often as the question's `zooms=N` says, then answer "red"."""
    question = messages[1]["content"][-1]["text"]
    zooms = int(re.search(r"zooms=(\d+)", question).group(1))
    done = sum(1 for message in messages if message["role"] == "assistant")
    return ZOOM if done < zooms else "<think>Found it.</think><answer>red</answer>"


def keys_in(path: Path) -> Counter:
    """(sample id, run) of every complete line of a JSONL file, with counts."""
    counts: Counter = Counter()
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            record = json.loads(line)
            counts[(record["sample_id"], int(record.get("run", record.get("meta", {}).get("run", 0))))] += 1
    return counts


def trajectory_keys(path: Path) -> Counter:
    counts: Counter = Counter()
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            record = json.loads(line)
            counts[(record["sample_id"], int(record["meta"]["run"]))] += 1
    return counts


# ---------------------------------------------------------------- through a real server


def test_eval_through_a_loopback_server_streams_scores_and_summarises(tmp_path: Path, serve) -> None:
    data = make_dataset(tmp_path / "data")
    server, url = serve(zoom_then_red())
    result = run_eval(config(data, tmp_path / "run"), HttpPolicy([url], model="mini-o3"))

    assert (result.episodes, result.ran, result.resumed, result.errors) == (12, 12, 0, 0)
    assert result.turns == 24 and server.chat_requests == 24
    assert result.metrics["avg_at_k"] == pytest.approx(0.5)  # the odd ids' answer is red
    assert result.metrics["status_counts"]["answered"] == 12
    assert result.metrics["accuracy_by_budget"][:3] == pytest.approx([0.0, 0.5, 0.5])
    assert result.metrics["by_category"]["c1"]["avg_at_k"] == 1.0

    run = tmp_path / "run"
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["samples"] == 2 and saved["dataset"]["questions"] == 6 and "HttpPolicy" in saved["policy"]
    assert json.loads((run / "metrics.json").read_text()) == result.metrics
    results = read_results(run)
    assert len(results) == 12
    record = results[("q1", 1)]
    assert record["score"]["correct"] and record["rule"]["matched_by"] == "exact" and record["judge"] is None
    assert not results[("q0", 0)]["score"]["correct"]
    trajectory = latest_trajectories(run)[("q1", 1)]
    assert [view.file for view in trajectory.views] == ["views/q1__r1/0.jpg", "views/q1__r1/1.jpg"]
    assert all((run / view.file).is_file() for view in trajectory.views)


def test_several_endpoints_share_the_load(tmp_path: Path, serve) -> None:
    data = make_dataset(tmp_path / "data", count=4)
    first, url_a = serve(zoom_then_red(), delay_s=0.01)
    second, url_b = serve(zoom_then_red(), delay_s=0.01)
    result = run_eval(config(data, tmp_path / "run", samples=4), HttpPolicy([url_a, url_b], model="m"))
    assert result.errors == 0 and first.chat_requests + second.chat_requests == 32
    assert first.chat_requests >= 8 and second.chat_requests >= 8


# ---------------------------------------------------------------- resume


def test_rerunning_redoes_nothing_and_a_larger_limit_or_k_runs_only_the_rest(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    policy = zoom_then_red()
    first = run_eval(config(data, tmp_path / "run", limit=3), policy)
    assert first.ran == 6 and policy.calls == 12

    again = run_eval(config(data, tmp_path / "run", limit=3), policy)
    assert (again.ran, again.resumed) == (0, 6) and policy.calls == 12
    assert again.metrics == first.metrics

    more = run_eval(config(data, tmp_path / "run", samples=3), policy)
    assert (more.ran, more.resumed, more.episodes) == (12, 6, 18) and policy.calls == 36
    assert more.metrics["runs_per_sample"] == {"min": 3, "max": 3}
    assert sum(trajectory_keys(tmp_path / "run" / TRAJECTORIES_FILE).values()) == 18
    assert len(read_results(tmp_path / "run")) == 18


def test_a_run_directory_with_other_settings_is_refused(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", count=2)
    run_eval(config(data, tmp_path / "run"), zoom_then_red())
    with pytest.raises(RunDirError, match="max_turns: 6 on disk, 8 now"):
        run_eval(config(data, tmp_path / "run", max_turns=8), zoom_then_red())
    # Settings that do not change an episode may differ.
    run_eval(config(data, tmp_path / "run", concurrency=1, retry_errors=True), zoom_then_red())


def test_torn_lines_are_repaired_and_a_lost_result_is_scored_not_rerun(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", count=3)
    run = tmp_path / "run"
    run_eval(config(data, run), zoom_then_red())
    trajectories, results = run / TRAJECTORIES_FILE, run / RESULTS_FILE
    # Killed while appending: the results line of the last episode is lost, and a next
    # trajectory was half written.
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:-1]) + lines[-1][:25])
    last = json.loads(lines[-1])
    lost = (last["sample_id"], last["run"])
    whole = trajectories.read_text().splitlines(keepends=True)
    kept = [line for line in whole if (json.loads(line)["sample_id"], json.loads(line)["meta"]["run"]) != ("q0", 0)]
    torn = [line for line in whole if line not in kept][0][:300]
    trajectories.write_text("".join(kept) + torn)

    policy = zoom_then_red()
    result = run_eval(config(data, run), policy)
    assert (result.ran, result.resumed) == (1, 5) and policy.calls == 2  # only the torn episode runs again
    assert set(trajectory_keys(trajectories).values()) == {1}
    assert lost in read_results(run) and len(read_results(run)) == 6
    assert result.metrics["episodes"] == 6


KILLED_RUN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mini_o3.eval.runner import EvalConfig, run_eval
    from mini_o3.policies.scripted import ScriptedPolicy
    zoom = sys.argv[3]
    policy = ScriptedPolicy([zoom, zoom, "<think>ok</think><answer>red</answer>"], delay_s=0.01)
    run_eval(EvalConfig(data=sys.argv[1], out=Path(sys.argv[2]), samples=2, max_turns=6, concurrency=4,
                        progress=False, report=False, max_pixels=160 * 120, min_pixels=28 * 28), policy)
    """
)


def test_sigkill_at_any_moment_then_rerun_loses_nothing_and_redoes_nothing(tmp_path: Path) -> None:
    count = 30
    data = make_dataset(tmp_path / "data", count=count)
    run = tmp_path / "run"
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    trajectories = run / TRAJECTORIES_FILE
    for kill_after in (8, 30):  # two kills at different points of the run
        process = subprocess.Popen([sys.executable, str(script), data, str(run), ZOOM], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if trajectories.exists() and trajectories.read_bytes().count(b"\n") >= kill_after:
                break
            time.sleep(0.005)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    finished = trajectory_keys(trajectories)
    assert set(finished.values()) == {1} and 30 <= len(finished) < 2 * count

    policy = ScriptedPolicy([ZOOM, ZOOM, "<think>ok</think><answer>red</answer>"])
    result = run_eval(config(data, run), policy)
    assert result.resumed == len(finished) and result.ran == 2 * count - len(finished)
    assert policy.calls == 3 * result.ran
    after = trajectory_keys(trajectories)
    assert len(after) == 2 * count and set(after.values()) == {1}  # every episode once: nothing redone, nothing lost
    assert len(read_results(run)) == 2 * count and set(keys_in(run / RESULTS_FILE).values()) == {1}
    assert result.metrics["episodes"] == 2 * count and result.metrics["status_counts"]["answered"] == 2 * count
    assert result.metrics["avg_at_k"] == pytest.approx(0.5)


# ---------------------------------------------------------------- faults


def test_a_dead_server_is_recorded_as_errors_and_retry_errors_reruns_them(tmp_path: Path, serve) -> None:
    data = make_dataset(tmp_path / "data", count=3)
    dead, url = serve(zoom_then_red())
    dead.stop()
    result = run_eval(config(data, tmp_path / "run"), HttpPolicy([url], model="m", max_retries=1, backoff_s=0.01))
    assert result.errors == 6 and result.metrics["status_counts"]["error"] == 6 and result.metrics["avg_at_k"] == 0.0
    trajectory = latest_trajectories(tmp_path / "run")[("q0", 0)]
    assert "cannot reach" in trajectory.error

    _, url = serve(zoom_then_red())
    policy = HttpPolicy([url], model="m")
    assert run_eval(config(data, tmp_path / "run"), policy).ran == 0  # errors are finished episodes unless asked
    retried = run_eval(config(data, tmp_path / "run", retry_errors=True), policy)
    assert (retried.ran, retried.errors) == (6, 0) and retried.metrics["avg_at_k"] == pytest.approx(1 / 3)
    assert len(latest_trajectories(tmp_path / "run")) == 6


def test_a_retried_episode_whose_result_line_was_lost_gets_its_own_result(tmp_path: Path, serve) -> None:
    data = make_dataset(tmp_path / "data", count=2)
    run = tmp_path / "run"
    dead, url = serve(zoom_then_red())
    dead.stop()
    run_eval(config(data, run), HttpPolicy([url], model="m", max_retries=0))
    _, url = serve(zoom_then_red())
    run_eval(config(data, run, retry_errors=True), HttpPolicy([url], model="m"))
    # Killed between the retried episode's trajectory line and its result line: the results
    # file still holds that episode's old error result.
    results = run / RESULTS_FILE
    lines = results.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    assert last["status"] == "answered"
    results.write_text("".join(line for line in lines if json.loads(line)["status"] == "error") + "".join(lines[:-1]))
    policy = zoom_then_red()
    result = run_eval(config(data, run), policy)
    assert result.ran == 0 and policy.calls == 0 and result.errors == 0
    record = read_results(run)[(last["sample_id"], last["run"])]
    assert record["status"] == "answered" and record["rule"]["extracted"] == "red"  # scored afresh, not the error's score


def test_a_failing_server_costs_only_the_failed_episodes(tmp_path: Path, serve) -> None:
    data = make_dataset(tmp_path / "data", count=4)
    server, url = serve(zoom_then_red(), fail_first_n=3, fail_status=503)
    run = tmp_path / "run"
    result = run_eval(config(data, run, concurrency=1), HttpPolicy([url], model="m", max_retries=0, backoff_s=0.01))
    assert result.errors == 3 and result.statuses["answered"] == 5
    assert all("503" in t.error for t in latest_trajectories(run).values() if t.error)
    retried = run_eval(config(data, run, retry_errors=True), HttpPolicy([url], model="m"))
    assert (retried.ran, retried.errors, retried.resumed) == (3, 0, 5)
    # Retries with backoff absorb transient failures without an error.
    flaky, flaky_url = serve(zoom_then_red(), fail_first_n=2, fail_status=503)
    steady = run_eval(config(data, tmp_path / "steady", concurrency=1), HttpPolicy([flaky_url], model="m", max_retries=3, backoff_s=0.01))
    assert steady.errors == 0 and flaky.injected_failures == 2


def test_a_bad_sample_never_stops_the_run(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", count=4, corrupt=(2,))
    result = run_eval(config(data, tmp_path / "run"), zoom_then_red())
    assert result.errors == 2 and result.statuses["answered"] == 6
    bad = latest_trajectories(tmp_path / "run")[("q2", 1)]
    assert bad.status.value == "error" and "img2.png" in bad.error


def test_a_run_that_cannot_save_stops_with_a_clear_error(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", count=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "views").write_text("a file where the views folder should be")
    with pytest.raises(RuntimeError, match="cannot save episodes in"):
        run_eval(config(data, run), zoom_then_red())


# ---------------------------------------------------------------- scoring and rescoring


def test_rescore_with_a_judge_keeps_both_scores_and_caches_verdicts(tmp_path: Path, serve) -> None:
    data = make_dataset(tmp_path / "data", count=4)
    run = tmp_path / "run"
    policy = ScriptedPolicy(["<think>hm</think><answer>crimson</answer>"])
    first = run_eval(config(data, run), policy)
    assert first.metrics["avg_at_k"] == 0.0

    def judge_script(messages: list[dict[str, Any]]) -> str:
        text = messages[-1]["content"][0]["text"]
        return "Score: 1" if "Reference answer: red" in text else "Score: 0"

    judge_server, judge_url = serve(ScriptedPolicy(judge_script))
    judge = JudgeConfig(base_url=judge_url, model="judge", backoff_s=0.01)
    metrics = rescore(run, judge=judge, report=False)
    assert metrics["avg_at_k"] == pytest.approx(0.5) and policy.calls == 8  # the model was not asked again
    record = read_results(run)[("q1", 0)]
    assert record["rule"]["correct"] is False and record["judge"]["matched_by"] == "judge" and record["score"]["correct"]
    assert (run / "judge_cache.jsonl").exists()
    requests = judge_server.chat_requests
    assert requests == 4  # one per distinct (question, truth, answer), not one per run
    rescore(run, judge=judge, report=False)
    assert judge_server.chat_requests == requests
    card = json.loads((run / "metrics.json").read_text())["protocol"]
    assert card["scoring"]["judge"] == {"model": "judge", "base_url": judge_url, "mode": "rescue", "rubric_version": "1"}
    assert card["data"] == first.metrics["protocol"]["data"]  # the rest of the card is the run's
    again = rescore(run, report=False)
    assert again["avg_at_k"] == 0.0 and again["protocol"]["scoring"]["judge"] is None  # rules only again


def test_judge_in_the_run_rescues_only_rule_misses(tmp_path: Path, serve) -> None:
    data = make_dataset(tmp_path / "data", count=2)
    judge_server, judge_url = serve(ScriptedPolicy(lambda messages: "Score: 1"))
    judge = JudgeConfig(base_url=judge_url, model="judge")
    result = run_eval(config(data, tmp_path / "run", judge=judge), zoom_then_red())
    assert result.metrics["avg_at_k"] == 1.0 and judge_server.chat_requests == 1  # only q0's "red" vs "blue" is asked
    results = read_results(tmp_path / "run")
    assert results[("q1", 0)]["judge"] is None and results[("q0", 0)]["judge"]["correct"]


def test_a_dead_judge_leaves_the_rule_score_and_is_counted(tmp_path: Path, serve) -> None:
    data = make_dataset(tmp_path / "data", count=2)
    dead, url = serve(ScriptedPolicy(lambda messages: "Score: 1"))
    dead.stop()
    judge = JudgeConfig(base_url=url, model="judge", max_retries=0)
    result = run_eval(config(data, tmp_path / "run", judge=judge), zoom_then_red())
    assert result.judge_errors == 2 and result.metrics["avg_at_k"] == 0.5
    assert read_results(tmp_path / "run")[("q0", 0)]["judge_error"]


# ---------------------------------------------------------------- seeds and budgets


class SeedRecorder:
    """A policy that answers at once and remembers the seed of every call."""

    def __init__(self) -> None:
        self.seeds: list[int | None] = []

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams) -> Generation:
        self.seeds.append(sampling.seed)
        return Generation("<answer>red</answer>")


def test_every_run_samples_with_its_own_repeatable_seed(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", count=3)
    first, second, unseeded = SeedRecorder(), SeedRecorder(), SeedRecorder()
    run_eval(config(data, tmp_path / "a", samples=3, concurrency=1), first)
    run_eval(config(data, tmp_path / "b", samples=3, concurrency=1), second)
    run_eval(config(data, tmp_path / "c", samples=3, seed=None), unseeded)
    assert first.seeds == second.seeds and len(set(first.seeds)) == 9
    assert turn_seed(0, "q0", 0, 0) in first.seeds and turn_seed(0, "q0", 0, 0) != turn_seed(1, "q0", 0, 0)
    assert unseeded.seeds == [None] * 9


def test_accuracy_at_budget_k_equals_a_run_with_budget_k(tmp_path: Path) -> None:
    """The prompt never states the budget, so the curve read off one run equals separate runs."""
    data = make_dataset(tmp_path / "data", count=6)  # questions need 0, 1 or 2 zooms
    full = run_eval(config(data, tmp_path / "full", max_turns=4, samples=1), ScriptedPolicy(by_question))
    curve = full.metrics["accuracy_by_budget"]
    assert curve == pytest.approx([1 / 6, 2 / 6, 3 / 6, 3 / 6])
    for budget in (1, 2, 3):
        cut = run_eval(config(data, tmp_path / f"k{budget}", max_turns=budget, samples=1), ScriptedPolicy(by_question))
        assert cut.metrics["avg_at_k"] == pytest.approx(curve[budget - 1])
        assert cut.metrics["accuracy_by_budget"] == pytest.approx(curve[:budget])


def test_config_validates_and_round_trips(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="samples"):
        EvalConfig(data="x", samples=0)
    with pytest.raises(ValueError, match="judge_mode"):
        EvalConfig(data="x", judge_mode="sometimes")
    with pytest.raises(ValueError, match="max_turns"):
        EvalConfig(data="x", max_turns=0)
    original = EvalConfig(data="x", out=tmp_path, judge=JudgeConfig(base_url="http://h/v1", model="j"))
    assert EvalConfig.from_dict(json.loads(json.dumps(original.to_dict()))) == original


def test_duplicate_question_ids_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    make_dataset(folder, count=2)
    records = json.loads((folder / "data.json").read_text())
    records[1]["id"] = records[0]["id"]
    (folder / "data.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="q0"):  # the loader refuses it; the runner would too
        run_eval(config(f"json:{folder / 'data.json'}", tmp_path / "run"), zoom_then_red())


# ---------------------------------------------------------------- the tiny model, end to end


@pytest.mark.slow
def test_tiny_model_end_to_end_through_a_loopback_server(tmp_path: Path, serve) -> None:
    from mini_o3.policies.local import LocalPolicy
    from mini_o3.models.tiny import build_tiny

    checkpoint = build_tiny(tmp_path / "tiny", seed=0)
    local = LocalPolicy(checkpoint, max_batch_size=8)
    try:
        server, url = serve(local)
        data = make_dataset(tmp_path / "data", count=3)
        settings = config(data, tmp_path / "run", samples=2, max_turns=3, max_new_tokens=12, report=True)
        result = run_eval(settings, HttpPolicy([url], model="tiny"))
    finally:
        local.close()
    assert result.errors == 0 and result.episodes == 6 and server.chat_requests == result.turns
    assert sum(result.statuses.values()) == 6 and result.turns >= 6
    assert set(result.statuses) <= {"answered", "no_answer", "over_turn", "over_context"}
    assert result.metrics["episodes"] == 6 and len(result.metrics["accuracy_by_budget"]) == 3
    assert (tmp_path / "run" / "index.html").is_file()
    turns = [turn for t in latest_trajectories(tmp_path / "run").values() for turn in t.turns]
    assert all(turn.completion_tokens is not None and turn.completion_tokens <= 12 for turn in turns)


# ---------------------------------------------------------------- the protocol card


def test_every_run_carries_its_protocol_card(tmp_path: Path, serve) -> None:
    data = make_dataset(tmp_path / "data")
    _, url = serve(zoom_then_red())
    console = Console(record=True, width=200, file=io.StringIO())
    result = run_eval(config(data, tmp_path / "run", temperature=0.7, limit=4), HttpPolicy([url], model="mini-o3"), console=console)
    card = result.metrics["protocol"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["protocol"] == card
    assert card["model"]["model"] == "mini-o3" and card["model"]["endpoints"] == HttpPolicy([url], model="m").base_urls
    assert card["model"]["policy"].startswith("HttpPolicy(")
    assert card["prompt"]["mode"] == "zoom" and card["prompt"]["system_prompt"] == protocol.SYSTEM_PROMPT
    assert card["prompt"]["system_prompt_sha256"] == hashlib.sha256(protocol.SYSTEM_PROMPT.encode()).hexdigest()
    assert card["images"] == {"max_pixels": 160 * 120, "min_pixels": 28 * 28, "refuse_originals_over": result.metrics["protocol"]["images"]["refuse_originals_over"]}
    assert card["sampling"]["K"] == 2 and card["sampling"]["temperature"] == 0.7 and card["budget"]["max_turns"] == 6
    assert card["scoring"]["judge"] is None and "rules v" in card["scoring"]["rules"]
    data_file = tmp_path / "data" / "data.json"
    assert card["data"]["sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert (card["data"]["questions"], card["data"]["limit"], card["data"]["kind"]) == (4, 4, "json")
    assert card["options"]["order"].startswith("as in the data file") and card["options"]["open_questions"] == 4
    shown = console.export_text()
    assert shown.count("protocol card") == 2 and card["data"]["sha256"][:16] in shown  # at the start and at the end
    # Other questions, another hash: the card tells two runs on different data apart.
    other = run_eval(config(data, tmp_path / "other", limit=5), HttpPolicy([url], model="mini-o3"), console=Console(file=io.StringIO()))
    assert other.metrics["protocol"]["data"]["sha256"] == card["data"]["sha256"]
    assert other.metrics["protocol"]["data"]["questions_sha256"] != card["data"]["questions_sha256"]


def test_the_card_hashes_a_dataset_folder_and_counts_right_letters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = vstar_folder(tmp_path / "vstar_bench")
    result = run_eval(config(f"vstar:{root}", tmp_path / "run", samples=1), ScriptedPolicy(["<answer>A</answer>"]))
    card = result.metrics["protocol"]
    assert card["data"]["covers"].startswith("3 data files")  # test_questions.jsonl and two annotation files, not the images
    assert card["options"]["right_letter"] == {"A": 1, "B": 1}
    (root / "direct_attributes" / "sa_1.json").write_text("{}")
    again = run_eval(config(f"vstar:{root}", tmp_path / "again", samples=1), ScriptedPolicy(["<answer>A</answer>"]))
    assert again.metrics["protocol"]["data"]["sha256"] != card["data"]["sha256"]
    # The first run cannot be resumed on the changed data: its episodes answered other questions.
    with pytest.raises(RunDirError, match="was run on other data"):
        run_eval(config(f"vstar:{root}", tmp_path / "run", samples=1), ScriptedPolicy(["<answer>A</answer>"]))


# ---------------------------------------------------------------- the no-zoom baseline


class Recording(ScriptedPolicy):
    """A scripted policy that keeps every conversation it was shown."""

    def __init__(self, script: Any) -> None:
        super().__init__(script)
        self.seen: list[list[dict[str, Any]]] = []

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        self.seen.append(messages)
        return super().generate(messages, sampling)


def test_the_no_zoom_baseline_offers_no_zoom_and_answers_from_the_first_view(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", count=4)
    zoom_policy, direct_policy = Recording(lambda m: "<answer>red</answer>"), Recording(lambda m: "<answer>red</answer>")
    run_eval(config(data, tmp_path / "zoom", max_turns=3), zoom_policy)
    result = run_eval(config(data, tmp_path / "direct", prompt="direct", max_turns=1), direct_policy)
    assert result.metrics["avg_at_k"] == 0.5 and result.metrics["protocol"]["prompt"]["mode"] == "direct"
    systems = {messages[0]["content"][0]["text"] for messages in direct_policy.seen}
    assert systems == {protocol.DIRECT_SYSTEM_PROMPT}
    assert "grounding" not in protocol.DIRECT_SYSTEM_PROMPT and "zoom" not in protocol.DIRECT_SYSTEM_PROMPT
    assert "<answer>" in protocol.DIRECT_SYSTEM_PROMPT and protocol.SYSTEM_PROMPT.startswith(protocol.DIRECT_SYSTEM_PROMPT.split(" Once")[0])
    # Everything but the system prompt is the zoom run's: the same image and question.
    assert [m[1:] for m in direct_policy.seen] and all(len(m) == 2 for m in direct_policy.seen)
    first_zoom = {messages[1]["content"][1]["text"] for messages in zoom_policy.seen}
    assert {messages[1]["content"][1]["text"] for messages in direct_policy.seen} == first_zoom
    assert all(t.meta["prompt"] == "direct" for t in latest_trajectories(tmp_path / "direct").values())
    # A model that zooms anyway is cut off without an answer.
    stubborn = run_eval(config(data, tmp_path / "stubborn", prompt="direct", max_turns=1), ScriptedPolicy([ZOOM]))
    assert stubborn.statuses == {"over_turn": 8} and stubborn.metrics["avg_at_k"] == 0.0
    with pytest.raises(ValueError, match="set max_turns to 1"):
        config(data, tmp_path / "x", prompt="direct", max_turns=2)
    with pytest.raises(ValueError, match="prompt must be one of"):
        config(data, tmp_path / "x", prompt="nozoom")
    with pytest.raises(RunDirError, match="prompt"):
        run_eval(config(data, tmp_path / "direct", max_turns=1), direct_policy)


# ---------------------------------------------------------------- HR-Bench rotations and V* targets, from files in the published formats

HR_HEADER = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]


def jpeg_base64(size: tuple[int, int], colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def hrbench_tsv(path: Path) -> Path:
    """hr_bench_4k.tsv as DreamMr/HR-Bench ships it: two questions, each in its four option rotations."""
    rows = []
    for number, (question, category, options, colour) in enumerate(
        [("What is written on the sign?", "single", ["EXIT", "EXAM", "EDIT", "EXILE"], (10, 120, 10)),
         ("How many boats are there?", "cross", ["3", "2", "4", "5"], (10, 10, 120))]
    ):
        image = jpeg_base64((160, 90), colour)
        for cycle in range(4):
            rotated = options[-cycle:] + options[:-cycle] if cycle else options
            rows.append([4 * number + cycle, question, "ABCD"[rotated.index(options[0])], category, *rotated, cycle, image])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(HR_HEADER)
        writer.writerows(rows)
    return path


def test_hrbench_is_scored_over_its_rotations_beside_plain_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINI_O3_CACHE", str(tmp_path / "cache"))
    path = hrbench_tsv(tmp_path / "hr_bench_4k.tsv")

    def letter_a_or_exit(messages: list[dict[str, Any]]) -> str:
        # Always "A", except that the sign question is read right in every rotation.
        question = messages[1]["content"][1]["text"]
        if "sign" in question:
            letter = next(line[1] for line in question.splitlines() if line.endswith(") EXIT"))
            return f"<answer>{letter}</answer>"
        return "<answer>A</answer>"

    console = Console(record=True, width=200, file=io.StringIO())
    result = run_eval(config(f"hrbench:{path}", tmp_path / "run", samples=2, max_turns=2), ScriptedPolicy(letter_a_or_exit), console=console)
    assert "HR-Bench score (mean over its option rotations) 62.5% (rotations 100.0, 50.0, 50.0, 50.0)" in console.export_text()
    rotation = result.metrics["rotation"]
    assert rotation["cycles"] == {"0": 1.0, "1": 0.5, "2": 0.5, "3": 0.5}  # the boats answer is A only in rotation 0
    assert rotation["average"] == 0.625 == result.metrics["avg_at_k"] == rotation["plain"]
    assert rotation["by_category"]["single"]["average"] == 1.0 and rotation["by_category"]["cross"]["average"] == 0.25
    assert rotation["all_rotations"] == 0.5 and rotation["questions"] == 2 and rotation["complete_groups"] == 2
    assert "rotations" in result.metrics["protocol"]["options"]["rotations"]
    assert result.metrics["protocol"]["options"]["right_letter"] == {"A": 2, "B": 2, "C": 2, "D": 2}


def vstar_folder(root: Path) -> Path:
    """craigwu/vstar_bench's layout: test_questions.jsonl, images, and a <stem>.json with target boxes [x, y, w, h]."""
    lines = [
        {"image": "direct_attributes/sa_1.jpg", "text": "What is the colour of the cup?\n(A) red\n(B) blue\n(C) green\n(D) white\n"
         "Answer with the option's letter from the given choices directly.", "category": "direct_attributes", "question_id": "0", "label": "A"},
        {"image": "relative_position/sa_2.jpg", "text": "Is the cup on the left or right of the dog?\n(A) left\n(B) right\n"
         "Answer with the option's letter from the given choices directly.", "category": "relative_position", "question_id": "1", "label": "B"},
    ]
    for line, box in zip(lines, ([[10, 20, 30, 40]], [[10, 20, 30, 40], [100, 70, 10, 10]])):
        image = root / line["image"]
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (120, 90), (90, 90, 90)).save(image)
        image.with_suffix(".json").write_text(json.dumps({"target_object": ["cup"], "bbox": box, "options": ["x", "y"]}))
    (root / "test_questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_search_behaviour_on_vstar_counts_crops_on_the_annotated_target(tmp_path: Path) -> None:
    root = vstar_folder(tmp_path / "vstar_bench")
    on_target = protocol.render_zoom(protocol.Zoom((0.0, 0.0, 0.5, 0.8)))  # pixels (0, 0, 60, 72): holds box (10, 20, 40, 60)
    away = protocol.render_zoom(protocol.Zoom((0.6, 0.0, 1.0, 0.5)))  # pixels (72, 0, 119, 45): holds neither box
    policy = ScriptedPolicy([on_target, away, on_target, "<answer>A</answer>"])
    console = Console(record=True, width=200, file=io.StringIO())
    result = run_eval(config(f"vstar:{root}", tmp_path / "run", samples=1), policy, console=console)
    assert "zooms per episode 3.00; 33.3% of zooms repeat a box already seen; 66.7% hold the annotated target" in console.export_text()
    search = result.metrics["search"]
    assert search["zooms"] == 6 and search["repeated_zooms"] == 2  # the third crop repeats the first in each episode
    assert search["target"]["zooms_on_target"] == 4 and search["target"]["episodes_that_found_it"] == 1.0
    assert search["target"]["accuracy_when_found"] == 0.5 and search["target"]["accuracy_when_not_found"] is None
    trajectory = latest_trajectories(tmp_path / "run")[("1", 0)]
    assert trajectory.meta["target_boxes"] == [[10.0, 20.0, 40.0, 60.0], [100.0, 70.0, 110.0, 80.0]]


# ---------------------------------------------------------------- gained and lost: the baseline against the zoom run


def zoom_helps_odd_questions(messages: list[dict[str, Any]]) -> str:
    """Without the zoom tool: answer "blue" (right for even ids). With it: zoom once, then "red" (right for odd ids)."""
    if "zoom" not in messages[0]["content"][0]["text"]:
        return "<answer>blue</answer>"
    done = sum(1 for message in messages if message["role"] == "assistant")
    return ZOOM if done == 0 else "<answer>red</answer>"


def test_compare_shows_per_question_what_the_zooms_gained_and_lost(tmp_path: Path) -> None:
    from mini_o3.eval.compare import compare_questions, write_comparison

    data = make_dataset(tmp_path / "data", count=5)
    baseline, zoomed = tmp_path / "baseline", tmp_path / "zoom"
    run_eval(config(data, baseline, prompt="direct", max_turns=1), ScriptedPolicy(zoom_helps_odd_questions))
    run_eval(config(data, zoomed, max_turns=3), ScriptedPolicy(zoom_helps_odd_questions))
    changes = compare_questions(baseline, zoomed)
    assert [item["sample_id"] for item in changes["gained"]] == ["q1", "q3"]
    assert [item["sample_id"] for item in changes["lost"]] == ["q0", "q2", "q4"]
    assert changes["gain_pp"] == pytest.approx(40.0) and changes["loss_pp"] == pytest.approx(-60.0)
    assert changes["avg_b"] - changes["avg_a"] == pytest.approx((changes["gain_pp"] + changes["loss_pp"]) / 100)
    assert changes["gained"][0]["answers_a"] == "blue x2" and changes["gained"][0]["answers_b"] == "red x2"
    assert (changes["gained_after_a_zoom"], changes["lost_after_a_zoom"]) == (2, 3)  # every B run zoomed once
    assert read_results(zoomed)[("q1", 0)]["zooms"] == 1 and read_results(baseline)[("q1", 0)]["zooms"] == 0
    assert {item["setting"] for item in changes["card_differences"]} >= {"prompt.mode", "budget.max_turns"}
    assert all(item["expected"] for item in changes["card_differences"])
    # A run on other questions differs in more than the zoom, and says so.
    run_eval(config(data, tmp_path / "fewer", max_turns=3, limit=3), ScriptedPolicy(zoom_helps_odd_questions))
    other = compare_questions(baseline, tmp_path / "fewer")
    assert other["only_a"] == 2 and any(not item["expected"] and item["setting"] == "data.questions" for item in other["card_differences"])
    page = write_comparison(baseline, zoomed, tmp_path / "compare.html").read_text()
    assert "gained on 2 (+40.0 pp) and lost on 3 (-60.0 pp)" in page and "<script" not in page.lower()


def test_eval_compare_on_the_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mini_o3.cli import app

    data = make_dataset(tmp_path / "data", count=3)
    run_eval(config(data, tmp_path / "a", prompt="direct", max_turns=1), ScriptedPolicy(zoom_helps_odd_questions))
    run_eval(config(data, tmp_path / "b", max_turns=3), ScriptedPolicy(zoom_helps_odd_questions))
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--html", str(tmp_path / "c.html")])
    assert result.exit_code == 0, result.output
    assert "gained on 1" in result.output and "lost on 2" in result.output and (tmp_path / "c.html").is_file()
    missing = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "data")])
    assert missing.exit_code == 2
    wrong = runner.invoke(app, ["eval", "--data", data, "--model-path", str(tmp_path), "--prompt", "direct", "--max-turns", "3"])
    assert wrong.exit_code == 2 and "max_turns" in wrong.output
    (tmp_path / "data" / "data.json").write_text((tmp_path / "data" / "data.json").read_text().replace("blue", "green"))
    changed = runner.invoke(app, ["eval", "--data", data, "--api", "http://127.0.0.1:9", "--model", "m", "--prompt", "direct", "--max-pixels", "19200", "--min-pixels", "784", "--out", str(tmp_path / "a")])
    assert changed.exit_code == 2 and "was run on other data" in " ".join(changed.output.split()) and "Traceback" not in changed.output
