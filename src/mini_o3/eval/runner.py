"""The evaluation runner: K sampled episodes per question, streamed to disk, resumable, scored, summarised.

A run directory holds everything a run produced (see `RUN_LAYOUT`). Episodes are appended to
`trajectories.jsonl` (the raw log, with every image the model saw under `views/`) and their
rule-based scores to `results.jsonl` as each one finishes, so killing the process at any
moment loses only episodes not yet on disk (in flight, or finished a moment ago and still
being saved): running the same command again repairs a torn last line, skips every
(sample, run) already on disk and runs only the rest. Episodes that
ended in `error` (a dead server, an unreadable image) are kept and counted; `retry_errors`
runs them again. When a judge is configured it runs after the episodes, over the finished
results, with a disk cache, and `rescore(run_dir, judge=...)` re-scores a finished run
without calling the model again. Metrics come from `mini_o3.eval.summary.summarize`.

Where each part lives (every name below is re-exported here, so `from mini_o3.eval.runner import ...`
works as before):

- `mini_o3.eval.run_dir`: the run directory's file names, `RUN_LAYOUT`, `RunDirError`,
  `latest_trajectories` and `read_results`
- `mini_o3.eval.run_scoring`: `result_record`, `rule_score`, `score_run` (rules and the judge),
  `episode_results` and `summarize_run` (metrics.json)
- here: `EvalConfig`, `EvalResult`, `load_config` and the resume check, `rescore` and the runner
  (`run_eval`): everything that builds or takes an `EvalConfig`, so neither module above
  imports this one
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mini_o3 import __version__
from mini_o3.agent.loop import Episode, EpisodeConfig, run_episodes
from mini_o3.agent.sample import Sample
from mini_o3.eval.run_dir import (
    CONFIG_FILE,
    JUDGE_CACHE_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    RUN_LAYOUT,
    SKIPPED_FILE,
    TRAJECTORIES_FILE,
    RunDirError,
    latest_trajectories,
    read_results,
)
from mini_o3.eval.run_scoring import write_results, episode_results, result_record, rule_score, score_run, summarize_run
from mini_o3.agent.images import DEFAULT_IMAGE_PIXEL_LIMIT
from mini_o3.jsonl import JsonlAppender, remove_stale_temporaries, repair_tail, write_atomic, write_json
from mini_o3.eval.judge import JudgeConfig
from mini_o3.agent.policy import Policy
from mini_o3.policies.seeded import SeededPolicy
from mini_o3.eval.baseline import DirectPromptPolicy
from mini_o3.eval.card import card_rows, describe_policy, protocol_card, scoring_card
from mini_o3.eval.scoring import Score
from mini_o3.agent.store import TrajectoryStore
from mini_o3.agent.trajectory import Status, Trajectory

JUDGE_MODES = ("rescue", "all")
PROMPT_MODES = ("zoom", "direct")

# EvalConfig fields that change what an episode does or is scored on: a run directory made with
# other values cannot be resumed with these, since its finished episodes would mean something else.
_IDENTITY_FIELDS = (
    "data", "max_turns", "max_images", "max_context_tokens", "context_reserve", "numbering",
    "temperature", "top_p", "max_new_tokens", "seed", "max_pixels", "min_pixels", "pixel_limit", "prompt",
)


@dataclass
class EvalConfig:
    """One evaluation: which data, how many sampled runs per question, the budgets, where to write."""

    data: str
    """Dataset spec for `mini_o3.data.loading.load_dataset`, e.g. "vstar:/data/vstar_bench" or a path."""
    out: Path = Path("runs/eval")
    """The run directory; running again with the same directory resumes it."""
    samples: int = 1
    """K: sampled runs per question (Avg@K). The paper uses 32 for VisualProbe and V*, 8 for HR-Bench, 1 for MME-RealWorld."""
    max_turns: int = 32
    """Assistant turns per episode at most; accuracy at every smaller budget comes from the same run."""
    concurrency: int = 32
    """Episodes in flight at once (each sends one request at a time)."""
    temperature: float = 1.0
    """Sampling temperature; the paper evaluates at 1.0."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 8192
    """Tokens per turn at most (the reference's 8,192)."""
    seed: int | None = 0
    """Base seed: each turn samples with a seed derived from (seed, sample id, run, turn), so runs differ and repeat; None sends none."""
    limit: int | None = None
    """Evaluate only the first N questions of the data (None for all)."""
    skip_bad: bool = False
    """Skip and count bad data records (listed in skipped.txt) instead of stopping at the first one."""
    retry_errors: bool = False
    """Run again the episodes a previous run of this directory recorded as `error`."""
    judge: JudgeConfig | None = None
    """An LLM judge (OpenAI-compatible endpoint); None scores by the rules only. Its cache defaults to RUN_DIR/judge_cache.jsonl."""
    judge_mode: str = "rescue"
    """"rescue": ask the judge only where the rules say wrong (a rule match is never overturned); "all": the judge decides every answer, as the paper's."""
    judge_concurrency: int = 8
    """Judge requests in flight at once."""
    max_images: int | None = None
    """Images in the context at most, the original included (None: no limit besides the turns)."""
    max_context_tokens: int = 32_768
    """The model's context window."""
    context_reserve: int = 2_000
    """End the episode as over_context when the context gets within this many tokens of the window."""
    numbering: str = "reference"
    """Observation labels: "reference" (as the released checkpoint was trained) or "consistent"."""
    max_pixels: int = 2_000_000
    """Every image shown to the model is scaled down to at most this many pixels."""
    min_pixels: int = 40_000
    """... and up to at least this many."""
    pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT
    """Refuse originals larger than this many pixels (decompression-bomb guard)."""
    save_views: bool = True
    """Save every image the model saw under views/ (the report's crops need them)."""
    report: bool = True
    """Write index.html and the plots when the run ends."""
    report_episodes: int = 200
    """The report's trajectory viewer shows at most this many episodes."""
    progress: bool = True
    """Show a progress bar."""
    prompt: str = "zoom"
    """"zoom": the released system prompt, which offers the zoom tool; "direct": the no-zoom baseline (the same prompt
    without its zoom sentence, answered from the first view; needs max_turns=1; see mini_o3.eval.baseline)."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.samples < 1:
            raise ValueError(f"samples (K) must be at least 1, got {self.samples}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.judge_concurrency < 1:
            raise ValueError(f"judge_concurrency must be at least 1, got {self.judge_concurrency}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.judge_mode not in JUDGE_MODES:
            raise ValueError(f"judge_mode must be one of {JUDGE_MODES}, got {self.judge_mode!r}")
        if self.numbering not in ("reference", "consistent"):
            raise ValueError(f"numbering must be 'reference' or 'consistent', got {self.numbering!r}")
        if self.prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {PROMPT_MODES}, got {self.prompt!r}")
        if self.prompt == "direct" and self.max_turns != 1:
            raise ValueError(f"the direct (no-zoom) prompt answers from the first view: set max_turns to 1, not {self.max_turns}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be None or at least 0, got {self.limit}")
        if isinstance(self.judge, dict):
            self.judge = JudgeConfig(**self.judge)
        # Limits and ResizePolicy validate their own fields; fail here, before any work.
        self.episode_config()

    def episode_config(self) -> EpisodeConfig:
        """The agent's EpisodeConfig for this evaluation (seeds are added per turn, see `seed`)."""
        return EpisodeConfig.from_settings(
            self.max_turns, self.max_images, self.max_context_tokens, self.context_reserve, self.numbering,
            self.temperature, self.top_p, self.max_new_tokens, self.max_pixels, self.min_pixels, self.pixel_limit,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        record = asdict(self)
        record["out"] = str(self.out)
        if self.judge is not None and record["judge"].get("cache_path") is not None:
            record["judge"]["cache_path"] = str(record["judge"]["cache_path"])
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "EvalConfig":
        """Rebuild a config written by `to_dict` (unknown keys from other versions are ignored)."""
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in known})


@dataclass
class EvalResult:
    """What `run_eval` did and what the run directory now holds."""

    run_dir: Path
    metrics: dict[str, Any]
    """metrics.json: mini_o3.eval.summary.summarize over every episode of the run."""
    episodes: int
    """Episodes the run holds (questions x K)."""
    ran: int
    """Episodes this call ran."""
    resumed: int
    """Episodes found finished on disk and not run again."""
    errors: int
    """Episodes of the run whose status is `error` (rerun them with retry_errors)."""
    turns: int
    """Assistant turns this call ran."""
    elapsed_s: float
    """Wall time of the episode phase of this call."""
    skipped_records: int = 0
    """Bad data records skipped at load time (skip_bad)."""
    judge_errors: int = 0
    """Episodes the judge gave no verdict on (they keep their rule score)."""
    statuses: dict[str, int] = field(default_factory=dict)
    """Episodes of the run by status."""
    unreadable_images: int = 0
    """Error episodes whose image passed the header check at load but could not be decoded; left out of the metrics."""

    @property
    def turns_per_s(self) -> float:
        """Assistant turns per second of this call's episode phase."""
        return self.turns / self.elapsed_s if self.elapsed_s > 0 else 0.0


# ---------------------------------------------------------------- run directory files

# The file names and readers are in mini_o3.eval.run_dir; these two build or take an EvalConfig.


def load_config(run_dir: str | Path) -> EvalConfig:
    """The EvalConfig saved in a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} is not an eval run directory (no {CONFIG_FILE}); point at the --out of `mini-o3 eval`")
    try:
        return EvalConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"cannot read {path}: {error}") from error


def _check_resumable(run_dir: Path, config: EvalConfig) -> None:
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["config"]
    except (ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"cannot read {path} ({error}); fix or delete it, or choose another --out") from error
    current = config.to_dict()
    different = [
        f"{name}: {saved.get(name)!r} on disk, {current[name]!r} now"
        for name in _IDENTITY_FIELDS
        if name in saved and saved[name] != current[name]
    ]
    if different:
        raise RunDirError(
            f"{run_dir} holds a run made with other settings ({'; '.join(different)}); "
            "resume it with the same settings, or choose another --out"
        )


# The scoring itself is in mini_o3.eval.run_scoring; these two take an EvalConfig.


def rescore(
    run_dir: str | Path,
    judge: JudgeConfig | None = None,
    judge_mode: str | None = None,
    report: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Score a run's trajectories again (rules, and the judge when given) without the model; rewrite results and metrics.

    `judge_mode` defaults to the run's own setting. Returns the new metrics.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    repair_tail(run_dir / TRAJECTORIES_FILE)
    trajectories = _run_trajectories(run_dir, config, read_results(run_dir))
    mode = judge_mode or config.judge_mode
    records, _ = score_run(run_dir, trajectories, judge, mode, config.judge_concurrency, console)
    write_results(run_dir, records.values())
    saved = _saved_card(run_dir)  # a run made before cards has none, and gets none
    card = dict(saved, scoring=scoring_card(asdict(judge) if judge is not None else None, mode)) if saved else {}
    summary = summarize_run(run_dir, trajectories, records, config.max_turns, card)
    if report:
        from mini_o3.eval.report import write_report

        write_report(run_dir, config.report_episodes)
    return summary


def _check_same_data(run_dir: Path, card: dict[str, Any]) -> None:
    """Refuse to resume a run whose data file changed since it started: its finished episodes answered other questions."""
    before = (_saved_card(run_dir).get("data") or {}).get("sha256")
    now = card["data"]["sha256"]
    if before and now and before != now:
        raise RunDirError(
            f"{run_dir} was run on other data: the data's sha256 was {before[:16]}, now {now[:16]} "
            f"({card['data']['covers']}); choose another --out, or restore the data"
        )


def _saved_card(run_dir: Path) -> dict[str, Any]:
    """The protocol card config.json holds (empty for runs made before cards)."""
    try:
        return json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("protocol") or {}
    except (OSError, ValueError):
        return {}


def _run_trajectories(
    run_dir: Path, config: EvalConfig, results: dict[tuple[str, int], dict[str, Any]]
) -> dict[tuple[str, int], Trajectory]:
    """The episodes a run holds: those results.jsonl lists (or every one, before results exist), K runs at most."""
    latest = latest_trajectories(run_dir)
    keys = [key for key in latest if key[1] < config.samples and (not results or key in results)]
    return {key: latest[key] for key in keys}


# ---------------------------------------------------------------- the runner


def run_eval(
    config: EvalConfig, policy: Policy, console: Console | None = None, progress_console: Console | None = None, label: str = "episodes"
) -> EvalResult:
    """Evaluate `policy` as `config` says; resume whatever the run directory already holds.

    Messages go to `console`; the progress bar, named `label`, to `progress_console` (default `console`).
    """
    from mini_o3.data.loading import load_dataset

    console = console or Console(stderr=True)
    run_dir = config.out
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_resumable(run_dir, config)
    remove_stale_temporaries(run_dir)  # what a run killed mid-write left (results.jsonl, metrics.json, the page)
    console.print(f"[bold]mini-o3 eval[/bold] -> {run_dir}")
    console.print_json(json.dumps(config.to_dict(), default=str))

    loaded = load_dataset(config.data, skip_bad=config.skip_bad, limit=config.limit, pixel_limit=config.pixel_limit)
    samples = loaded.samples
    _check_unique_ids(samples, config.data)
    if loaded.reasons:
        write_atomic(run_dir / SKIPPED_FILE, "".join(reason + "\n" for reason in loaded.reasons))
    dataset = {"kind": loaded.kind, "path": str(loaded.path), "questions": len(samples), "skipped": loaded.skipped}
    card = protocol_card(config.to_dict(), policy, dataset, samples)
    _check_same_data(run_dir, card)
    write_json(
        run_dir / CONFIG_FILE,
        {
            "config": config.to_dict(),
            "mini_o3_version": __version__,
            "policy": describe_policy(policy),
            "dataset": dataset,
            "episode_config": asdict(config.episode_config()),
            "protocol": card,
        },
    )
    console.print(loaded.summary())
    print_card(console, card)

    for name in (TRAJECTORIES_FILE, RESULTS_FILE):
        cut = repair_tail(run_dir / name)
        if cut:
            console.print(f"[yellow]repaired {name}: dropped a torn last line of {cut} bytes (that episode runs again)[/yellow]")
    store = TrajectoryStore(run_dir, save_views=config.save_views, filename=TRAJECTORIES_FILE)
    latest = latest_trajectories(run_dir)
    results = read_results(run_dir)

    wanted = [(sample.id, run) for run in range(config.samples) for sample in samples]
    # A trajectory whose result line was lost (killed between the two appends) is scored, not rerun.
    missing = [key for key in wanted if key in latest and not _result_matches(results.get(key), latest[key])]
    if missing:
        with JsonlAppender(run_dir / RESULTS_FILE) as appender:
            for key in missing:
                results[key] = result_record(latest[key], rule_score(latest[key]))
                appender.append(results[key])

    def needs_run(key: tuple[str, int]) -> bool:
        finished = latest.get(key)
        return finished is None or (config.retry_errors and finished.status == Status.ERROR)

    by_id = {sample.id: sample for sample in samples}
    todo = [key for key in wanted if needs_run(key)]
    resumed = len(wanted) - len(todo)
    if resumed:
        retried = sum(1 for key in todo if key in latest)
        console.print(f"resuming: {resumed} of {len(wanted)} episodes already finished" + (f"; retrying {retried} errors" if retried else ""))

    turns, ran, started = 0, 0, time.perf_counter()
    episode_policy: Policy = DirectPromptPolicy(policy) if config.prompt == "direct" else policy
    if config.seed is not None:
        episode_policy = SeededPolicy(episode_policy, config.seed)
    writer = _Writer(store, run_dir / RESULTS_FILE, latest, results)
    try:
        with _progress(progress_console or console, config.progress) as progress:
            task = progress.add_task(label, total=len(wanted), completed=resumed, errors=0, speed="", accuracy="")
            errors_now = correct_now = 0
            for episode in run_episodes(episode_policy, _jobs(todo, by_id), config.episode_config(), config.concurrency):
                # agent.run_episode leaves meta["run"] unset on an episode that failed before its first turn.
                episode.trajectory.meta["run"] = episode.run
                episode.trajectory.meta.update(sample_facts(by_id[episode.trajectory.sample_id], config.prompt))
                writer.put(episode)
                ran += 1
                turns += episode.trajectory.num_turns
                errors_now += episode.trajectory.status == Status.ERROR
                correct_now += rule_score(episode.trajectory).correct
                elapsed = time.perf_counter() - started
                speed = f"{turns / elapsed:.1f} turns/s" if elapsed > 0 else ""
                progress.update(task, advance=1, errors=errors_now, speed=speed, accuracy=f"acc {correct_now / ran:.0%}")
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted after {ran} episodes; saving them; run the same command again to resume[/yellow]")
        raise
    finally:
        writer.close()  # every finished episode is on disk before we go on (or out)
    elapsed = time.perf_counter() - started

    trajectories = {key: latest[key] for key in wanted if key in latest}
    rules = {key: Score.from_dict(results[key]["rule"]) for key in trajectories}
    records, judge_errors = score_run(run_dir, trajectories, config.judge, config.judge_mode, config.judge_concurrency, console, rules)
    write_results(run_dir, records.values())
    summary = summarize_run(run_dir, trajectories, records, config.max_turns, card)
    statuses: dict[str, int] = {}
    for trajectory in trajectories.values():
        statuses[trajectory.status.value] = statuses.get(trajectory.status.value, 0) + 1
    result = EvalResult(
        run_dir=run_dir,
        metrics=summary,
        episodes=len(wanted),
        ran=ran,
        resumed=resumed,
        errors=statuses.get(Status.ERROR.value, 0),
        turns=turns,
        elapsed_s=elapsed,
        skipped_records=loaded.skipped,
        judge_errors=judge_errors,
        statuses=statuses,
        unreadable_images=sum(1 for trajectory in trajectories.values() if trajectory.error_kind == "image"),
    )
    if config.report:
        from mini_o3.eval.report import write_report

        write_report(run_dir, config.report_episodes)
    print_card(console, card)
    _print_summary(console, result)
    return result


def sample_facts(sample: Sample, prompt: str = "zoom") -> dict[str, Any]:
    """What the metrics need from a sample beside its trajectory (target boxes, HR-Bench rotation), and the prompt mode."""
    facts: dict[str, Any] = {"prompt": prompt}
    if sample.boxes:
        facts["target_boxes"] = [list(box) for box in sample.boxes]
    for key in ("cycle_category", "group"):
        if sample.meta.get(key) is not None:
            facts[key] = sample.meta[key]
    return facts


def print_card(console: Console, card: dict[str, Any]) -> None:
    """The protocol card as a two-column table."""
    table = Table(title="protocol card", title_justify="left", show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    for name, value in card_rows(card):
        table.add_row(name, escape(value))
    console.print(table)


class _Writer:
    """Saves finished episodes (views, trajectory line, then its result line) from a queue, off the runner's thread.

    The runner hands an episode over and goes straight back to `run_episodes`, which starts the
    next job only when asked for the next finished episode: saving in line would leave slots
    empty while a burst of finished episodes is saved one by one. A few threads share the
    queue because saving is mostly file creation (one JPEG per view), which waits on the file
    system without holding the GIL; each episode's lines are still written in order.
    """

    def __init__(self, store: TrajectoryStore, results_path: Path, latest: dict, results: dict, threads: int = 4) -> None:
        self.store = store
        self.latest = latest
        self.results = results
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._results = JsonlAppender(results_path)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"eval-writer-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def put(self, episode: Episode) -> None:
        """Queue a finished episode; raises the writer's error if saving failed."""
        self._raise()
        self._queue.put(episode)

    def close(self) -> None:
        """Save everything queued, stop, and raise the error if saving failed."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._results.close()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"cannot save episodes in {self.store.root}: {self.error}") from self.error

    def _work(self) -> None:
        while True:
            episode = self._queue.get()
            if episode is None:
                return
            if self.error is not None:
                continue
            try:
                trajectory = self.store.add(episode)
                record = result_record(trajectory, rule_score(trajectory))
                with self._lock:
                    self._results.append(record)
                    self.latest[(trajectory.sample_id, episode.run)] = trajectory
                    self.results[(trajectory.sample_id, episode.run)] = record
            except BaseException as error:  # reported to the runner, which stops
                self.error = error


def _result_matches(record: dict[str, Any] | None, trajectory: Trajectory) -> bool:
    """Whether a results line belongs to this trajectory (not to an earlier attempt of a retried episode)."""
    return (
        record is not None
        and record.get("status") == trajectory.status.value
        and record.get("turns") == trajectory.num_turns
        and record.get("answer") == trajectory.answer
        and isinstance(record.get("rule"), dict)
    )


def _jobs(keys: list[tuple[str, int]], by_id: dict[str, Sample]) -> Iterator[tuple[Sample, int]]:
    for sample_id, run in keys:
        yield by_id[sample_id], run


def _check_unique_ids(samples: list[Sample], spec: str) -> None:
    seen: set[str] = set()
    duplicates = []
    for sample in samples:
        if sample.id in seen:
            duplicates.append(sample.id)
        seen.add(sample.id)
    if duplicates:
        shown = ", ".join(repr(item) for item in duplicates[:5])
        raise ValueError(
            f"{spec}: {len(duplicates)} question id(s) appear more than once ({shown}); results are kept per id, "
            "so give every question its own id"
        )


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[accuracy]}"),  # by the rules, over the episodes run now
        TextColumn("{task.fields[speed]}"),
        TextColumn("[red]{task.fields[errors]} errors"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        refresh_per_second=4,
    )


def _print_summary(console: Console, result: EvalResult) -> None:
    statuses = ", ".join(f"{name} {count}" for name, count in sorted(result.statuses.items()))
    console.print(
        f"{result.episodes} episodes ({result.ran} run now, {result.resumed} resumed), {result.turns} turns in "
        f"{result.elapsed_s:.1f} s ({result.turns_per_s:.1f} turns/s); {statuses}"
    )
    headline = _headline(result.metrics)
    if headline:
        console.print(headline)
    for line in _figures(result.metrics):
        console.print(line)
    if result.unreadable_images:
        console.print(
            f"[yellow]{result.unreadable_images} episodes could not decode their image (see unreadable_images in {METRICS_FILE}); "
            "they are left out of the metrics: replace those files, then run the same command with --retry-errors[/yellow]"
        )
    if result.errors - result.unreadable_images:
        console.print(f"[yellow]{result.errors - result.unreadable_images} episodes ended in error; run the same command with --retry-errors to run them again[/yellow]")
    if result.judge_errors:
        console.print(f"[yellow]the judge gave no verdict on {result.judge_errors} episodes (they keep their rule score); rerun `rescore` to ask again[/yellow]")
    console.print(f"wrote {result.run_dir / METRICS_FILE}" + (f" and {result.run_dir / 'index.html'}" if (result.run_dir / "index.html").exists() else ""))


def _figures(summary: dict[str, Any]) -> list[str]:
    """The HR-Bench rotation score and the search figures, one line each, when the run has them."""
    lines = []
    rotation = summary.get("rotation")
    if rotation:
        cycles = ", ".join(f"{100 * value:.1f}" for value in rotation["cycles"].values())
        lines.append(f"HR-Bench score (mean over its option rotations) {100 * rotation['average']:.1f}% (rotations {cycles}); "
                     f"right in all rotations {100 * rotation['all_rotations']:.1f}%")
    search = summary.get("search")
    if search and search["zooms"]:
        line = (f"zooms per episode {search['zooms_per_episode']['mean']:.2f}; {100 * search['repeated_share']:.1f}% of zooms repeat a box "
                f"already seen")
        target = search.get("target")
        if target and target["share_of_zooms"] is not None:
            line += f"; {100 * target['share_of_zooms']:.1f}% hold the annotated target"
        lines.append(line)
    return lines


def _headline(summary: dict[str, Any]) -> str:
    if summary.get("avg_at_k") is None:
        return ""
    runs = (summary.get("runs_per_sample") or {}).get("max", 1)
    return (
        f"[bold]Avg@{runs} {100 * summary['avg_at_k']:.1f}%[/bold], pass@{runs} {100 * summary['pass_at_k']:.1f}% "
        f"over {summary['samples']} questions"
    )


__all__ = [
    "CONFIG_FILE",
    "JUDGE_CACHE_FILE",
    "JUDGE_MODES",
    "METRICS_FILE",
    "RESULTS_FILE",
    "RUN_LAYOUT",
    "SKIPPED_FILE",
    "TRAJECTORIES_FILE",
    "EvalConfig",
    "EvalResult",
    "RunDirError",
    "describe_policy",
    "print_card",
    "sample_facts",
    "episode_results",
    "latest_trajectories",
    "load_config",
    "read_results",
    "rescore",
    "result_record",
    "rule_score",
    "run_eval",
    "score_run",
    "summarize_run",
]
