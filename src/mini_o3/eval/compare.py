"""Two runs side by side, question by question: what one gained and lost against the other.

Made for a no-zoom baseline (A, `mini-o3 eval --prompt direct`) against a zoom run (B) of the
same model and data: per question, the accuracy over K runs in each, and which questions the
zooms fixed and which they broke. The net change of Avg@K splits exactly into the two:
gained (the sum of the per-question rises, over all common questions) plus lost (the falls).
The protocol cards are compared too, so a difference in data, model or settings shows.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mini_o3.eval.run_dir import CONFIG_FILE, RunDirError, read_results

# Settings a baseline is expected to differ in; every other card difference is flagged.
EXPECTED_DIFFERENCES = ("prompt.mode", "prompt.system_prompt", "prompt.system_prompt_sha256", "prompt.zoom_tool", "budget.max_turns")


@dataclass(frozen=True)
class QuestionChange:
    """One question in both runs: its accuracy over the K runs of each, and the answers read."""

    split: str
    sample_id: str
    ground_truth: str
    accuracy_a: float
    accuracy_b: float
    answers_a: str
    """The answers of A's runs as scored (most common first, with counts)."""
    answers_b: str
    zoomed_runs_b: int = 0
    """B's runs of this question that zoomed at least once."""
    right_after_zoom_b: int = 0
    """B's right runs that zoomed first: only these show the zoom tool at work."""

    @property
    def change(self) -> float:
        """accuracy_b - accuracy_a."""
        return self.accuracy_b - self.accuracy_a


def _per_question(records: dict[tuple[str, int], dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records.values():
        grouped[(record.get("split", ""), record["sample_id"])].append(record)
    return grouped


def _zoomed(record: dict[str, Any]) -> bool:
    """Whether a results.jsonl record's episode zoomed (runs made before "zooms" was recorded: more than one turn)."""
    return bool(record["zooms"]) if "zooms" in record else int(record.get("turns", 0)) > 1


def _answers(records: list[dict[str, Any]]) -> str:
    counts = Counter(str(record["score"].get("extracted") if record["score"].get("extracted") is not None else "(none)") for record in records)
    return ", ".join(f"{answer} x{count}" if count > 1 else answer for answer, count in counts.most_common())


def question_changes(records_a: dict[tuple[str, int], dict[str, Any]], records_b: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Per-question accuracy in A and B (results.jsonl records), the gained and lost questions, and the split of the net change."""
    questions_a, questions_b = _per_question(records_a), _per_question(records_b)
    common = [key for key in questions_a if key in questions_b]
    changes = []
    for key in common:
        runs_a, runs_b = questions_a[key], questions_b[key]
        changes.append(
            QuestionChange(
                split=key[0], sample_id=key[1], ground_truth=str(runs_a[0].get("ground_truth", "")),
                accuracy_a=sum(bool(run["score"]["correct"]) for run in runs_a) / len(runs_a),
                accuracy_b=sum(bool(run["score"]["correct"]) for run in runs_b) / len(runs_b),
                answers_a=_answers(runs_a), answers_b=_answers(runs_b),
                zoomed_runs_b=sum(_zoomed(run) for run in runs_b),
                right_after_zoom_b=sum(_zoomed(run) and bool(run["score"]["correct"]) for run in runs_b),
            )
        )
    gained = sorted((change for change in changes if change.change > 0), key=lambda change: -change.change)
    lost = sorted((change for change in changes if change.change < 0), key=lambda change: change.change)
    count = len(changes)
    return {
        "common": count,
        "only_a": len(questions_a) - count,
        "only_b": len(questions_b) - count,
        "avg_a": sum(change.accuracy_a for change in changes) / count if count else None,
        "avg_b": sum(change.accuracy_b for change in changes) / count if count else None,
        "gained": gained,
        "lost": lost,
        "gained_after_a_zoom": sum(1 for change in gained if change.right_after_zoom_b),
        "lost_after_a_zoom": sum(1 for change in lost if change.zoomed_runs_b),
        "both_right": sum(1 for change in changes if change.accuracy_a == change.accuracy_b == 1.0),
        "both_wrong": sum(1 for change in changes if change.accuracy_a == change.accuracy_b == 0.0),
        "same_partly": sum(1 for change in changes if change.change == 0 and 0.0 < change.accuracy_a < 1.0),
        "gain_pp": 100 * sum(change.change for change in gained) / count if count else 0.0,
        "loss_pp": 100 * sum(change.change for change in lost) / count if count else 0.0,
    }


def _flatten(card: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in card.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def card_differences(card_a: dict[str, Any], card_b: dict[str, Any]) -> list[tuple[str, Any, Any, bool]]:
    """(setting, A's value, B's value, expected for a baseline comparison) for every card setting that differs."""
    flat_a, flat_b = _flatten(card_a), _flatten(card_b)
    names = list(flat_a) + [name for name in flat_b if name not in flat_a]
    return [(name, flat_a.get(name), flat_b.get(name), name in EXPECTED_DIFFERENCES) for name in names if flat_a.get(name) != flat_b.get(name)]


def read_card(run_dir: str | Path) -> dict[str, Any]:
    """The protocol card a run directory's config.json holds (empty for runs made before cards)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} is not an eval run directory (no {CONFIG_FILE}); point at the --out of `mini-o3 eval`")
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("protocol") or {}
    except ValueError as error:
        raise RunDirError(f"cannot read {path}: {error}") from error


def compare_questions(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """`question_changes` and `card_differences` of two run directories, JSON-ready."""
    records_a, records_b = read_results(run_a), read_results(run_b)
    if not records_a or not records_b:
        empty = run_a if not records_a else run_b
        raise RunDirError(f"{empty} has no results.jsonl; is it the --out of a finished `mini-o3 eval`?")
    changes = question_changes(records_a, records_b)
    changes["gained"] = [dict(asdict(change), change=change.change) for change in changes["gained"]]
    changes["lost"] = [dict(asdict(change), change=change.change) for change in changes["lost"]]
    changes["card_differences"] = [
        {"setting": name, "a": a, "b": b, "expected": expected} for name, a, b, expected in card_differences(read_card(run_a), read_card(run_b))
    ]
    return changes


# ---------------------------------------------------------------- for people: the console and a page


def comparison_summary(changes: dict[str, Any]) -> str:
    """One paragraph: questions in common, gained and lost, the net change split into the two."""
    if not changes["common"]:
        return "the two runs have no question in common"
    net = changes["gain_pp"] + changes["loss_pp"]
    text = (
        f"{changes['common']} questions in both runs: B gained on {len(changes['gained'])} ({changes['gain_pp']:+.1f} pp) "
        f"and lost on {len(changes['lost'])} ({changes['loss_pp']:+.1f} pp), net {net:+.1f} pp "
        f"(Avg@K {100 * changes['avg_a']:.1f}% -> {100 * changes['avg_b']:.1f}%); "
        f"both always right on {changes['both_right']}, both always wrong on {changes['both_wrong']}. "
        f"B was right after a zoom on {changes['gained_after_a_zoom']} of the gained questions and zoomed on "
        f"{changes['lost_after_a_zoom']} of the lost ones (the rest moved without a zoom: the prompt or sampling, not the tool)"
    )
    if changes["only_a"] or changes["only_b"]:
        text += f"; {changes['only_a']} questions only in A and {changes['only_b']} only in B are left out"
    return text


def print_comparison(console: Any, run_a: str | Path, run_b: str | Path, show: int = 20) -> dict[str, Any]:
    """Print the metrics side by side, the card differences and the gained and lost questions; returns `compare_questions`."""
    from rich.markup import escape
    from rich.table import Table

    from mini_o3.eval.report import compare_runs

    console.print(compare_runs(run_a, run_b))
    changes = compare_questions(run_a, run_b)
    if changes["card_differences"]:
        table = Table(title="protocol differences (yellow: not expected between a baseline and a zoom run)", title_justify="left")
        for column in ("setting", "A", "B"):
            table.add_column(column)
        for item in changes["card_differences"]:
            style = "" if item["expected"] else "yellow"
            table.add_row(item["setting"], escape(_short(item["a"])), escape(_short(item["b"])), style=style)
        console.print(table)
    console.print(comparison_summary(changes))
    for title, items in (("gained (B right more often than A)", changes["gained"]), ("lost (B right less often than A)", changes["lost"])):
        if not items:
            continue
        table = Table(title=f"{title}: {len(items)}" + (f", first {show}" if len(items) > show else ""), title_justify="left")
        for column in ("question", "truth", "A", "B", "B zoomed", "A answered", "B answered"):
            table.add_column(column)
        for item in items[:show]:
            table.add_row(escape(_question_name(item)), escape(item["ground_truth"]), f"{100 * item['accuracy_a']:.0f}%",
                          f"{100 * item['accuracy_b']:.0f}%", _zoom_note(item), escape(_short(item["answers_a"])), escape(_short(item["answers_b"])))
        console.print(table)
    return changes


def _zoom_note(item: dict[str, Any]) -> str:
    """B's runs that zoomed, and how many of them were right."""
    return f"{item['zoomed_runs_b']} runs, {item['right_after_zoom_b']} right" if item["zoomed_runs_b"] else "never"


def _question_name(item: dict[str, Any]) -> str:
    return f"{item['split']}/{item['sample_id']}" if item["split"] else item["sample_id"]


def _short(value: Any, limit: int = 60) -> str:
    text = "–" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_comparison(run_a: str | Path, run_b: str | Path, path: str | Path) -> Path:
    """A static page (no scripts, everything escaped) with the metrics, card differences and every gained and lost question."""
    from mini_o3.eval.report import CONTENT_SECURITY_POLICY, STYLE, _e, _comparison_rows, read_metrics
    from mini_o3.jsonl import write_atomic

    changes = compare_questions(run_a, run_b)
    rows_a, rows_b = _comparison_rows(read_metrics(run_a)), _comparison_rows(read_metrics(run_b))
    metric_rows = "".join(
        f"<tr><th>{_e(name)}</th><td>{_e(rows_a.get(name, (None, '–'))[1])}</td><td>{_e(rows_b.get(name, (None, '–'))[1])}</td></tr>"
        for name in list(rows_a) + [name for name in rows_b if name not in rows_a]
    )
    differences = "".join(
        f"<tr class={'muted' if item['expected'] else 'bad'}><th>{_e(item['setting'])}</th><td>{_e(_short(item['a'], 200))}</td>"
        f"<td>{_e(_short(item['b'], 200))}</td></tr>"
        for item in changes["card_differences"]
    )

    def question_table(items: list[dict[str, Any]]) -> str:
        body = "".join(
            f"<tr><td>{_e(_question_name(item))}</td><td>{_e(item['ground_truth'])}</td><td>{100 * item['accuracy_a']:.0f}%</td>"
            f"<td>{100 * item['accuracy_b']:.0f}%</td><td>{_e(_zoom_note(item))}</td><td>{_e(item['answers_a'])}</td><td>{_e(item['answers_b'])}</td></tr>"
            for item in items
        )
        return ("<table><thead><tr><th>question</th><th>truth</th><th>A</th><th>B</th><th>B zoomed</th><th>A answered</th>"
                "<th>B answered</th></tr></thead>"
                f"<tbody>{body}</tbody></table>") if items else "<p class=muted>none</p>"

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(CONTENT_SECURITY_POLICY)}">
<title>mini-o3 compare</title><style>{STYLE}</style></head>
<body>
<h1>What B gained and lost against A</h1>
<p>A = {_e(run_a)}<br>B = {_e(run_b)}</p>
<p><b>{_e(comparison_summary(changes))}</b></p>
<h2>Protocol differences</h2>
{('<table><thead><tr><th>setting</th><th>A</th><th>B</th></tr></thead><tbody>' + differences + '</tbody></table>') if differences else '<p class=muted>the cards agree</p>'}
<p class=muted>Grey rows are expected between a no-zoom baseline and a zoom run; red rows mean the runs differ in more than the zoom.</p>
<h2>Gained: {len(changes['gained'])} questions</h2>
{question_table(changes['gained'])}
<h2>Lost: {len(changes['lost'])} questions</h2>
{question_table(changes['lost'])}
<h2>Metrics</h2>
<table><thead><tr><th>metric</th><th>A</th><th>B</th></tr></thead><tbody>{metric_rows}</tbody></table>
</body></html>
"""
    path = Path(path)
    write_atomic(path, page)
    return path
