"""The demo's page (index.html): the eval report's style, the tables, accuracy against the turn budget beside the training curves.

Rendering never changes numbers: everything shown is read from the summary (summary.json)
and the tables the pipeline built from it. Like the eval report, the page runs no script
(its Content-Security-Policy forbids them) and escapes every piece of text; plots are drawn
on matplotlib's Agg canvas directly, leaving pyplot's global state alone.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from mini_o3.eval.report import CONTENT_SECURITY_POLICY, STYLE

ACCURACY_PLOT = "accuracy_by_budget.png"
TRAINING_PLOT = "training_curves.png"
OVER_TURN_PLOT = "over_turn_share.png"
INDEX_FILE = "index.html"

Table = tuple[list[str], list[list[str]]]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, cols, squeeze=False)


def _rl_runs(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(model name, training row) of every RL run with logged steps."""
    return [
        (name, row["training"])
        for name, row in summary["models"].items()
        if name != "sft" and (row.get("training") or {}).get("reward")
    ]


def plot_accuracy(summary: dict[str, Any], path: Path) -> Path:
    """Avg@K against the turn budget: all questions and each level, every model, the RL turn limit dotted."""
    config, models = summary["config"], summary["models"]
    figure, axes = _figure(8.0, 6.4, 2, 2)
    for ax, level in zip(axes.flat, (None, *summary["levels"])):
        for name, row in models.items():
            curve = row.get("accuracy_by_budget") if level is None else row.get("by_level", {}).get(level, {}).get("accuracy_by_budget")
            if curve:
                chance = name == "chance"
                ax.plot(range(1, len(curve) + 1), curve, "--" if chance else "-", marker=None if chance else "o", markersize=3, label=name)
        ax.axvline(config["rl_max_turns"], color="grey", linewidth=0.8, linestyle=":")
        ax.set_title("all questions" if level is None else f"{level} ({summary['levels'].get(level, 0)} questions)", fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("turn budget")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"Avg@{config['eval_samples']}")
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_training(summary: dict[str, Any], path: Path) -> Path | None:
    """SFT loss, RL reward and the share of RL rollouts masked out of the loss, per step; None without any log."""
    sft = (summary["models"].get("sft") or {}).get("training") or {}
    rl = _rl_runs(summary)
    if not sft.get("loss") and not rl:
        return None
    figure, axes = _figure(6.4, 6.4, 3, 1)
    loss, reward, masked = axes[:, 0]
    if sft.get("loss"):
        loss.plot(sft["step"], sft["loss"], linewidth=1.2, color="#3b7dd8")
    loss.set_title("SFT: loss on the model's tokens", fontsize=10)
    loss.set_xlabel("SFT step", fontsize=8)
    for name, row in rl:
        marker = "o" if row["steps"] < 30 else None
        reward.plot(row["step"], row["reward"], marker=marker, markersize=3, label=name)
        masked.plot(row["step"], row["masked_share"], marker=marker, markersize=3, label=name)
    reward.set_title("RL: mean reward of the rollouts", fontsize=10)
    reward.set_ylim(-0.02, 1.02)
    masked.set_title("RL: share of rollouts masked out of the loss", fontsize=10)
    masked.set_ylim(-0.02, 1.02)
    masked.set_xlabel("RL step", fontsize=8)
    if rl:
        reward.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_over_turn(summary: dict[str, Any], path: Path) -> Path | None:
    """The over-turn share of RL rollouts per step, one line per RL run; None without RL runs."""
    rl = _rl_runs(summary)
    if not rl:
        return None
    figure, axes = _figure(6.4, 3.6)
    ax = axes[0, 0]
    for name, row in rl:
        ax.plot(row["step"], row["over_turn_share"], marker="o", markersize=3, label=name)
    ax.set_xlabel("RL step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("over-turn share of rollouts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _table(header: list[str], rows: list[list[str]], links: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(column)}</th>" for column in header) + ("<th></th>" if links else "")
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(value)}</td>" for value in row) + (f"<td>{links[i]}</td>" if links else "") + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<div class=wide><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _link(root: Path, target: str | Path, text: str) -> str:
    return f'<a href="{_e(Path(os.path.relpath(target, root)).as_posix())}">{_e(text)}</a>'


def write_page(root: Path, summary: dict[str, Any], models: Table, masking: Table, stage_log: str) -> Path:
    """Write index.html and its plots into `root`; return the page's path."""
    config = summary["config"]
    plot_accuracy(summary, root / ACCURACY_PLOT)
    training = plot_training(summary, root / TRAINING_PLOT)
    links = [
        _link(root, Path(row["run"]) / INDEX_FILE, "episodes") if row.get("run") else "" for row in summary["models"].values()
    ]
    plots = f"<img src='{ACCURACY_PLOT}' alt='accuracy against the turn budget, overall and per level'>"
    if training:
        plots += f"<img src='{TRAINING_PLOT}' alt='SFT loss, RL reward and masked share per step'>"
    levels = ", ".join(f"{level} {count}" for level, count in summary["levels"].items())
    parts = [
        f"<h1>mini-o3 demo</h1><p class=muted>preset {_e(config['preset'])} · seed {_e(config['seed'])} · "
        f"{config['grid']}x{config['grid']} grid world · {_e(config['train_scenes'])} train and {_e(config['test_scenes'])} test questions · "
        f"Avg@{_e(config['eval_samples'])} at temperature {_e(config['eval_temperature'])} · up to {_e(summary['eval_turns'])} turns</p>",
        f"<p>Levels by where the target sits in reading order ({_e(levels)}): easy and medium fit the {_e(config['rl_max_turns'])} "
        "RL training turns, hard needs more (only test-time turns reach it; none when training allows every turn the test does). "
        "The dotted line marks the RL turn limit.</p>",
        "<h2>Accuracy</h2>",
        _table(*models, links),
        f"<div class=plots>{plots}</div>",
    ]
    if masking[1]:
        over_turn = plot_over_turn(summary, root / OVER_TURN_PLOT)
        parts += ["<h2>Over-turn masking on against off</h2>", _table(*masking)]
        if over_turn:
            parts.append(f"<div class=plots><img src='{OVER_TURN_PLOT}' alt='over-turn share of RL rollouts per step'></div>")
    times = "".join(
        f"<tr><th>{_e(name)}</th><td>{seconds:.0f} s</td><td>{_link(root, root / name / stage_log, stage_log)}</td></tr>"
        for name, seconds in summary["stage_seconds"].items()
    )
    parts += [
        "<h2>Stage times</h2><table><thead><tr><th>stage</th><th>time</th><th>what it printed</th></tr></thead>"
        f"<tbody>{times}<tr><th>total</th><td>{summary['total_seconds'] / 60:.1f} min</td><td></td></tr></tbody></table>",
        f"<h2>Settings</h2><pre>{_e(json.dumps(config, indent=2))}</pre>",
    ]
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CONTENT_SECURITY_POLICY)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>mini-o3 demo</title><style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    index = root / INDEX_FILE
    index.write_text(page, encoding="utf-8")
    return index
