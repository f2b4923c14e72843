"""`mini-o3 demo`: the whole recipe on one CPU, offline, in stages that resume.

synthesise train and test worlds -> oracle cold-start trajectories -> SFT -> RL with
over-turn masking -> evaluate chance, the starting model, SFT, RL (and the oracle, the
ceiling) at every turn budget -> one report. Each stage writes `<stage>/stage.json` when it
finishes; running again skips finished stages. The demo world is the grid scan of
`mini_o3.data.synth` (level "grid"): one coloured shape hidden in one of G x G cells, too
small to name in the first view and large once its cell is zoomed; with more cells than the
training turn limit, over-turn masking decides whether long searches are punished.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from mini_o3.jsonl import write_json

console = Console()

BASE_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "base-tiny"
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
    sft_steps: int = 450
    """SFT optimizer steps."""
    sft_batch: int = 8
    """Conversations per SFT step."""
    sft_learning_rate: float = 2e-3
    """SFT peak learning rate (a tiny model from random or small-scale pre-trained weights)."""
    rl_steps: int = 8
    """RL steps."""
    rl_prompts_per_step: int = 8
    """Questions per RL step (after dynamic sampling)."""
    rl_generations: int = 8
    """Rollouts per question (the GRPO group)."""
    rl_learning_rate: float = 2e-4
    """RL learning rate."""
    rl_max_turns: int = 6
    """Turn limit in RL training (the paper's 6)."""
    overturn_mask: bool = True
    """Over-turn masking in RL (False for the ablation)."""
    ablation: bool = False
    """Also train an RL model with masking off and report both."""
    eval_temperature: float = 0.0
    """Sampling temperature of the evaluations (0 is greedy: one run per question is exact)."""
    base: str = ""
    """Starting checkpoint; empty uses the committed base model, or a fresh tiny one without it."""

    @property
    def eval_turns(self) -> int:
        """The largest test budget: one turn per cell plus the answer."""
        return self.grid * self.grid + 1


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "long": {"train_scenes": 1000, "test_scenes": 96, "sft_steps": 600, "rl_steps": 30, "rl_prompts_per_step": 16, "ablation": True},
}


def demo_config(preset: str = "default", **overrides: Any) -> DemoConfig:
    """The config of a preset with overrides applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; choose one of {sorted(PRESETS)}")
    return DemoConfig(preset=preset, **{**PRESETS[preset], **overrides})


class Stages:
    """Runs named stages once: a finished stage's `stage.json` makes it a no-op on reruns."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.timings: dict[str, float] = {}

    def run(self, name: str, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run `work(stage_dir)` unless it finished before; return what it recorded."""
        folder = self.root / name
        marker = folder / "stage.json"
        if marker.exists():
            record = json.loads(marker.read_text())
            console.print(f"[dim]stage {name}: done before ({record['seconds']:.0f} s), skipped[/dim]")
            self.timings[name] = record["seconds"]
            return record["result"]
        console.rule(f"stage {name}")
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = work(folder)
        seconds = time.perf_counter() - start
        write_json(marker, {"seconds": seconds, "result": result})
        self.timings[name] = seconds
        console.print(f"stage {name}: {seconds:.0f} s")
        return result


def _resize(config: DemoConfig):
    from mini_o3.images import ResizePolicy

    return ResizePolicy(max_pixels=config.view_pixels, min_pixels=min(config.view_pixels, 56 * 56))


def _synth_options(config: DemoConfig):
    from mini_o3.data.synth import GridConfig, SynthOptions

    return SynthOptions(grid=GridConfig(rows=config.grid, cols=config.grid), resize=_resize(config), contact_sheet=8)


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run (or resume) every stage and print the summary table."""
    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    saved = root / "demo_config.json"
    if saved.exists():
        before = json.loads(saved.read_text())
        if before != asdict(config):
            changed = sorted(key for key in asdict(config) if before.get(key) != asdict(config)[key])
            raise SystemExit(f"{root} holds a demo run with other settings ({', '.join(changed)}); use another --out or the same settings")
    console.rule("mini-o3 demo")
    console.print_json(json.dumps(asdict(config)))
    write_json(saved, asdict(config))
    stages = Stages(root)

    base = stages.run("base", lambda folder: _stage_base(config, folder))
    data = stages.run("data", lambda folder: _stage_data(config, folder))
    cold = stages.run("collect", lambda folder: _stage_collect(config, folder, data["train"]))
    sft = stages.run("sft", lambda folder: _stage_sft(config, folder, cold["sft"], base["model"]))
    models = {"start": base["model"], "sft": sft["model"]}
    rl = stages.run("rl", lambda folder: _stage_rl(config, folder, data["train"], sft["model"], config.overturn_mask))
    models["rl"] = rl["model"]
    if config.ablation:
        ablation = stages.run("rl_no_mask", lambda folder: _stage_rl(config, folder, data["train"], sft["model"], False))
        models["rl_no_mask"] = ablation["model"]
    results = {"oracle": stages.run("eval_oracle", lambda folder: _stage_eval(config, folder, data["test"], None))}
    for name, model in models.items():
        results[name] = stages.run(f"eval_{name}", lambda folder, model=model: _stage_eval(config, folder, data["test"], model))
    summary = _summarise(config, results, stages.timings, data)
    write_json(root / "summary.json", summary)
    _write_page(root, summary)
    _print_summary(summary)
    console.print(f"report: {root / 'index.html'}")
    return summary


# ---------------------------------------------------------------- stages


def _stage_base(config: DemoConfig, folder: Path) -> dict[str, Any]:
    from mini_o3.tiny import build_tiny

    source = Path(config.base) if config.base else BASE_CHECKPOINT
    target = folder / "model"
    if source.is_dir() and (source / "config.json").exists():
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("trainer_state", "*.pt", "log.jsonl"))
        console.print(f"starting from the base model {source}")
        return {"model": str(target), "from": str(source)}
    build_tiny(target, seed=config.seed)
    console.print("[yellow]no base model found: starting from a random tiny model (see `mini-o3 pretrain`)[/yellow]")
    return {"model": str(target), "from": "random"}


def _stage_data(config: DemoConfig, folder: Path) -> dict[str, Any]:
    from mini_o3.data.synth import synthesize

    options = _synth_options(config)
    # Train and test seeds are disjoint by construction: 2s+1 and 2s+2 never meet across s.
    train = synthesize(folder / "train", config.train_scenes, "grid", config.image_size, 2 * config.seed + 1, options=options)
    test = synthesize(folder / "test", config.test_scenes, "grid", config.image_size, 2 * config.seed + 2, options=options)
    console.print(train.summary())
    return {"train": str(folder / "train"), "test": str(folder / "test")}


def _stage_collect(config: DemoConfig, folder: Path, train: str) -> dict[str, Any]:
    from mini_o3.collect import CollectConfig, collect

    report = collect(
        CollectConfig(
            data=f"synthetic:{train}", policy="oracle", per_question=1, max_turns=config.eval_turns,
            max_pixels=config.view_pixels, min_pixels=min(config.view_pixels, 56 * 56), seed=config.seed,
            out=str(folder), concurrency=4, max_one_turn_share=1.0, oracle_grid_wording="terse",
        )
    )
    console.print(report.summary())
    return {"sft": str(folder / "sft"), "accepted": len(report.stats.get("accepted", [])) if isinstance(report.stats, dict) else None}


def _stage_sft(config: DemoConfig, folder: Path, data: str, model: str) -> dict[str, Any]:
    from mini_o3.train.config import SFTJobConfig
    from mini_o3.train.sft import run_sft

    job = SFTJobConfig(
        data=data, model_path=model, output_dir=str(folder / "train"), max_steps=config.sft_steps,
        learning_rate=config.sft_learning_rate, per_device_batch_size=config.sft_batch, gradient_accumulation_steps=1,
        warmup_ratio=0.05, save_steps=max(25, config.sft_steps // 4), seed=config.seed, freeze_vision=False,
    )
    final = run_sft(job)
    return {"model": str(final)}


def _stage_rl(config: DemoConfig, folder: Path, train: str, model: str, overturn_mask: bool) -> dict[str, Any]:
    from mini_o3.train.config import RLJobConfig
    from mini_o3.train.rl import run_rl

    job = RLJobConfig(
        data=f"synthetic:{train}", model_path=model, output_dir=str(folder / "train"), steps=config.rl_steps,
        prompts_per_step=config.rl_prompts_per_step, mini_batch_prompts=config.rl_prompts_per_step,
        num_generations=config.rl_generations, learning_rate=config.rl_learning_rate, max_turns=config.rl_max_turns,
        max_images=2 * config.rl_max_turns, max_new_tokens=160, image_max_pixels=config.view_pixels,
        image_min_pixels=min(config.view_pixels, 56 * 56), overturn_mask=overturn_mask, concurrency=32,
        policy_batch_size=32, save_steps=max(2, config.rl_steps // 3), seed=config.seed, freeze_vision=False,
    )
    final = run_rl(job)
    return {"model": str(final), "overturn_mask": overturn_mask}


def _stage_eval(config: DemoConfig, folder: Path, test: str, model: str | None) -> dict[str, Any]:
    from mini_o3.evaluate import EvalConfig, run_eval
    from mini_o3.policies.oracle import OraclePolicy

    if model is None:
        policy: Any = OraclePolicy(seed=config.seed, max_turns=config.eval_turns, resize=_resize(config), grid_wording="terse")
    else:
        from mini_o3.policies.local import LocalPolicy

        policy = LocalPolicy(model, max_batch_size=48)
    eval_config = EvalConfig(
        data=f"synthetic:{test}", out=folder / "run", samples=1, max_turns=config.eval_turns, concurrency=48,
        temperature=config.eval_temperature, max_new_tokens=160, seed=config.seed, max_pixels=config.view_pixels,
        min_pixels=min(config.view_pixels, 56 * 56), report_episodes=24,
    )
    result = run_eval(eval_config, policy, console=console)
    metrics = result.metrics
    return {
        "run": str(result.run_dir),
        "accuracy": metrics.get("avg_at_k"),
        "accuracy_by_budget": metrics.get("accuracy_by_budget"),
        "status_counts": metrics.get("status_counts"),
        "turns_correct": metrics.get("turns_correct"),
        "correct_turns": metrics.get("correct_turns"),
    }


# ---------------------------------------------------------------- summary


def _summarise(config: DemoConfig, results: dict[str, dict[str, Any]], timings: dict[str, float], data: dict[str, Any]) -> dict[str, Any]:
    options = _synth_options(config).grid.colours
    chance = 1.0 / len(options)
    rows = {"chance": {"accuracy": chance, "accuracy_by_budget": [chance] * config.eval_turns}}
    rows.update(results)
    return {"config": asdict(config), "models": rows, "stage_seconds": timings, "total_seconds": sum(timings.values())}


def _print_summary(summary: dict[str, Any]) -> None:
    config = summary["config"]
    budgets = [1, 2, 3, config["rl_max_turns"], config["grid"] ** 2 + 1]
    table = Table(title="mini-o3 demo: accuracy on the held-out grid world")
    table.add_column("model")
    for budget in budgets:
        table.add_column(f"budget {budget}", justify="right")
    table.add_column("over_turn", justify="right")
    for name, row in summary["models"].items():
        curve = row.get("accuracy_by_budget") or []
        cells = [f"{curve[b - 1]:.2f}" if len(curve) >= b and curve[b - 1] is not None else "-" for b in budgets]
        statuses = row.get("status_counts") or {}
        table.add_row(name, *cells, str(statuses.get("over_turn", "-")))
    console.print(table)
    times = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in summary["stage_seconds"].items())
    console.print(f"stage times: {times}; total {summary['total_seconds'] / 60:.1f} min")


def _write_page(root: Path, summary: dict[str, Any]) -> None:
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for name, row in summary["models"].items():
        curve = row.get("accuracy_by_budget") or []
        if curve:
            axes.plot(range(1, len(curve) + 1), [value if value is not None else float("nan") for value in curve], marker="o", label=name)
    axes.set_xlabel("turn budget")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.02)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(root / "accuracy_by_budget.png", dpi=120)
    plt.close(figure)
    rows = []
    for name, row in summary["models"].items():
        link = f'<a href="{html.escape(str(Path(row["run"]).relative_to(root)))}/index.html">report</a>' if row.get("run") else ""
        accuracy = row.get("accuracy")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{'-' if accuracy is None else f'{accuracy:.3f}'}</td><td>{link}</td></tr>")
    page = (
        "<!doctype html><meta charset='utf-8'><meta http-equiv='Content-Security-Policy' content=\"default-src 'self'; script-src 'none'\">"
        "<title>mini-o3 demo</title><h1>mini-o3 demo</h1>"
        f"<p>{html.escape(json.dumps(summary['config']))}</p>"
        "<table border=1 cellpadding=4><tr><th>model</th><th>accuracy (largest budget)</th><th></th></tr>"
        + "".join(rows)
        + "</table><img src='accuracy_by_budget.png' alt='accuracy against turn budget'>"
    )
    (root / "index.html").write_text(page, encoding="utf-8")
