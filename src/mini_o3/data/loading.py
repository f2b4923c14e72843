"""One entry point for every dataset: `load_dataset("vstar:/data/vstar_bench")`.

Spec grammar (KIND is case-insensitive; a bare path is auto-detected):

    visualprobe:FILE.json[:IMAGE_DIR]      VisualProbe val.json / train.json (images default to FILE's folder)
    vstar:DIR                              V* Bench folder holding test_questions.jsonl (or the .jsonl itself)
    hrbench:FILE.tsv | hrbench:FILE.parquet
    mme-realworld:FILE.json[:IMAGE_DIR]    MME_RealWorld.json or MME_RealWorld_CN.json
    mme-realworld-lite:DIR                 the Lite release (DIR/data/MME-RealWorld-Lite.json) or its JSON
    synthetic:DIR                          a set written by `mini-o3 synth`
    json:FILE | jsonl:FILE                 the generic form {id, image, question, answer[, options, category]}
    PATH                                   auto-detected from the file name, extension and content

A path that itself contains ':' is taken whole when it exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mini_o3.agent.images import DEFAULT_IMAGE_PIXEL_LIMIT, ImageLoadError, check_image_file
from mini_o3.agent.sample import Sample
from mini_o3.data import benchmarks
from mini_o3.data.benchmarks import BadRecord, DatasetError, Record
from mini_o3.jsonl import safe_text

KINDS = ("visualprobe", "vstar", "hrbench", "mme-realworld", "mme-realworld-lite", "synthetic", "json", "jsonl")
"""The dataset kinds a spec may name."""

_ALIASES = {
    "visual-probe": "visualprobe",
    "visual_probe": "visualprobe",
    "v*": "vstar",
    "vstar-bench": "vstar",
    "vstar_bench": "vstar",
    "hr-bench": "hrbench",
    "hr_bench": "hrbench",
    "mme": "mme-realworld",
    "mme_realworld": "mme-realworld",
    "mme_realworld_lite": "mme-realworld-lite",
    "mme-lite": "mme-realworld-lite",
    "synth": "synthetic",
}

_SKIP_HINT = "(or pass skip_bad=True / --skip-bad to skip and count bad records)"


@dataclass
class LoadResult:
    """The samples of one dataset, and the bad records that were skipped."""

    samples: list[Sample]
    """Good records, in file order."""
    skipped: int = 0
    """How many bad records were skipped (only with skip_bad)."""
    reasons: list[str] = field(default_factory=list)
    """One line per skipped record: file, record index and id, what is wrong, the fix."""
    kind: str = ""
    """The dataset kind that was read (one of KINDS)."""
    path: Path | None = None
    """The file or folder that was read."""

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def summary(self) -> str:
        """One line for logs: how many samples, from what, how many skipped."""
        text = f"{len(self.samples)} samples from {self.kind}:{self.path}"
        return text + (f" ({self.skipped} bad records skipped)" if self.skipped else "")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec."""

    kind: str
    """One of KINDS."""
    path: Path
    """The dataset file or folder."""
    image_dir: Path | None = None
    """The image folder, for the kinds that take one."""


def load_dataset(
    spec: str,
    skip_bad: bool = False,
    limit: int | None = None,
    cache_dir: Path | None = None,
    pixel_limit: int | None = DEFAULT_IMAGE_PIXEL_LIMIT,
) -> LoadResult:
    """Load a dataset from a spec such as `vstar:DIR` or a bare path (see the module docstring).

    Each sample's image header is checked (`mini_o3.agent.images.check_image_file`: present, a
    file, not empty, an image, at most `pixel_limit` pixels) without decoding it; a sample that
    fails is a bad record. `pixel_limit=None` skips the check.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or at least 0, got {limit}")
    parsed = parse_spec(spec)
    return collect(_records(parsed, cache_dir), skip_bad, limit, parsed, pixel_limit)


def parse_spec(spec: str) -> DatasetSpec:
    """Split a spec into kind, path and optional image folder; auto-detect a bare path."""
    text = str(spec).strip()
    if not text:
        raise DatasetError(f"empty dataset spec; write KIND:PATH with KIND one of {', '.join(KINDS)}, or a path")
    match = re.match(r"^([A-Za-z][\w*.-]*):(.*)$", text, re.DOTALL)
    kind = None
    if match and not Path(text).exists():
        name = match.group(1).lower()
        kind = _ALIASES.get(name, name)
        if kind not in KINDS:
            if len(name) == 1:  # a Windows drive letter, not a kind
                kind = None
            else:
                raise DatasetError(f"unknown dataset kind {match.group(1)!r} in {text!r}; use one of {', '.join(KINDS)}, or give a path to auto-detect")
    if kind is None:
        return detect(Path(text))
    rest = match.group(2) if match else ""
    if not rest:
        raise DatasetError(f"{text!r} names no path; write {kind}:PATH")
    path, image_dir = Path(rest), None
    if kind in ("visualprobe", "mme-realworld") and not path.exists() and ":" in rest:
        head, tail = rest.rsplit(":", 1)
        path, image_dir = Path(head), Path(tail)
        if not image_dir.is_dir():
            raise DatasetError(f"image folder not found: {image_dir} (from {text!r}); check the path after the last ':'")
    if not path.exists():
        raise DatasetError(f"{kind} data not found: {path} (from {text!r}); check the path")
    return DatasetSpec(kind, path, image_dir)


def detect(path: Path) -> DatasetSpec:
    """Guess the dataset kind of a bare path from its name, extension and content."""
    if not path.exists():
        raise DatasetError(f"dataset path not found: {path}; check the path, or write KIND:PATH with KIND one of {', '.join(KINDS)}")
    if path.is_dir():
        return _detect_dir(path)
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".parquet"):
        return DatasetSpec("hrbench", path)
    if suffix == ".jsonl":
        first = _first_jsonl_object(path)
        if {"text", "label", "question_id"} <= set(first) or path.name == "test_questions.jsonl":
            return DatasetSpec("vstar", path)
        if {"image", "question", "answer"} <= set(first):
            return DatasetSpec("jsonl", path)
        raise DatasetError(f"{path}: cannot tell the dataset kind from the keys {sorted(first)}; write KIND:{path}")
    if suffix == ".json":
        return DatasetSpec(_json_kind(path), path)
    raise DatasetError(f"{path}: cannot tell the dataset kind from the extension {suffix!r}; write KIND:{path} with KIND one of {', '.join(KINDS)}")


def collect(
    records: Iterable[Record],
    skip_bad: bool,
    limit: int | None,
    spec: DatasetSpec | None = None,
    pixel_limit: int | None = None,
) -> LoadResult:
    """Gather records into a LoadResult: raise on the first bad one, or skip and count them; check image headers unless `pixel_limit` is None."""
    result = LoadResult([], kind=spec.kind if spec else "", path=spec.path if spec else None)
    if limit == 0:
        return result
    for index, record in enumerate(records):
        if pixel_limit is not None and not isinstance(record, BadRecord):
            record = _checked_image(record, index, spec, pixel_limit)
        if isinstance(record, BadRecord):
            if not skip_bad:
                raise DatasetError(f"{record.message()} {_SKIP_HINT}")
            result.skipped += 1
            result.reasons.append(record.message())
            continue
        result.samples.append(record)
        if limit is not None and len(result.samples) >= limit:
            break
    return result


def _checked_image(sample: Sample, index: int, spec: DatasetSpec | None, pixel_limit: int) -> Record:
    """`sample`, or a BadRecord when its image header says it cannot be used."""
    if not isinstance(sample.image, (str, Path)):
        return sample  # an in-memory image
    try:
        check_image_file(sample.image, pixel_limit)
    except ImageLoadError as error:
        file = spec.path if spec is not None else Path(sample.image)
        return BadRecord(file, index, sample.id, safe_text(str(error)), "or remove this record")
    return sample


def _records(spec: DatasetSpec, cache_dir: Path | None) -> Iterator[Record]:
    if spec.kind == "visualprobe":
        return benchmarks.iter_visualprobe(_file(spec), spec.image_dir)
    if spec.kind == "vstar":
        return benchmarks.iter_vstar(spec.path)
    if spec.kind == "hrbench":
        return benchmarks.iter_hrbench(_file(spec), cache_dir)
    if spec.kind == "mme-realworld":
        path = _file(spec)
        source = "mme-realworld-cn" if re.search(r"_cn\b|-cn\b", path.stem, re.IGNORECASE) else "mme-realworld"
        return benchmarks.iter_mme_realworld(path, spec.image_dir, source)
    if spec.kind == "mme-realworld-lite":
        return benchmarks.iter_mme_realworld_lite(spec.path)
    if spec.kind == "synthetic":
        from mini_o3.data.synth_loading import iter_synthetic

        return iter_synthetic(spec.path)
    return benchmarks.iter_generic(_file(spec), jsonl=spec.kind == "jsonl")


def _file(spec: DatasetSpec) -> Path:
    if spec.path.is_dir():
        raise DatasetError(f"{spec.kind} expects a file, got the folder {spec.path}; name the file inside it")
    return spec.path


def _detect_dir(path: Path) -> DatasetSpec:
    if (path / "test_questions.jsonl").is_file():
        return DatasetSpec("vstar", path)
    if benchmarks.find_mme_lite_json(path) is not None:
        return DatasetSpec("mme-realworld-lite", path)
    if _is_synthetic_dir(path):
        return DatasetSpec("synthetic", path)
    for name in ("val.json", "test.json", "train.json"):
        candidate = path / name
        if candidate.is_file() and _json_kind(candidate, strict=False) == "visualprobe":
            return DatasetSpec("visualprobe", candidate)
    raise DatasetError(
        f"{path}: cannot tell the dataset kind of this folder (no test_questions.jsonl, "
        "MME-RealWorld-Lite.json, synthetic set or VisualProbe val.json/train.json); "
        f"write KIND:PATH with KIND one of {', '.join(KINDS)}"
    )


def _is_synthetic_dir(path: Path) -> bool:
    from mini_o3.data.synth_loading import is_synthetic_dir

    return is_synthetic_dir(path)


def _json_kind(path: Path, strict: bool = True) -> str:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        if not strict:
            return ""
        raise DatasetError(f"{path}: not valid JSON ({error}); is the download complete?") from None
    first = next((item for item in data if isinstance(item, dict)), {}) if isinstance(data, list) else {}
    keys = {re.sub(r"[\s_]+", " ", str(key).strip().lower()) for key in first}
    if {"images", "problem", "solution"} <= keys:
        return "visualprobe"
    if {"answer choices", "ground truth"} <= keys:
        return "mme-realworld-lite" if "lite" in path.name.lower() else "mme-realworld"
    if {"id", "image", "question", "answer"} <= keys:
        return "json"
    if strict:
        shown = sorted(first)[:12] if first else f"a JSON {type(data).__name__}"
        raise DatasetError(f"{path}: cannot tell the dataset kind from {shown}; write KIND:{path} with KIND one of {', '.join(KINDS)}")
    return ""


_DETECT_LINES = 100
"""Auto-detection reads the first JSON object among this many lines (bad lines before it are the reader's to report)."""


def _first_jsonl_object(path: Path) -> dict[str, Any]:
    first_problem = None
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number > _DETECT_LINES:
                break
            if not raw.strip(b"\xef\xbb\xbf \t\r\n"):
                continue
            value = benchmarks.parse_json_line(raw[3:] if number == 1 and raw.startswith(b"\xef\xbb\xbf") else raw)
            if isinstance(value, dict):
                return value
            first_problem = first_problem or (number, getattr(value, "reason", f"a JSON {type(value).__name__}, not an object"))
    if first_problem is None:
        raise DatasetError(f"{path}: the file is empty")
    number, reason = first_problem
    raise DatasetError(f"{path}: no JSON object in the first {_DETECT_LINES} lines to tell the dataset kind from (line {number}: {reason}); fix the file or write KIND:{path}")
