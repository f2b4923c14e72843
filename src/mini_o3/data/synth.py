"""Writing a synthetic set: records on disk, resume, workers, and the report of a run.

A set on disk (`synthesize`): DIR/synth_config.json (what made it), DIR/images/*.jpg,
DIR/records/NNNNNN.json (one record each, written after its image; a record present means
done, so a rerun with the same arguments skips it: resume), DIR/data.json (the JSON array of
all records, rewritten at the end), DIR/report.json, and a contact sheet. Record i is made
from the seed (seed, i, attempt), so records are independent and workers can share the work;
same arguments, same bytes.

The problems come from `mini_o3.data.problems` (levels, options, queries, `resolve`),
`mini_o3.data.checks` (figures and checks) and `mini_o3.data.generate` (scenes, `make_problem`);
`mini_o3.data.synth_loading` reads a set back. Their public names stay importable from here.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The names this module defined before the split stay importable from it (re-exported).
from mini_o3.data.checks import Figures, check_problem, measure, near_distractors, oracle_zooms, overlaps, shown_scale  # noqa: F401
from mini_o3.data.generate import (  # noqa: F401
    PlacementError,
    check_feasible,
    first_view_scale,
    generate_grid_problem,
    generate_problem,
    image_size,
    make_problem,
)
from mini_o3.data.problems import (  # noqa: F401
    ATTRIBUTES,
    DIRECTIONS,
    LEGIBLE_PX,
    LEVELS,
    OPEN_INSTRUCTION,
    QUESTION_KINDS,
    AmbiguousError,
    GridConfig,
    LevelSpec,
    Problem,
    Query,
    Resolution,
    SynthError,
    SynthOptions,
    failed_predicates,
    resolve,
)
from mini_o3.data.scene import SceneObject, render
from mini_o3.data.synth_loading import CONFIG_FILE, DATA_FILE, is_synthetic_dir, iter_synthetic, load_synthetic
from mini_o3.agent.images import encode_image
from mini_o3.jsonl import write_atomic, write_json

REPORT_FILE = "report.json"
SYNTH_VERSION = 1
"""Bumped when the same arguments would draw different scenes; part of the saved config."""


# ---------------------------------------------------------------- records


def _object_meta(obj: SceneObject, role: str) -> dict[str, Any]:
    return {"role": role, "box": list(obj.box), **obj.attributes()}


def problem_record(problem: Problem, figures: Figures, doc_id: str, image: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The Mini-o3 JSON record of a problem, with our metadata under "meta"."""
    scene, query = problem.scene, problem.query
    resolution = resolve(scene, query)
    if query.kind == "relation":
        roles = ["anchor", "target"]
    else:
        roles = ["counted" if query.kind == "count" else "target"] * len(resolution.referents)
    referents = [_object_meta(scene.objects[i], role) for i, role in zip(resolution.referents, roles)]
    if query.frame is not None:
        frame = scene.frames[query.frame]
        referents.append({"role": "frame", "box": list(frame.box), "colour": frame.colour})
    near = [
        dict(_object_meta(scene.objects[i], "near_distractor"), differs=name)
        for i, name in near_distractors(scene, query, resolution.referents)
    ]
    extra = {k: v for k, v in problem.extra.items() if k != "grid_config"}
    return {
        "images": [image],
        "doc_id": doc_id,
        "problem": "<image>\n" + problem.text,
        "solution": problem.solution,
        "data_source": f"synthetic_{problem.level}",
        "meta": {
            "level": problem.level,
            "question": problem.question,
            "question_type": query.kind,
            "form": "multiple_choice" if problem.options else "open",
            "answer": problem.answer,
            "options": dict(problem.options),
            "image_size": [scene.width, scene.height],
            "boxes": [r["box"] for r in referents],
            "referents": referents,
            "near_distractors": near,
            "query": {"describe": dict(query.describe), "asked": query.asked, "direction": query.direction},
            "figures": figures.to_dict(),
            **extra,
            **meta,
        },
    }


def _encode(problem: Problem, options: SynthOptions) -> bytes:
    image = render(problem.scene)
    if options.image_format == "png":
        return encode_image(image, "PNG")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=options.jpeg_quality, subsampling=0)
    return buffer.getvalue()


def _record_path(out: Path, index: int) -> Path:
    return out / "records" / f"{index:06d}.json"


def make_record(out: Path, index: int, level: str, size: int, seed: int, options: SynthOptions) -> dict[str, Any]:
    """Generate, check, draw and write record `index` under `out`; the record."""
    problem, figures, attempt, rejections = make_problem(seed, index, level, size, options)
    doc_id = f"synthetic_{level}_{index:06d}"
    image = f"images/{doc_id}.{'jpg' if options.image_format == 'jpeg' else 'png'}"
    write_atomic(out / image, _encode(problem, options))
    meta = {"seed": seed, "index": index, "attempt": attempt, "rejections": dict(sorted(rejections.items()))}
    record = problem_record(problem, figures, doc_id, image, meta)
    write_json(_record_path(out, index), record, indent=1)
    return record


def _done(out: Path, index: int) -> bool:
    path = _record_path(out, index)
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (out / record["images"][0]).is_file()


@dataclass
class SynthReport:
    """What a `synthesize` run made, what it rejected, and the measured level figures."""

    out_dir: str
    data_file: str
    level: str
    size: int
    seed: int
    n: int
    written: int
    """Records made by this run."""
    skipped: int
    """Records already on disk (a resumed run)."""
    attempts: int
    """Scenes tried for all n records."""
    rejections: dict[str, int]
    """Rejected scenes by reason, over all n records."""
    seconds: float
    """Wall time of this run."""
    figures: dict[str, dict[str, float]]
    """Mean, min and max of each numeric figure over all n records."""
    question_types: dict[str, int]
    legible_first_view: float
    """Share of records whose answer is legible at the first view."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines for a person."""
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.n} {self.level} records at {self.size}px in {self.out_dir}: {self.written} made ({rate:.2f}/s), {self.skipped} already there",
            f"attempts {self.attempts}, rejected: {', '.join(f'{k} {v}' for k, v in sorted(self.rejections.items())) or 'none'}",
            f"question types: {', '.join(f'{k} {v}' for k, v in sorted(self.question_types.items()))}",
            f"legible at first view: {self.legible_first_view:.0%}",
        ]
        for name in ("target_side_fraction", "target_area_fraction", "near_distractors", "magnification_needed", "zooms_needed", "objects"):
            if name in self.figures:
                stats = self.figures[name]
                lines.append(f"  {name:22s} mean {stats['mean']:.4g}  min {stats['min']:.4g}  max {stats['max']:.4g}")
        return "\n".join(lines)


def summarise_figures(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, min and max of each numeric figure over records."""
    values: dict[str, list[float]] = {}
    for record in records:
        for key, value in record["meta"]["figures"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, []).append(float(value))
    return {key: {"mean": statistics.fmean(v), "min": min(v), "max": max(v)} for key, v in values.items()}


_WORKER: dict[str, Any] = {}


def _init_worker(out: str, level: str, size: int, seed: int, options: SynthOptions) -> None:
    _WORKER.update(out=Path(out), level=level, size=size, seed=seed, options=options)


def _work(index: int) -> int:
    make_record(_WORKER["out"], index, _WORKER["level"], _WORKER["size"], _WORKER["seed"], _WORKER["options"])
    return index


def _config(level: str, size: int, seed: int, options: SynthOptions) -> dict[str, Any]:
    saved = asdict(options)
    saved.pop("contact_sheet")
    if level != "grid":
        saved.pop("grid")
    return json.loads(json.dumps({"version": SYNTH_VERSION, "level": level, "size": size, "seed": seed, "options": saved}))


def _claim(out: Path, config: dict[str, Any]) -> None:
    path = out / CONFIG_FILE
    if path.is_file():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing != config:
            differ = sorted(k for k in set(existing) | set(config) if existing.get(k) != config.get(k))
            raise SynthError(
                f"{out} holds a set made with other settings ({', '.join(differ)} differ: "
                f"{ {k: existing.get(k) for k in differ} } there, { {k: config.get(k) for k in differ} } now); "
                "use another --out, or the same settings to resume it"
            )
        return
    write_json(path, config, indent=1)


def synthesize(
    out_dir: str | Path,
    n: int,
    level: str,
    size: int,
    seed: int,
    workers: int = 1,
    progress: bool = True,
    options: SynthOptions = SynthOptions(),
    console: Any = None,
) -> SynthReport:
    """Write `n` checked problems of `level` at `size` px (long side) under `out_dir`, resuming a partial set.

    The progress bar draws on `console` (a rich Console; default rich's own).
    """
    if n < 0:
        raise SynthError(f"n must be at least 0, got {n}")
    if size < 64:
        raise SynthError(f"size must be at least 64 px, got {size}")
    if seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed}")
    if workers < 1:
        raise SynthError(f"workers must be at least 1, got {workers}")
    check_feasible(level, size, options)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "records").mkdir(exist_ok=True)
    _claim(out, _config(level, size, seed, options))
    started = time.perf_counter()
    pending = [i for i in range(n) if not _done(out, i)]
    _run(out, pending, level, size, seed, workers, options, progress, n, console)
    seconds = time.perf_counter() - started
    records = [json.loads(_record_path(out, i).read_text(encoding="utf-8")) for i in range(n)]
    write_json(out / DATA_FILE, records, indent=1)
    rejections: Counter[str] = Counter()
    for record in records:
        rejections.update(record["meta"]["rejections"])
    report = SynthReport(
        out_dir=str(out),
        data_file=str(out / DATA_FILE),
        level=level,
        size=size,
        seed=seed,
        n=n,
        written=len(pending),
        skipped=n - len(pending),
        attempts=sum(record["meta"]["attempt"] + 1 for record in records),
        rejections=dict(sorted(rejections.items())),
        seconds=round(seconds, 3),
        figures=summarise_figures(records),
        question_types=dict(sorted(Counter(r["meta"]["question_type"] for r in records).items())),
        legible_first_view=statistics.fmean(r["meta"]["figures"]["legible_first_view"] for r in records) if records else 0.0,
    )
    write_json(out / REPORT_FILE, report.to_dict(), indent=1)
    if options.contact_sheet and records:
        from mini_o3.data.contact_sheet import write_contact_sheet

        write_contact_sheet(load_synthetic(out)[: options.contact_sheet], out)
    return report


def _run(
    out: Path, pending: list[int], level: str, size: int, seed: int, workers: int, options: SynthOptions, progress: bool, n: int, console: Any = None
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(f"synth {level}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, console=console) as bar:
        task = bar.add_task("synth", total=n, completed=n - len(pending))
        if workers == 1 or len(pending) <= 1:
            for index in pending:
                make_record(out, index, level, size, seed, options)
                bar.advance(task)
            return
        # spawn: safe beside threads and torch in the parent, and the same on every platform.
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(pending)), _init_worker, (str(out), level, size, seed, options)) as pool:
            for _ in pool.imap_unordered(_work, pending):
                bar.advance(task)


__all__ = [
    "LEGIBLE_PX",
    "LEVELS",
    "GridConfig",
    "LevelSpec",
    "Problem",
    "Query",
    "SynthOptions",
    "SynthReport",
    "check_problem",
    "generate_problem",
    "is_synthetic_dir",
    "iter_synthetic",
    "load_synthetic",
    "make_problem",
    "near_distractors",
    "resolve",
    "synthesize",
]
