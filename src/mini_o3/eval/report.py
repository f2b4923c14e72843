"""A run directory for people: plots, one static HTML page with the metrics and a trajectory viewer, and run comparison.

Rendering never changes numbers: everything shown is read from metrics.json, results.jsonl
and trajectories.jsonl as `mini_o3.eval.runner` wrote them. The page is static (no JavaScript
at all, and a Content-Security-Policy that forbids scripts), and every piece of model or
dataset text is HTML-escaped, so a thought holding `<script>` shows as text and never runs.
Plots are drawn with matplotlib's Agg canvas directly, leaving pyplot's global state alone.
"""

from __future__ import annotations

import copy
import html
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image
from rich.console import Console
from rich.table import Table

from mini_o3.eval.card import card_rows
from mini_o3.eval.draw import draw_zoom_boxes
from mini_o3.eval.run_dir import CONFIG_FILE, METRICS_FILE, RunDirError, latest_trajectories, read_results
from mini_o3.jsonl import write_atomic
from mini_o3.agent.images import ImageLoadError, open_image
from mini_o3.agent.store import safe_name
from mini_o3.agent.trajectory import Trajectory, ViewRecord

REPORT_DIR = "report"
INDEX_FILE = "index.html"
ACCURACY_PLOT = "accuracy_by_budget.png"
TURNS_PLOT = "turn_histogram.png"
TOKENS_PLOT = "accuracy_by_tokens.png"

# No script may run, whatever the page holds; images only from the run directory.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


# ---------------------------------------------------------------- reading a run


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """metrics.json of a run directory."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} has no {METRICS_FILE}; is it the --out of a finished `mini-o3 eval` (or run `rescore` on it)?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise RunDirError(f"cannot read {path}: {error}") from error


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError:
        return {}


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


# ---------------------------------------------------------------- plots


def plot_accuracy_by_budget(metrics: dict[str, Any], path: Path, label: str = "") -> Path:
    """A PNG of Avg@K against the turn budget (1..max_turns), all read off one run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    accuracy = metrics.get("accuracy_by_budget") or []
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    budgets = list(range(1, len(accuracy) + 1))
    axes.plot(budgets, [100 * value for value in accuracy], marker="o", markersize=3, label=label or None)
    axes.set_xlabel("turn budget")
    axes.set_ylabel("Avg@K accuracy (%)")
    axes.set_title("Accuracy against the turn budget")
    axes.set_ylim(0, 100)
    if budgets:
        axes.set_xlim(0.5, len(budgets) + 0.5)
    axes.grid(True, alpha=0.3)
    if label:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_turn_histogram(metrics: dict[str, Any], path: Path) -> Path:
    """A PNG of how many correct trajectories answered at each turn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = metrics.get("correct_turns") or []
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(range(1, len(counts) + 1), counts, color="#3b7dd8")
    axes.set_xlabel("turns used")
    axes.set_ylabel("correct trajectories")
    axes.set_title("Turns of correct trajectories")
    if counts:
        axes.set_xlim(0.5, len(counts) + 0.5)
    axes.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_accuracy_by_tokens(metrics: dict[str, Any], path: Path) -> Path:
    """A PNG of Avg@K against a cap on the tokens an episode may generate (log scale), read off one run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    search = metrics.get("search") or {}
    budgets, accuracy = search.get("token_budgets") or [], search.get("accuracy_by_tokens") or []
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(budgets, [100 * value for value in accuracy], marker="o", markersize=3)
    if budgets:
        axes.set_xscale("log", base=2)
    axes.set_xlabel("generated tokens per episode at most")
    axes.set_ylabel("Avg@K accuracy (%)")
    axes.set_title("Accuracy against tokens spent")
    axes.set_ylim(0, 100)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return path


# ---------------------------------------------------------------- the page


def _e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _src(relative: str) -> str:
    """An escaped, URL-quoted relative path for a src attribute."""
    return _e(quote(relative, safe="/._-"))


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("metric", "value")) -> str:
    body = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in rows)
    return f"<table><thead><tr><th>{_e(head[0])}</th><th>{_e(head[1])}</th></tr></thead><tbody>{body}</tbody></table>"


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline metrics as (name, formatted value) rows."""
    runs = (metrics.get("runs_per_sample") or {}).get("max", 1)
    rows = [
        ("questions", _number(metrics.get("samples"))),
        ("episodes", _number(metrics.get("episodes"))),
        ("runs per question (K)", _number(runs)),
        ("max turns", _number(metrics.get("max_turns"))),
        (f"Avg@{runs}", _percent(metrics.get("avg_at_k"))),
        (f"pass@{runs}", _percent(metrics.get("pass_at_k"))),
    ]
    for k, value in (metrics.get("pass_at") or {}).items():
        if str(k) != str(runs):
            rows.append((f"pass@{k}", _percent(value)))
    for status, count in (metrics.get("status_counts") or {}).items():
        rows.append((f"status: {status}", _number(count)))
    for name, label in (("turns", "turns per episode"), ("turns_correct", "turns per correct episode")):
        stats = metrics.get(name) or {}
        if stats.get("count"):
            rows.append((label, f"mean {_number(stats['mean'])}, p50 {_number(stats['p50'])}, p90 {_number(stats['p90'])}, max {_number(stats['max'])}"))
    for name, stats in (metrics.get("per_turn") or {}).items():
        if stats.get("count"):
            rows.append((f"per turn: {name}", f"mean {_number(stats['mean'])}, p50 {_number(stats['p50'])}, p90 {_number(stats['p90'])}, max {_number(stats['max'])}"))
    rows += search_rows(metrics) + rotation_rows(metrics)
    return rows


def search_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """How the policy searched: zooms, repeated crops, crops on the annotated target, tokens."""
    search = metrics.get("search") or {}
    if not search:
        return []
    zooms = search.get("zooms_per_episode") or {}
    rows = [
        ("zooms per episode", f"mean {_number(zooms.get('mean'))}, p90 {_number(zooms.get('p90'))}, max {_number(zooms.get('max'))}; "
                              f"episodes by zooms 0, 1, 2, ...: {search.get('zoom_histogram')}"),
        ("repeated crops", f"{_number(search.get('repeated_zooms'))} of {_number(search.get('zooms'))} zooms ({_percent(search.get('repeated_share'))}) "
                           f"repeat a box already seen; {_percent(search.get('episodes_with_a_repeat'))} of episodes repeat one"),
    ]
    target = search.get("target")
    if target:
        rows.append(("crops on the target", f"{_number(target['zooms_on_target'])} of {_number(target['zooms'])} zooms ({_percent(target['share_of_zooms'])}) "
                                            f"hold an annotated target; {_percent(target['episodes_that_found_it'])} of {_number(target['episodes'])} episodes "
                                            f"zoom onto it; accuracy {_percent(target['accuracy_when_found'])} when they do, "
                                            f"{_percent(target['accuracy_when_not_found'])} when not"))
    tokens = search.get("generated_tokens") or {}
    if tokens.get("count"):
        correct = search.get("generated_tokens_correct") or {}
        rows.append(("generated tokens per episode", f"mean {_number(tokens['mean'])}, p90 {_number(tokens['p90'])}, max {_number(tokens['max'])}; "
                                                     f"correct episodes mean {_number(correct.get('mean'))}"))
    return rows


def rotation_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """HR-Bench's rotation score beside plain accuracy (see mini_o3.eval.rotation)."""
    rotation = metrics.get("rotation")
    if not rotation:
        return []
    cycles = ", ".join(f"{cycle}: {_percent(value)}" for cycle, value in rotation["cycles"].items())
    rows = [
        ("HR-Bench score (mean over rotations)", f"{_percent(rotation['average'])} (per rotation {cycles}); plain Avg@K {_percent(rotation['plain'])}"),
        ("right in all rotations", f"{_percent(rotation['all_rotations'])} of {rotation['questions']} questions "
                                   f"({rotation['complete_groups']} with every rotation; a stricter check, not the authors' score)"),
    ]
    for category, values in rotation["by_category"].items():
        rows.append((f"HR-Bench {category}", f"{_percent(values['average'])} (mean over rotations)"))
    return rows


def _breakdown_table(parts: dict[str, dict[str, Any]], title: str) -> str:
    if not parts or (len(parts) == 1 and "" in parts):
        return ""
    rows = "".join(
        f"<tr><th>{_e(name or '(none)')}</th><td>{_e(_number(part.get('samples')))}</td><td>{_e(_number(part.get('episodes')))}</td>"
        f"<td>{_e(_percent(part.get('avg_at_k')))}</td><td>{_e(_percent(part.get('pass_at_k')))}</td></tr>"
        for name, part in parts.items()
    )
    return (
        f"<h3>{_e(title)}</h3><table><thead><tr><th>{_e(title)}</th><th>questions</th><th>episodes</th>"
        f"<th>Avg@K</th><th>pass@K</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _budget_table(metrics: dict[str, Any]) -> str:
    accuracy = metrics.get("accuracy_by_budget") or []
    if not accuracy:
        return ""
    head = "".join(f"<th>{budget}</th>" for budget in range(1, len(accuracy) + 1))
    cells = "".join(f"<td>{_e(_percent(value))}</td>" for value in accuracy)
    return f"<div class=wide><table><thead><tr><th>turn budget</th>{head}</tr></thead><tbody><tr><th>Avg@K</th>{cells}</tr></tbody></table></div>"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px}
thead th{background:#f0f0f0}.wide{overflow-x:auto}.plots img{max-width:48%;margin-right:1%}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:8px;border-radius:4px;font-size:13px}
details{border:1px solid #ddd;border-radius:6px;margin:0.6em 0;padding:0.4em 0.8em}summary{cursor:pointer;font-weight:600}
.ok{color:#1a7f37}.bad{color:#c0392b}.muted{color:#777}.turn{border-left:3px solid #3b7dd8;padding-left:0.8em;margin:0.8em 0}
.boxes{max-width:100%;border:1px solid #ccc}.crop{max-width:360px;max-height:360px;border:1px solid #ccc;display:block;margin:4px 0}
.error{color:#c0392b}
"""


def write_report(run_dir: str | Path, max_episodes: int = 200) -> Path:
    """Write index.html, the plots and the zoom-box pictures for a run directory; returns the page's path."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    config = _read_config(run_dir)
    report_dir = run_dir / REPORT_DIR
    (report_dir / "boxes").mkdir(parents=True, exist_ok=True)
    plot_accuracy_by_budget(metrics, report_dir / ACCURACY_PLOT)
    plot_turn_histogram(metrics, report_dir / TURNS_PLOT)
    plot_accuracy_by_tokens(metrics, report_dir / TOKENS_PLOT)

    results = read_results(run_dir)
    trajectories = latest_trajectories(run_dir)
    keys = [key for key in results if key in trajectories]
    shown = keys[: max(0, max_episodes)]
    episodes_html = [_episode_html(number, trajectories[key], results[key], run_dir) for number, key in enumerate(shown)]

    settings = config.get("config", {})
    title = f"mini-o3 eval: {settings.get('data', run_dir.name)}"
    runs = (metrics.get("runs_per_sample") or {}).get("max", 1)
    index_rows = "".join(
        f"<tr><td><a href=\"#ep-{number}\">{_e(key[0])}</a></td><td>{key[1]}</td><td>{_e(results[key]['status'])}</td>"
        f"<td class={'ok' if results[key]['score']['correct'] else 'bad'}>{'correct' if results[key]['score']['correct'] else 'wrong'}</td>"
        f"<td>{_e(results[key]['turns'])}</td></tr>"
        for number, key in enumerate(shown)
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(CONTENT_SECURITY_POLICY)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class=muted>policy: {_e(config.get('policy', '?'))} · mini-o3 {_e(config.get('mini_o3_version', '?'))} ·
data: {_e((config.get('dataset') or {}).get('kind', ''))} {_e((config.get('dataset') or {}).get('path', ''))} ·
temperature {_e(settings.get('temperature', '?'))} · max turns {_e(settings.get('max_turns', '?'))} ·
judge: {_e((settings.get('judge') or {}).get('model', 'none') if settings.get('judge') else 'none (rules only)')}</p>
<h2>Protocol</h2>
{_table(card_rows(metrics.get('protocol') or config.get('protocol') or {}), ('setting', 'value')) if (metrics.get('protocol') or config.get('protocol')) else '<p class=muted>this run has no protocol card (made before cards)</p>'}
<h2>Metrics</h2>
{_table(summary_rows(metrics))}
{_unreadable_note(metrics)}
{_breakdown_table(metrics.get('by_split') or {}, 'split')}
{_breakdown_table(metrics.get('by_category') or {}, 'category')}
<h3>Avg@{_e(runs)} at every turn budget (read off the same run)</h3>
{_budget_table(metrics)}
<div class=plots><img src="{_src(f'{REPORT_DIR}/{ACCURACY_PLOT}')}" alt="accuracy against the turn budget">
<img src="{_src(f'{REPORT_DIR}/{TURNS_PLOT}')}" alt="turns of correct trajectories">
<img src="{_src(f'{REPORT_DIR}/{TOKENS_PLOT}')}" alt="accuracy against tokens spent"></div>
<h2>Trajectories</h2>
<p class=muted>showing {len(shown)} of {len(keys)} episodes (run 0 of every question first). Box <i>i</i> on the original is <code>observation_i</code>.</p>
<table><thead><tr><th>question id</th><th>run</th><th>status</th><th>score</th><th>turns</th></tr></thead><tbody>{index_rows}</tbody></table>
{''.join(episodes_html)}
</body></html>
"""
    index = run_dir / INDEX_FILE
    write_atomic(index, page)
    return index


def _unreadable_note(metrics: dict[str, Any]) -> str:
    unreadable = metrics.get("unreadable_images") or {}
    if not unreadable.get("episodes"):
        return ""
    return (
        f"<p class=error>{_e(unreadable['samples'])} question{'s' if unreadable['samples'] != 1 else ''} "
        f"({_e(unreadable['episodes'])} episodes) left out of every "
        f"figure above: their image could not be decoded ({_e(', '.join(unreadable.get('ids') or []))})</p>"
    )


def _episode_html(number: int, trajectory: Trajectory, result: dict[str, Any], run_dir: Path) -> str:
    score = result.get("score") or {}
    correct = bool(score.get("correct"))
    run = int(result.get("run", 0))
    boxes = _boxes_picture(trajectory, run, run_dir)
    parts = [
        f"<details id=\"ep-{number}\"{' open' if number < 3 else ''}><summary>{_e(trajectory.sample_id)} · run {run} · "
        f"{_e(trajectory.status.value)} · <span class={'ok' if correct else 'bad'}>{'correct' if correct else 'wrong'}</span> · "
        f"{trajectory.num_turns} turns</summary>",
        f"<p><b>question</b></p><pre>{_e(trajectory.question)}</pre>",
        f"<p><b>answer</b> {_e(trajectory.answer if trajectory.answer is not None else '(none)')} · <b>ground truth</b> "
        f"{_e(trajectory.ground_truth)} · <b>scored</b> {_e(score.get('matched_by', ''))}: {_e(score.get('reason', ''))}</p>",
    ]
    if result.get("judge"):
        parts.append(f"<p class=muted>rule score: {_e(result['rule']['reason'])} · judge: {_e(result['judge']['reason'])}</p>")
    if result.get("judge_error"):
        parts.append(f"<p class=error>judge failed: {_e(result['judge_error'])}</p>")
    if trajectory.error:
        parts.append(f"<p class=error>error: {_e(trajectory.error)}</p>")
    if boxes:
        parts.append(f"<img class=boxes src=\"{_src(boxes)}\" alt=\"the original with every zoom box\">")
    views = {view.index: view for view in trajectory.views}
    for index, turn in enumerate(trajectory.turns, 1):
        parts.append(f"<div class=turn><p><b>turn {index}</b> · {_e(turn.kind)} · {_e(turn.finish_reason)}"
                     f"{f' · {turn.latency_s:.2f} s' if turn.latency_s else ''}"
                     f"{f' · {turn.completion_tokens} tokens' if turn.completion_tokens is not None else ''}</p>")
        parts.append(f"<pre>{_e(turn.text)}</pre>")
        if turn.feedback == "observation" and turn.view in views:
            view = views[turn.view]
            source = "original_image" if not view.source else f"observation_{view.source}"
            parts.append(
                f"<p class=muted>observation_{view.index}: {_e(list(view.relative_box or ()))} of {_e(source)} = pixels "
                f"{_e(list(view.box))} of the original, shown at {view.size[0]}x{view.size[1]}</p>"
            )
            if view.file:
                parts.append(f"<img class=crop src=\"{_src(view.file)}\" alt=\"observation_{view.index}\">")
        elif turn.feedback == "error":
            parts.append(f"<p class=error>error shown to the model: {_e(turn.error)}</p>")
        parts.append("</div>")
    parts.append("</details>")
    return "".join(parts)


def _boxes_picture(trajectory: Trajectory, run: int, run_dir: Path) -> str | None:
    """Draw the original with numbered zoom boxes into report/boxes/; the saved view 0 stands in for the original."""
    relative = f"{REPORT_DIR}/boxes/{safe_name(trajectory.sample_id)}__r{run}.jpg"
    first = trajectory.views[0] if trajectory.views else None
    picture = None
    if first is not None and first.file and (run_dir / first.file).exists():
        with Image.open(run_dir / first.file) as shown:
            picture = draw_zoom_boxes(shown.convert("RGB"), _scaled(trajectory, shown.size), max_side=900)
    elif Path(trajectory.image).is_file():
        try:
            picture = draw_zoom_boxes(open_image(Path(trajectory.image)), trajectory, max_side=900)
        except ImageLoadError:
            picture = None
    if picture is None:
        return None
    picture.save(run_dir / relative, format="JPEG", quality=88)
    return relative


def _scaled(trajectory: Trajectory, size: tuple[int, int]) -> Trajectory:
    """A copy whose boxes are in the pixels of an image of `size` instead of the original's."""
    width, height = trajectory.image_size
    if not width or not height:
        return trajectory
    sx, sy = size[0] / width, size[1] / height
    scaled = copy.copy(trajectory)
    scaled.views = [
        ViewRecord(view.index, (round(view.box[0] * sx), round(view.box[1] * sy), round(view.box[2] * sx), round(view.box[3] * sy)), view.size, view.source)
        for view in trajectory.views
    ]
    return scaled


# ---------------------------------------------------------------- comparing runs


def _comparison_rows(metrics: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    """Comparable metrics by name: (number for the difference, formatted value)."""
    rows: dict[str, tuple[float | None, str]] = {}

    def percent(name: str, value: float | None) -> None:
        rows[name] = (None if value is None else 100 * value, _percent(value))

    def plain(name: str, value: Any) -> None:
        rows[name] = (float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None, _number(value))

    runs = (metrics.get("runs_per_sample") or {}).get("max")
    plain("questions", metrics.get("samples"))
    plain("episodes", metrics.get("episodes"))
    plain("runs per question (K)", runs)
    percent("Avg@K", metrics.get("avg_at_k"))
    percent("pass@K", metrics.get("pass_at_k"))
    for k, value in (metrics.get("pass_at") or {}).items():
        percent(f"pass@{k}", value)
    for kind in ("split", "category"):
        parts = metrics.get(f"by_{kind}") or {}
        if len(parts) > 1 or (parts and "" not in parts):
            for name, part in parts.items():
                percent(f"Avg@K {kind}={name or '(none)'}", part.get("avg_at_k"))
    accuracy = metrics.get("accuracy_by_budget") or []
    budgets = sorted({b for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if b <= len(accuracy)} | ({len(accuracy)} if accuracy else set()))
    for budget in budgets:
        percent(f"Avg@K at {budget} turns", accuracy[budget - 1])
    rotation = metrics.get("rotation") or {}
    if rotation:
        percent("HR-Bench score (mean over rotations)", rotation.get("average"))
        percent("right in all rotations", rotation.get("all_rotations"))
    search = metrics.get("search") or {}
    if search:
        plain("zooms per episode mean", (search.get("zooms_per_episode") or {}).get("mean"))
        percent("repeated crops (share of zooms)", search.get("repeated_share"))
        if search.get("target"):
            percent("zooms on the target (share)", search["target"].get("share_of_zooms"))
        plain("generated tokens per episode mean", (search.get("generated_tokens") or {}).get("mean"))
    for status, count in (metrics.get("status_counts") or {}).items():
        plain(f"status {status}", count)
    for name, label in (("turns", "turns mean"), ("turns_correct", "turns mean (correct)")):
        plain(label, (metrics.get(name) or {}).get("mean"))
    for name, stats in (metrics.get("per_turn") or {}).items():
        plain(f"per turn {name} mean", (stats or {}).get("mean"))
        plain(f"per turn {name} p90", (stats or {}).get("p90"))
    return rows


def compare_runs(run_a: str | Path, run_b: str | Path) -> Table:
    """A side-by-side table of two runs' metrics, with B - A (percentage points for accuracies)."""
    metrics_a, metrics_b = read_metrics(run_a), read_metrics(run_b)
    rows_a, rows_b = _comparison_rows(metrics_a), _comparison_rows(metrics_b)
    table = Table(title=f"A = {run_a}\nB = {run_b}", title_justify="left")
    table.add_column("metric")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("B - A", justify="right")
    for name in list(rows_a) + [name for name in rows_b if name not in rows_a]:
        number_a, shown_a = rows_a.get(name, (None, "–"))
        number_b, shown_b = rows_b.get(name, (None, "–"))
        delta = "–"
        if number_a is not None and number_b is not None:
            difference = number_b - number_a
            style = "green" if difference > 0 else "red" if difference < 0 else ""
            unit = shown_a.endswith("%")
            text = f"{difference:+.1f} pp" if unit else f"{difference:+,.4g}"
            delta = f"[{style}]{text}[/{style}]" if style else text
        table.add_row(name, shown_a, shown_b, delta)
    return table


def compare_runs_text(run_a: str | Path, run_b: str | Path, width: int = 100) -> str:
    """`compare_runs` rendered as plain text."""
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(compare_runs(run_a, run_b))
    return console.export_text()
