"""`mini-o3 demo`: the whole recipe on one CPU, offline, in stages that resume.

synthesise train and test worlds -> oracle cold-start trajectories -> SFT -> RL with
over-turn masking (with `ablation`, RL each way, repeated) -> evaluate chance, the oracle
(the ceiling), the starting model, SFT and every RL model at every turn budget, overall and
per level, Avg@K at temperature 1 as the paper -> one report (index.html, summary.json,
summary.md). Each stage writes `<stage>/stage.json` when it finishes; running again skips
finished stages. On the console a stage shows one progress line and one line of outcome;
what it prints besides (job configs, summaries, library warnings) goes to `<stage>/stage.log`.
The demo world is the grid scan of `mini_o3.data.synth` (level "grid"): one
coloured shape hidden in one of G x G cells, small in the first view and large once its cell
is zoomed. Levels follow the target's cell in reading order against the RL turn limit: hard
targets need more turns than RL trains with, which is where over-turn masking matters.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rich import box
from rich.console import Console
from rich.table import Table

from mini_o3.jsonl import write_json

STAGE_LOG = "stage.log"
"""Everything a stage printed (job configs, summaries), with library warnings and log records, in its folder."""

BASE_CHECKPOINT = Path(__file__).resolve().parents[3] / "checkpoints" / "base-tiny"
"""The committed base model (`mini-o3 pretrain`): a tiny Qwen2.5-VL that already sees the grid world."""


@dataclass(frozen=True)
class DemoConfig:
    """One demo run: the world, the data sizes and the training budgets."""

    out: str = "runs/demo"
    """Where every stage writes; running again resumes."""
    seed: int = 0
    """Seed of the whole run; train and test scenes never share a seed."""
    preset: str = "default"
    """default (about 15 minutes on 2 cores) or long (more data, steps and the masking ablation)."""
    grid: int = 3
    """The world is grid x grid cells; more cells than `rl_max_turns` make over-turn masking matter."""
    image_size: int = 896
    """Side of the square originals."""
    view_pixels: int = 112 * 112
    """Every image is shown to the model at most this many pixels (16 image tokens at 112x112)."""
    train_scenes: int = 300
    """Training questions (cold start and RL)."""
    test_scenes: int = 48
    """Held-out questions for evaluation."""
    sft_steps: int = 200
    """SFT optimizer steps: an imperfect cold start, as the paper's was (450 leave RL no headroom:
    their failures are rare sampling accidents)."""
    sft_batch: int = 8
    """Conversations per SFT step."""
    sft_learning_rate: float = 2e-3
    """SFT peak learning rate (a tiny model from random or small-scale pre-trained weights)."""
    cold_start_per_question: int = 1
    """Oracle trajectories collected per training question (patient scans of one question are identical)."""
    cold_start_give_up: float = 0.0
    """Share of cold-start scans that give up after a few wrong cells and guess (only lucky guesses are
    kept). Measured at 0.6: the SFT model then guesses so often that it falls to chance, so 0 by default."""
    rl_steps: int = 16
    """RL steps (measured at 4, 8, 12 and 16 from three SFT models: docs/results.md)."""
    rl_prompts_per_step: int = 8
    """Questions per RL step (after dynamic sampling)."""
    rl_generations: int = 8
    """Rollouts per question (the GRPO group)."""
    rl_learning_rate: float = 1e-4
    """RL learning rate (with 8 optimizer steps per RL step and two epochs; 5e-5 left the model where it
    was, 4e-4 made it worse, 2e-4 with two epochs was unstable: docs/results.md)."""
    rl_max_turns: int = 10
    """Turn limit in RL training: every turn the test allows. The paper trains with 6 against 12-32 at
    test; measured here at 6 and 8, RL sharpened the trained turns and the tiny model's longer searches
    broke beyond them (docs/results.md). The long preset trains with 8 for the masking ablation."""
    rl_mini_batch_prompts: int = 1
    """Questions per optimizer step: 8 optimizer steps per RL step, as the release takes (batch 256,
    mini-batch 32), so PPO's clipping bounds each step's move. One step per RL step (8) measured flat."""
    rl_ppo_epochs: int = 2
    """Passes over each RL step's rollouts (8 optimizer steps each; the release takes 1). At lr 1e-4, two
    epochs left half the no-answer episodes of SFT on every seed; one epoch at 2e-4 about 0.6 of them."""
    rl_ignore_void: bool = True
    """Mask void rollouts (no zoom and no answer on the last turn) instead of training them with
    reward 0: the release's `ignore_void` switch, off in its launch. This world's failures are all
    void derailments, and training them moved the model the wrong way (docs/results.md)."""
    overturn_mask: bool = True
    """Over-turn masking in RL (False for the ablation)."""
    ablation: bool = False
    """Also train RL models with masking off and report both ways."""
    ablation_repeats: int = 2
    """With the ablation: RL runs each way (seeds seed, seed+1, ...), all from the same SFT model."""
    eval_samples: int = 4
    """Sampled runs per test question (Avg@K, as the paper)."""
    eval_temperature: float = 1.0
    """Sampling temperature of the evaluations (the paper's 1.0; 0 is greedy)."""
    base: str = ""
    """Starting checkpoint; empty uses the committed base model, or a fresh tiny one without it."""
    sft_from: str = ""
    """A finished demo run whose base, data, cold-start and SFT stages this run reuses (their settings
    must match; only RL and evaluation settings may differ): RL sweeps from one SFT model."""

    @property
    def eval_turns(self) -> int:
        """The largest test budget: one turn per cell plus the answer."""
        return self.grid * self.grid + 1


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "long": {"train_scenes": 600, "test_scenes": 96, "sft_steps": 300, "rl_steps": 16, "rl_max_turns": 8, "ablation": True},
    "smoke": {
        "train_scenes": 16, "test_scenes": 6, "sft_steps": 6, "sft_batch": 4, "rl_steps": 1, "rl_prompts_per_step": 2,
        "rl_generations": 4, "ablation": True, "ablation_repeats": 1, "eval_samples": 2,
    },
}
"""default: about 15 minutes on 2 cores; long: more data and steps, with the masking ablation at 8
training turns against 10 at test (the paper's setting in miniature);
smoke: every stage on a handful of questions in a few minutes (CI), which proves the pipeline, not learning."""

LEVELS = ("easy", "medium", "hard")


def demo_config(preset: str = "default", **overrides: Any) -> DemoConfig:
    """The config of a preset with overrides applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; choose one of {sorted(PRESETS)}")
    return DemoConfig(preset=preset, **{**PRESETS[preset], **overrides})


@contextmanager
def stage_output(path: Path) -> Iterator[None]:
    """While inside: prints, warnings, library log records go to `path`; library progress bars are off."""
    from mini_o3.train.console import library_noise_to

    with library_noise_to(path) as log, redirect_stdout(log), redirect_stderr(log):
        yield


class Stages:
    """Runs named stages once: a finished stage's `stage.json` makes it a no-op on reruns.

    On the console a stage shows its own progress line (drawn on `console`) and one line when it
    ends; whatever else it prints goes to `<stage>/stage.log`.
    """

    def __init__(self, root: Path, console: Console) -> None:
        self.root = root
        self.console = console
        self.timings: dict[str, float] = {}

    def run(self, name: str, work: Callable[[Path], dict[str, Any]], outcome: Callable[[dict[str, Any]], str] | None = None) -> dict[str, Any]:
        """Run `work(stage_dir)` unless it finished before; return what it recorded. `outcome` words the result in one line."""
        folder = self.root / name
        marker = folder / "stage.json"
        if marker.exists():
            record = json.loads(marker.read_text())
            origin = f" in {record['from']}" if record.get("from") else ""
            self.console.print(f"[dim]{name}: done before{origin} ({record['seconds']:.0f} s), skipped[/dim]")
            if not origin:  # another run's stage took none of this run's time
                self.timings[name] = record["seconds"]
            return record["result"]
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            with stage_output(folder / STAGE_LOG):
                result = work(folder)
        except BaseException:
            self.console.print(f"[red]{name} did not finish[/red]; what it printed: {folder / STAGE_LOG}")
            raise
        seconds = time.perf_counter() - start
        write_json(marker, {"seconds": seconds, "result": result})
        self.timings[name] = seconds
        said = outcome(result) if outcome else ""
        self.console.print(f"[green]✓[/green] {name} ({seconds:.0f} s){': ' + said if said else ''}")
        return result


def _resize(config: DemoConfig):
    from mini_o3.agent.images import ResizePolicy

    return ResizePolicy(max_pixels=config.view_pixels, min_pixels=min(config.view_pixels, 56 * 56))


def _synth_options(config: DemoConfig):
    from mini_o3.data.problems import GridConfig, SynthOptions

    return SynthOptions(grid=GridConfig(rows=config.grid, cols=config.grid), resize=_resize(config), contact_sheet=8)


def run_demo(config: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) every stage and print the summary table (on `console`, stdout by default)."""
    # Bound to today's stdout: each stage sends sys.stdout to its log while it runs.
    console = console or Console(file=sys.stdout)
    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    saved = root / "demo_config.json"
    if saved.exists():
        before = json.loads(saved.read_text())
        if before != asdict(config):
            changed = sorted(key for key in asdict(config) if before.get(key) != asdict(config)[key])
            raise SystemExit(f"{root} holds a demo run with other settings ({', '.join(changed)}); use another --out or the same settings")
    if config.sft_from:
        adopt_sft(config, root)  # before the config is saved: a refused --sft-from leaves nothing behind
    console.rule("mini-o3 demo")
    console.print(_settings_line(config, saved))
    write_json(saved, asdict(config))
    stages = Stages(root, console)

    base = stages.run("base", lambda folder: _stage_base(config, folder), _base_outcome)
    data = stages.run("data", lambda folder: _stage_data(config, folder, console), lambda _: f"{config.train_scenes} train and {config.test_scenes} test questions")
    cold = stages.run("collect", lambda folder: _stage_collect(config, folder, data["train"], console), _collect_outcome)
    sft = stages.run("sft", lambda folder: _stage_sft(config, folder, cold["sft"], base["model"], console), _sft_outcome)
    models = {"start": base["model"], "sft": sft["model"]}
    logs = {"sft": _sft_log(sft["model"])}
    for name, mask, repeat in rl_runs(config):
        work = lambda folder, mask=mask, repeat=repeat: _stage_rl(config, folder, data["train"], sft["model"], mask, repeat, console)  # noqa: E731
        rl = stages.run(name, work, _rl_outcome)
        models[name], logs[name] = rl["model"], rl["log"]
    results = {"oracle": stages.run("eval_oracle", lambda folder: _stage_eval(config, folder, data["test"], None, console, "oracle"), _eval_outcome)}
    for name, model in models.items():
        work = lambda folder, model=model, name=name: _stage_eval(config, folder, data["test"], model, console, name)  # noqa: E731
        results[name] = stages.run(f"eval_{name}", work, _eval_outcome)
        if name in logs:
            results[name] = {**results[name], "log": logs[name]}
    summary = _summarise(config, results, stages.timings, data)
    write_json(root / "summary.json", summary)
    (root / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    _write_page(root, summary)
    print_summary(summary, console)
    console.print(f"report: {root / 'index.html'}")
    console.print(f"what each stage printed: {root / '<stage>' / STAGE_LOG}")
    return summary


def _settings_line(config: DemoConfig, saved: Path) -> str:
    """The settings that shape the run, in a few words, and where all of them are."""
    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    rl = (
        f"{count(config.rl_steps, 'step')} of {config.rl_prompts_per_step} x {config.rl_generations} rollouts, "
        f"{config.rl_max_turns} turns, {count(config.rl_ppo_epochs, 'epoch')}, lr {config.rl_learning_rate:g}, "
        f"void {'masked' if config.rl_ignore_void else 'trained'}"
    )
    masking = f"masking {'on and off' if config.ablation else 'on' if config.overturn_mask else 'off'}"
    repeats = f" ({count(config.ablation_repeats, 'run')} each way)" if config.ablation else ""
    return (
        f"preset {config.preset}, seed {config.seed}: {config.grid}x{config.grid} grid world, {config.train_scenes} train and "
        f"{config.test_scenes} test questions; SFT {count(config.sft_steps, 'step')} of {config.sft_batch}; RL {rl}, {masking}{repeats}; "
        f"Avg@{config.eval_samples} at temperature {config.eval_temperature:g}. Every setting: {saved}"
    )


def _base_outcome(result: dict[str, Any]) -> str:
    if result["from"] == "random":
        return "[yellow]no base model found: a random tiny model (see `mini-o3 pretrain`)[/yellow]"
    return f"from {result['from']}"


def _collect_outcome(result: dict[str, Any]) -> str:
    return f"{result['accepted']} oracle scans kept for SFT"


def _sft_log(model: str) -> str:
    """The step log beside an SFT run's final checkpoint."""
    from mini_o3.train.sft import LOG_FILE

    return str(Path(model).parent / LOG_FILE)


def _sft_outcome(result: dict[str, Any]) -> str:
    loss = training_row(_sft_log(result["model"]), SFT_SERIES)["loss"]
    return f"loss {loss[0]:.3f} -> {loss[-1]:.3f} over {len(loss)} steps" if loss else ""


def _rl_outcome(result: dict[str, Any]) -> str:
    row = training_row(result["log"])
    if not row["reward"]:
        return ""
    return f"reward {row['reward'][0]:.2f} -> {row['reward'][-1]:.2f}, masked {_mean(row['masked_share']):.0%} of rollouts"


def _eval_outcome(result: dict[str, Any]) -> str:
    from mini_o3.eval.report import read_metrics

    metrics = read_metrics(result["run"])
    runs = (metrics.get("runs_per_sample") or {}).get("max", 1)
    return f"Avg@{runs} {_fmt(metrics.get('avg_at_k'))}"


SHARED_STAGES = ("base", "data", "collect", "sft")
"""The stages up to SFT, which `sft_from` takes from another run."""
RL_SIDE_FIELDS = frozenset({
    "out", "preset", "sft_from", "rl_steps", "rl_prompts_per_step", "rl_generations", "rl_learning_rate", "rl_max_turns",
    "rl_mini_batch_prompts", "rl_ppo_epochs", "rl_ignore_void", "overturn_mask", "ablation", "ablation_repeats", "eval_samples", "eval_temperature",
})
"""Settings that do not touch the stages up to SFT: a run may differ from its `sft_from` run in these only."""


def adopt_sft(config: DemoConfig, root: Path) -> None:
    """Mark the stages up to SFT as done, with the results of the finished run `config.sft_from`."""
    source = Path(config.sft_from)
    saved = source / "demo_config.json"
    if not saved.is_file():
        raise SystemExit(f"--sft-from {source}: no demo run there (no demo_config.json); give the --out folder of a finished demo run")
    theirs = json.loads(saved.read_text())
    ours = asdict(config)
    changed = sorted(key for key in ours if key not in RL_SIDE_FIELDS and theirs.get(key) != ours[key])
    if changed:
        settings = ", ".join(f"{key} {theirs.get(key)!r} there, {ours[key]!r} here" for key in changed)
        raise SystemExit(f"--sft-from {source}: that run's data or SFT settings differ ({settings}); use the same settings")
    unfinished = [stage for stage in SHARED_STAGES if not (source / stage / "stage.json").is_file()]
    if unfinished:
        raise SystemExit(f"--sft-from {source}: unfinished stages there: {', '.join(unfinished)}; run that demo to the end of SFT first")
    for stage in SHARED_STAGES:
        marker = root / stage / "stage.json"
        if marker.exists():
            continue
        record = json.loads((source / stage / "stage.json").read_text())
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_json(marker, {**record, "from": str(source)})


# ---------------------------------------------------------------- stages


def _stage_base(config: DemoConfig, folder: Path) -> dict[str, Any]:
    from mini_o3.models.tiny import build_tiny

    source = Path(config.base) if config.base else BASE_CHECKPOINT
    target = folder / "model"
    if source.is_dir() and (source / "config.json").exists():
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("trainer_state", "*.pt", "log.jsonl"))
        return {"model": str(target), "from": str(source)}
    build_tiny(target, seed=config.seed)
    return {"model": str(target), "from": "random"}


def _stage_data(config: DemoConfig, folder: Path, console: Console | None = None) -> dict[str, Any]:
    from mini_o3.data.synth import synthesize

    options = _synth_options(config)
    # Train and test seeds are disjoint by construction: 2s+1 and 2s+2 never meet across s.
    train = synthesize(folder / "train", config.train_scenes, "grid", config.image_size, 2 * config.seed + 1, options=options, console=console)
    test = synthesize(folder / "test", config.test_scenes, "grid", config.image_size, 2 * config.seed + 2, options=options, console=console)
    print(f"{train.summary()}\n{test.summary()}")
    return {"train": str(folder / "train"), "test": str(folder / "test")}


def _stage_collect(config: DemoConfig, folder: Path, train: str, console: Console | None = None) -> dict[str, Any]:
    from mini_o3.coldstart.collect import CollectConfig, collect
    from mini_o3.coldstart.oracle import PatternMix

    report = collect(
        CollectConfig(
            data=f"synthetic:{train}", policy="oracle", per_question=config.cold_start_per_question,
            max_turns=config.eval_turns, max_pixels=config.view_pixels, min_pixels=min(config.view_pixels, 56 * 56),
            seed=config.seed, out=str(folder), concurrency=4, max_one_turn_share=1.0, oracle_grid_wording="terse",
            oracle_mix=PatternMix(grid_give_up=config.cold_start_give_up),
        ),
        console=console,
    )
    print(report.summary())
    return {"sft": str(folder / "sft"), "accepted": report.accepted}


def _stage_sft(config: DemoConfig, folder: Path, data: str, model: str, console: Console | None = None) -> dict[str, Any]:
    from mini_o3.train.config import SFTJobConfig
    from mini_o3.train.sft import run_sft

    job = SFTJobConfig(
        data=data, model_path=model, output_dir=str(folder / "train"), max_steps=config.sft_steps,
        learning_rate=config.sft_learning_rate, per_device_batch_size=config.sft_batch, gradient_accumulation_steps=1,
        warmup_ratio=0.05, save_steps=max(25, config.sft_steps // 4), seed=config.seed, freeze_vision=False,
    )
    final = run_sft(job, console)
    return {"model": str(final)}


def rl_runs(config: DemoConfig) -> list[tuple[str, bool, int]]:
    """(stage name, over-turn masking, repeat) of every RL run the config asks for."""
    if not config.ablation:
        return [("rl", config.overturn_mask, 0)]
    return [
        (f"rl{'' if mask else '_no_mask'}{f'_r{repeat}' if repeat else ''}", mask, repeat)
        for repeat in range(config.ablation_repeats)
        for mask in (True, False)
    ]


def rl_job_config(config: DemoConfig, folder: Path, train: str, model: str, overturn_mask: bool, repeat: int = 0) -> Any:
    """The `RLJobConfig` of the demo's RL stage: RL from `model` on the training world `train`, into `folder`."""
    from mini_o3.train.config import RLJobConfig

    return RLJobConfig(
        data=f"synthetic:{train}", model_path=model, output_dir=str(folder / "train"), steps=config.rl_steps,
        prompts_per_step=config.rl_prompts_per_step, mini_batch_prompts=config.rl_mini_batch_prompts,
        num_generations=config.rl_generations, learning_rate=config.rl_learning_rate, max_turns=config.rl_max_turns,
        max_images=2 * config.rl_max_turns, max_new_tokens=160, image_max_pixels=config.view_pixels,
        image_min_pixels=min(config.view_pixels, 56 * 56), overturn_mask=overturn_mask, concurrency=32,
        policy_batch_size=32, save_steps=max(2, config.rl_steps // 3), seed=config.seed + repeat, freeze_vision=False,
        ignore_void=config.rl_ignore_void, ppo_epochs=config.rl_ppo_epochs, rollouts_per_forward=1,
        old_logprobs="rollout", chunked_logprobs=False,
    )


def _stage_rl(
    config: DemoConfig, folder: Path, train: str, model: str, overturn_mask: bool, repeat: int = 0, console: Console | None = None
) -> dict[str, Any]:
    from mini_o3.train.rl import run_rl

    final = run_rl(rl_job_config(config, folder, train, model, overturn_mask, repeat), console=console)
    return {"model": str(final), "overturn_mask": overturn_mask, "repeat": repeat, "log": str(folder / "train" / "log.jsonl")}


def _stage_eval(config: DemoConfig, folder: Path, test: str, model: str | None, console: Console | None = None, name: str = "") -> dict[str, Any]:
    from mini_o3.eval.runner import EvalConfig, run_eval
    from mini_o3.coldstart.oracle import OraclePolicy

    if model is None:
        policy: Any = OraclePolicy(seed=config.seed, max_turns=config.eval_turns, resize=_resize(config), grid_wording="terse")
    else:
        from mini_o3.policies.local import LocalPolicy

        policy = LocalPolicy(model, max_batch_size=48)
    eval_config = EvalConfig(
        data=f"synthetic:{test}", out=folder / "run", samples=1 if model is None else config.eval_samples,
        max_turns=config.eval_turns, concurrency=48,
        temperature=config.eval_temperature, max_new_tokens=160, seed=config.seed, max_pixels=config.view_pixels,
        min_pixels=min(config.view_pixels, 56 * 56), report_episodes=24,
    )
    # Its messages go to the stage log (today's stdout), its progress bar to the demo's console.
    result = run_eval(eval_config, policy, console=Console(file=sys.stdout), progress_console=console, label=f"eval {name}".strip())
    return {"run": str(result.run_dir)}


# ---------------------------------------------------------------- summary


def level_of(depth: int, train_turns: int) -> str:
    """easy, medium or hard: how a reading-order scan that opens `depth` cells fits the training turn limit.

    Such a scan needs depth + 1 turns (one zoom per cell, then the answer). hard needs more
    turns than RL trains with (only test-time turns reach it); easy and medium split the rest.
    """
    if depth + 1 > train_turns:
        return "hard"
    return "easy" if depth <= max(1, train_turns // 2) else "medium"


def levels_by_sample(config: DemoConfig, test: str) -> dict[str, str]:
    """The level of every test question, by sample id."""
    from mini_o3.data.synth_loading import load_synthetic

    levels = {}
    for sample in load_synthetic(test):
        row, col = sample.meta["cell"]
        levels[sample.id] = level_of(int(row) * int(sample.meta["grid"][1]) + int(col) + 1, config.rl_max_turns)
    return levels


def model_row(config: DemoConfig, run_dir: str | Path, levels: dict[str, str]) -> dict[str, Any]:
    """Accuracy overall and per level at every budget, statuses and turns, for one evaluated model."""
    from mini_o3.eval import metrics
    from mini_o3.eval.runner import episode_results, latest_trajectories, read_results

    results = episode_results(latest_trajectories(run_dir), read_results(run_dir))
    correct_turns = [result.num_turns for result in results if result.correct]
    row: dict[str, Any] = {
        "run": str(run_dir),
        "episodes": len(results),
        "accuracy": metrics.avg_at_k(results),
        "accuracy_by_budget": metrics.accuracy_by_budget(results, config.eval_turns),
        "by_level": {},
        "status_counts": metrics.status_counts(results),
        "turns_correct": metrics.distribution(correct_turns),
        "beyond_train_turns": sum(turn > config.rl_max_turns for turn in correct_turns) / len(correct_turns) if correct_turns else None,
    }
    for level in LEVELS:
        part = [result for result in results if levels.get(result.sample_id) == level]
        if part:
            row["by_level"][level] = {"accuracy": metrics.avg_at_k(part), "accuracy_by_budget": metrics.accuracy_by_budget(part, config.eval_turns)}
    return row


RL_SERIES = {
    "reward": "reward", "over_turn_share": "rollouts/over_turn_share", "masked_share": "rollouts/masked_share", "turns_mean": "rollouts/turns_mean",
}
"""What the summary keeps of an RL run's step log, per step: its name there and its key in the log."""
SFT_SERIES = {"loss": "loss", "token_accuracy": "mean_token_accuracy"}
"""What the summary keeps of the SFT step log, per step."""


def training_row(log: str | Path, series: dict[str, str] = RL_SERIES) -> dict[str, Any]:
    """The per-step figures a training log holds (RL: reward, over-turn and masked shares, turns), and their step numbers.

    A step counts when its record has the first series' key (the closing summary record has none).
    """
    from mini_o3.train.progress import read_log

    first = next(iter(series.values()))
    steps = [record for record in read_log(log) if record.get(first) is not None]
    row: dict[str, Any] = {"steps": len(steps), "step": [int(record.get("step", index + 1)) for index, record in enumerate(steps)]}
    for name, key in series.items():
        row[name] = [float(record.get(key) or 0.0) for record in steps]
    if "over_turn_share" in row:
        row["over_turn_share_mean"] = _mean(row["over_turn_share"])
    return row


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def masking_table(config: DemoConfig, rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Masking on against off, each the mean over its RL repeats (and the repeats' own figures)."""
    table = {}
    for mask, label in ((True, "on"), (False, "off")):
        names = [name for name, on, _ in rl_runs(config) if on == mask and name in rows]
        if not names:
            continue
        picked = [rows[name] for name in names]
        table[label] = {
            "runs": names,
            "accuracy": _mean([row["accuracy"] for row in picked]),
            "accuracy_runs": [row["accuracy"] for row in picked],
            "hard": _mean([row["by_level"].get("hard", {}).get("accuracy") for row in picked]),
            "over_turn_share_train": _mean([(row.get("training") or {}).get("over_turn_share_mean") for row in picked]),
            "turns_correct_mean": _mean([row["turns_correct"]["mean"] for row in picked]),
            "turns_correct_max": int(max((row["turns_correct"]["max"] or 0) for row in picked)),
            "beyond_train_turns": _mean([row["beyond_train_turns"] for row in picked]),
        }
    return table


def _summarise(config: DemoConfig, results: dict[str, dict[str, Any]], timings: dict[str, float], data: dict[str, Any]) -> dict[str, Any]:
    levels = levels_by_sample(config, data["test"])
    chance = 1.0 / len(_synth_options(config).grid.colours)
    flat = [chance] * config.eval_turns
    rows: dict[str, dict[str, Any]] = {
        "chance": {"accuracy": chance, "accuracy_by_budget": flat, "by_level": {level: {"accuracy": chance, "accuracy_by_budget": flat} for level in LEVELS}}
    }
    for name, result in results.items():
        rows[name] = model_row(config, result["run"], levels)
        if result.get("log"):
            rows[name]["training"] = training_row(result["log"], SFT_SERIES if name == "sft" else RL_SERIES)
    counts = {level: sum(value == level for value in levels.values()) for level in LEVELS}
    return {
        "config": asdict(config),
        "eval_turns": config.eval_turns,
        "levels": counts,
        "models": rows,
        "masking": masking_table(config, rows) if config.ablation else {},
        "stage_seconds": timings,
        "total_seconds": sum(timings.values()),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _budgets(summary: dict[str, Any]) -> list[int]:
    return sorted({1, 2, 3, summary["config"]["rl_max_turns"], summary["eval_turns"]})


def models_table(summary: dict[str, Any], budgets: list[int] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the model table: accuracy per level, overall, at key budgets, turns, over-turn episodes."""
    budgets = budgets or _budgets(summary)
    header = ["model", *LEVELS, "all", *(f"budget {b}" for b in budgets), "turns of correct (mean)", "over_turn"]
    rows = []
    for name, row in summary["models"].items():
        curve = row.get("accuracy_by_budget") or []
        by_level = [_fmt(row.get("by_level", {}).get(level, {}).get("accuracy")) for level in LEVELS]
        cells = [_fmt(curve[b - 1]) if len(curve) >= b else "-" for b in budgets]
        turns_mean = (row.get("turns_correct") or {}).get("mean")
        over_turn = (row.get("status_counts") or {}).get("over_turn", "-")
        rows.append([name, *by_level, _fmt(row.get("accuracy")), *cells, _fmt(turns_mean), str(over_turn)])
    return header, rows


def masking_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the masking on/off table (empty rows without the ablation)."""
    header = [
        "masking", "accuracy (mean)", "each run", "hard", "over-turn share in training",
        "turns of correct (mean / max)", f"correct beyond {summary['config']['rl_max_turns']} turns",
    ]
    rows = [
        [
            label, _fmt(row["accuracy"]), " ".join(_fmt(v) for v in row["accuracy_runs"]), _fmt(row["hard"]),
            _fmt(row["over_turn_share_train"]), f"{_fmt(row['turns_correct_mean'])} / {row['turns_correct_max']}", _fmt(row["beyond_train_turns"]),
        ]
        for label, row in (summary.get("masking") or {}).items()
    ]
    return header, rows


def _stage_times(summary: dict[str, Any]) -> str:
    times = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in summary["stage_seconds"].items())
    adopted = summary["config"].get("sft_from")
    origin = f" (the stages up to SFT ran in {adopted})" if adopted else ""
    return f"stage times: {times}; total {summary['total_seconds'] / 60:.1f} min{origin}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables (per level, against turn budget, masking, stage times)."""
    config = summary["config"]

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(row) + " |" for row in rows)]

    lines = [
        f"Avg@{config['eval_samples']} (temperature {config['eval_temperature']}) on {config['test_scenes']} held-out questions, "
        f"up to {summary['eval_turns']} turns; levels {summary['levels']}.",
        "",
        *table(*models_table(summary)),
    ]
    header, rows = masking_rows(summary)
    if rows:
        lines += ["", *table(header, rows)]
    lines += ["", _stage_times(summary).capitalize() + "."]
    return "\n".join(lines) + "\n"


CONSOLE_HEADERS = {
    "accuracy (mean)": "accuracy\n(mean)", "over-turn share in training": "over-turn\nin training",
    "turns of correct (mean / max)": "turns of\ncorrect\nmean / max", "turns of correct (mean)": "turns of\ncorrect", "over_turn": "over\nturn",
}
"""Console headers over two or three lines, so that the tables fit 80 columns; the page and summary.md keep one line."""


def _console_header(column: str) -> str:
    if column.startswith("budget "):
        budget = int(column.split()[1])
        return f"{budget}\nturn{'s' if budget > 1 else ''}"
    if column.startswith("correct beyond "):
        return column.replace("correct beyond ", "correct\nbeyond ").removesuffix(" turns")
    return CONSOLE_HEADERS.get(column, column)


def summary_tables(summary: dict[str, Any]) -> list[Table | str]:
    """The console's tables (models; masking on against off with the ablation) with a note each, made to fit 80 columns."""
    config = summary["config"]
    levels = ", ".join(f"{level} {count}" for level, count in summary["levels"].items())
    budgets = sorted({1, config["rl_max_turns"], summary["eval_turns"]})
    parts = [
        (
            f"Avg@{config['eval_samples']} on {config['test_scenes']} held-out questions ({levels})",
            models_table(summary, budgets),
            f"[dim]levels and all: within {summary['eval_turns']} turns; {', '.join(map(str, budgets))} turns: all questions within so many[/dim]",
        ),
        ("Over-turn masking on against off (mean over RL runs)", masking_rows(summary), ""),
    ]
    shown: list[Table | str] = []
    for title, (header, rows), note in parts:
        if not rows:
            continue
        table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, title_style="bold")
        for column in header:
            table.add_column(_console_header(column), justify="left" if column in ("model", "masking") else "right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        shown += [table, note] if note else [table]
    return shown


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """Print the summary tables and the stage times."""
    for part in summary_tables(summary):
        console.print(part)
    console.print(_stage_times(summary))


def _write_page(root: Path, summary: dict[str, Any]) -> None:
    from mini_o3.demo.page import write_page

    write_page(root, summary, models_table(summary), masking_rows(summary), STAGE_LOG)
