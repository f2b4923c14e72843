"""Reading a synthetic set back: the set's file names, and its records as Samples or BadRecords."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from mini_o3.data.benchmarks import BadRecord, DatasetError, Record, RecordProblem, build_records, existing_image
from mini_o3.agent.sample import Sample
from mini_o3.agent.protocol import question_from_problem

DATA_FILE = "data.json"
CONFIG_FILE = "synth_config.json"


def is_synthetic_dir(path: str | Path) -> bool:
    """True for a folder written by `synthesize`."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / DATA_FILE).is_file()


def iter_synthetic(path: str | Path) -> Iterator[Record]:
    """The records of a synthetic set (its folder or its data.json) as Samples, or BadRecords naming what is wrong.

    A missing or unreadable data.json raises DatasetError at once; a bad record (a field
    missing, an image path leaving the set's folder, an image not on disk) is a BadRecord,
    so `load_dataset(..., skip_bad=True)` skips and counts it like any other loader's.
    """
    path = Path(path)
    file = path / DATA_FILE if path.is_dir() else path
    if not file.is_file():
        hint = " (the run did not finish: rerun `mini-o3 synth` with the same arguments to complete it)" if (path / CONFIG_FILE).is_file() else ""
        raise DatasetError(f"{file}: no synthetic set here{hint}")
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"{file}: not valid JSON ({error}); rerun `mini-o3 synth` with the same arguments to rewrite it") from None
    if not isinstance(records, list):
        raise DatasetError(f"{file}: expected a JSON array of records, found a JSON {type(records).__name__}")
    base = file.parent

    def build(record: dict[str, Any], index: int) -> Sample:
        return _sample(record, base)

    return build_records(file, ((index, None, record) for index, record in enumerate(records)), build)


def load_synthetic(path: str | Path) -> list[Sample]:
    """The samples of a synthetic set (its folder or its data.json); images stay on disk. The first bad record raises DatasetError."""
    samples = []
    for record in iter_synthetic(path):
        if isinstance(record, BadRecord):
            raise DatasetError(f"{record.message()} (or load it with `load_dataset(..., skip_bad=True)` / --skip-bad to skip bad records)")
        samples.append(record)
    return samples


_REWRITE = "rerun `mini-o3 synth` with the same arguments to rewrite the set"


def _sample(record: dict[str, Any], base: Path) -> Sample:
    for key, kind in (("images", list), ("doc_id", str), ("problem", str), ("solution", str), ("data_source", str)):
        if not isinstance(record.get(key), kind):
            raise RecordProblem(f"field {key!r} is missing or not a {kind.__name__}", _REWRITE)
    if not record["problem"].startswith("<image>\n"):
        raise RecordProblem("'problem' must start with '<image>\\n'", _REWRITE)
    if len(record["images"]) != 1:
        raise RecordProblem(f"'images' holds {len(record['images'])} paths, not exactly one", _REWRITE)
    image = existing_image(base, record["images"][0], "rerun `mini-o3 synth` with the same arguments to redraw it")
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    options = meta.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(key, str) and isinstance(text, str) for key, text in options.items()):
        raise RecordProblem(f"meta.options is {options!r}, not an object of letter -> text", _REWRITE)
    boxes = meta.get("boxes", [])
    if not isinstance(boxes, list) or not all(_is_box(box) for box in boxes):
        raise RecordProblem("meta.boxes is not a list of [x0, y0, x1, y1]", _REWRITE)
    return Sample(
        id=record["doc_id"],
        image=image,
        question=question_from_problem(record["problem"]),
        answer=record["solution"],
        options=dict(options),
        source=record["data_source"],
        split=str(meta.get("level", "")),
        category=str(meta.get("question_type", "")),
        boxes=[tuple(float(v) for v in box) for box in boxes],
        meta=meta,
    )


def _is_box(box: Any) -> bool:
    return isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)


__all__ = [
    "CONFIG_FILE",
    "DATA_FILE",
    "is_synthetic_dir",
    "iter_synthetic",
    "load_synthetic",
]
