"""Loaders for the public benchmarks and a generic JSON/JSONL form, read from their published files.

Every loader is a generator of `Sample` (a good record) or `BadRecord` (a record that cannot
be used, with the file, the record and the fix); `mini_o3.data.loading.load_dataset` turns
those into a `LoadResult`, raising on the first bad record or skipping and counting them.
File-level problems (a missing file, a file that is not JSON, a table without its columns)
raise `DatasetError` at once. Images are never decoded here: loaders only check that files
exist, except HR-Bench, whose base64 column is written once to an on-disk cache (see
`iter_hrbench`).

Multiple-choice prompt form. V* ships its options inside `text`, in the form
"{question}\\n(A) ..\\n(B) ..\\nAnswer with the option's letter from the given choices directly."
HR-Bench and MME-RealWorld ship question and options apart; `multiple_choice_question` writes
them in that same V* form so every multiple-choice benchmark reads alike to the model. The
question as published stays in `meta["raw_question"]`.

The facts each loader relies on are in shared/reference/benchmarks.md; where a fact is
unconfirmed there, the loader accepts the plausible variants and says so.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mini_o3.data.sample import Sample
from mini_o3.jsonl import write_atomic
from mini_o3.protocol import question_from_problem

from mini_o3.protocol import MULTIPLE_CHOICE_INSTRUCTION  # noqa: E402  (re-exported)
"""The last line of every multiple-choice question (V* Bench's own wording)."""

CACHE_ENV = "MINI_O3_CACHE"
"""Environment variable naming the cache folder; HR-Bench images go under `<cache>/hrbench/`."""


class DatasetError(ValueError):
    """A dataset file that cannot be read, or a bad record when bad records are not skipped."""


@dataclass(frozen=True)
class BadRecord:
    """A record that cannot become a Sample: where it is, what is wrong, and how to fix it."""

    file: Path
    """The file holding the record."""
    index: int
    """The record's 0-based position among the file's records."""
    record_id: str | None
    """The record's id, when it has one."""
    reason: str
    """What is wrong."""
    fix: str
    """What the user can do about it."""
    line: int | None = None
    """The 1-based line of the record, for line-based files (JSONL, TSV)."""

    def message(self) -> str:
        """One line naming the file, the record, the problem and the fix."""
        where = f"record {self.index}"
        if self.line is not None:
            where += f" (line {self.line})"
        if self.record_id is not None:
            where += f", id {self.record_id!r}"
        return f"{self.file}: {where}: {self.reason}; {self.fix}"


Record = Sample | BadRecord


class RecordProblem(Exception):
    """Raised by a loader's `build` for one bad record (what is wrong, the fix); `build_records` makes it a BadRecord."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


# ---------------------------------------------------------------- shared helpers


def default_cache_dir() -> Path:
    """The cache folder: $MINI_O3_CACHE, else ~/.cache/mini-o3."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mini-o3"


def safe_image_path(base: Path, raw: Any) -> Path:
    """`raw` joined to `base`, refusing paths that leave `base` (checked lexically, links are trusted).

    Lexical on purpose: Hugging Face snapshot folders hold symlinks into a blob store outside
    the folder, and those must keep working, while `../` or an absolute path elsewhere must not.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise RecordProblem(f"the image path is {_clip(raw)}, not a non-empty string", "give the image as a path relative to the data folder")
    if "\x00" in raw:
        raise RecordProblem("the image path contains a NUL byte", "fix the image path in the file")
    root = Path(os.path.normpath(os.path.abspath(base)))
    given = Path(raw.strip())
    joined = Path(os.path.normpath(given if given.is_absolute() else root / given))
    if joined != root and root not in joined.parents:
        raise RecordProblem(
            f"the image path {raw!r} points outside the data folder {root}",
            "image paths must stay inside the data folder (no '..', no absolute paths elsewhere); "
            "move the images there or pass the right image folder",
        )
    return joined


def existing_image(base: Path, raw: Any, fix: str, fallbacks: Iterable[Path] = ()) -> Path:
    """The safe path of `raw` under `base` (or the first existing fallback); a record problem if none exists."""
    path = safe_image_path(base, raw)
    if path.is_file():
        return path
    tried = [path]
    for candidate in fallbacks:
        if candidate in tried:
            continue
        if candidate.is_file():
            return candidate
        tried.append(candidate)
    looked = path if len(tried) == 1 else ", ".join(str(p) for p in tried)
    raise RecordProblem(f"image not found: {looked}", fix)


def parse_option_lines(text: str) -> dict[str, str]:
    """Options written one a line as "(A) red" in a question text, keyed by letter."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\s*\(([A-Z])\)\s*(.*?)\s*", line)
        if match:
            options[match.group(1)] = match.group(2)
    return options


def parse_choice(choice: str) -> tuple[str, str] | None:
    """("A", "red") from a choice written "(A) red", "A. red", "A) red" or "A: red"; None otherwise."""
    match = re.fullmatch(r"\s*(?:\(([A-Z])\)|([A-Z])[.:)])\s*(.*?)\s*", choice, re.DOTALL)
    if match is None:
        return None
    return match.group(1) or match.group(2), match.group(3)


def multiple_choice_question(question: str, options: dict[str, str]) -> str:
    """The question, its options one a line as "(A) ..", then the instruction (V* Bench's form)."""
    lines = [question.strip()] + [f"({letter}) {text}" for letter, text in options.items()]
    return "\n".join(lines + [MULTIPLE_CHOICE_INSTRUCTION])


def answer_letter(raw: Any, options: dict[str, str]) -> str:
    """The option letter an answer names: "B", "(B)", "B." or the option's exact text."""
    if raw is None or (isinstance(raw, float) and raw != raw):
        raise RecordProblem("the answer is missing", "give the right option's letter")
    text = str(raw).strip()
    match = re.fullmatch(r"\(?([A-Za-z])\)?\.?", text)
    if match and match.group(1).upper() in options:
        return match.group(1).upper()
    same = [letter for letter, option in options.items() if option.strip().casefold() == text.casefold()]
    if len(same) == 1:
        return same[0]
    raise RecordProblem(
        f"the answer {text!r} is neither an option letter ({', '.join(options)}) nor one option's text",
        "give the right option's letter",
    )


def _text_field(record: dict[str, Any], key: str, fix: str) -> str:
    value = record.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise RecordProblem(f"field {key!r} is {'missing' if key not in record else _clip(value)}, expected non-empty text", fix)
    return value


def _record_id(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = str(value).strip()
    return text or None


def _clip(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error}); is the download complete?") from None


def _json_array(path: Path, what: str) -> list[Any]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON array of {what} records, found a JSON {type(data).__name__}")
    return data


class _Ids:
    """Rejects a second record with an id already seen: results are keyed by id."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def claim(self, sample_id: str, index: int) -> None:
        first = self.seen.setdefault(sample_id, index)
        if first != index:
            raise RecordProblem(f"id {sample_id!r} was already used by record {first}", "give every record a unique id")


def build_records(path: Path, items: Iterable[tuple[int, int | None, Any]], build: Any) -> Iterator[Record]:
    """Run `build(record, index)` over (index, line, record) items, turning RecordProblems and repeated ids into BadRecords."""
    ids = _Ids()
    for index, line, record in items:
        record_id = None
        try:
            if isinstance(record, _Unparsable):
                raise RecordProblem(f"the line is not valid JSON ({record})", "fix or remove this line")
            if not isinstance(record, dict):
                raise RecordProblem(f"expected a JSON object, found {type(record).__name__}", "fix or remove this record")
            sample = build(record, index)
            record_id = sample.id
            ids.claim(sample.id, index)
            yield sample
        except RecordProblem as problem:
            if record_id is None and isinstance(record, dict):
                record_id = _record_id(_first_present(record, _ID_KEYS))
            yield BadRecord(path, index, record_id, problem.reason, problem.fix, line)


_ID_KEYS = ("id", "doc_id", "question_id", "Question_id", "index")


def _first_present(record: dict[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        if key in record:
            return record[key]
    return None


# ---------------------------------------------------------------- VisualProbe


def iter_visualprobe(path: Path, image_dir: Path | None = None) -> Iterator[Record]:
    """VisualProbe (Mini-o3/VisualProbe_{Easy,Medium,Hard,train}): a JSON array of Mini-o3 records.

    Each record: {"images": ["data/x.jpg"], "doc_id", "problem": "<image>\\n<question>",
    "solution", "data_source"}; images are joined to `image_dir` (default: the JSON's folder).
    Answers are free-form. Accepted variants (unconfirmed): `images` as a single string,
    `doc_id` missing (the id becomes "<data_source>-<index>"), numeric doc_id.
    """
    path = Path(path)
    base = Path(image_dir) if image_dir is not None else path.parent
    fix = f"check that the images are under {base} (pass the image folder as visualprobe:FILE:IMAGE_DIR)"

    def build(record: dict[str, Any], index: int) -> Sample:
        images = record.get("images")
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list) or len(images) != 1:
            raise RecordProblem(f"field 'images' is {_clip(images)}, expected a list of one image path", "give one image per record")
        problem = _text_field(record, "problem", "give the question as 'problem' (\"<image>\\n<question>\")")
        solution = _text_field(record, "solution", "give the answer as 'solution'")
        data_source = record.get("data_source") if isinstance(record.get("data_source"), str) else ""
        sample_id = _record_id(record.get("doc_id")) or f"{data_source or path.stem}-{index}"
        question = question_from_problem(problem.strip()).strip()
        if not question:
            raise RecordProblem("field 'problem' holds no question after the <image> placeholder", "write the question after '<image>\\n'")
        return Sample(
            id=sample_id,
            image=existing_image(base, images[0], fix),
            question=question,
            answer=solution.strip(),
            source="visualprobe",
            split=data_source,
            category=data_source,
            meta={"doc_id": record.get("doc_id")},
        )

    return build_records(path, ((i, None, r) for i, r in enumerate(_json_array(path, "VisualProbe"))), build)


# ---------------------------------------------------------------- V* Bench


def iter_vstar(root: Path) -> Iterator[Record]:
    """V* Bench (craigwu/vstar_bench): `test_questions.jsonl` plus a `<stem>.json` beside each image.

    Lines: {"image": "direct_attributes/sa_4690.jpg", "text": "<question>\\n(A) ..\\n(B) ..\\n
    Answer with the option's letter from the given choices directly.", "category",
    "question_id" (a string), "label" (the letter)}. The question is `text` as shipped; options
    are parsed from it; `bbox` [x, y, w, h] in the side file becomes boxes (x0, y0, x1, y1).
    A missing side file gives no boxes; a label-less line takes the side file's first option
    (the authors score option 0 as right).
    """
    root = Path(root)
    questions = root / "test_questions.jsonl" if root.is_dir() else root
    root = questions.parent
    fix = f"check that the V* folders (direct_attributes/, relative_position/) are under {root}"

    def build(record: dict[str, Any], index: int) -> Sample:
        text = _text_field(record, "text", "give the question with its options as 'text'")
        sample_id = _record_id(record.get("question_id"))
        if sample_id is None:
            raise RecordProblem("field 'question_id' is missing", "give every line a question_id")
        image = existing_image(root, record.get("image"), fix)
        options = parse_option_lines(text)
        if len(options) < 2:
            raise RecordProblem("'text' lists fewer than two options written '(A) ...'", "write one option a line as '(A) text'")
        side = _vstar_side_file(image)
        label = record.get("label")
        if label is None and side.get("options"):
            label = side["options"][0]
        category = record.get("category") if isinstance(record.get("category"), str) else image.parent.name
        return Sample(
            id=sample_id,
            image=image,
            question=text.strip(),
            answer=answer_letter(label, options),
            options=options,
            source="vstar",
            split=category,
            category=category,
            boxes=side.get("boxes", []),
            meta={"target_object": side.get("target_object", [])},
        )

    return build_records(questions, _jsonl_items(questions), build)


def _vstar_side_file(image: Path) -> dict[str, Any]:
    side = image.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecordProblem(f"the annotation file {side} is not valid JSON ({error})", "restore the file from the V* release") from None
    if not isinstance(data, dict):
        raise RecordProblem(f"the annotation file {side} is not a JSON object", "restore the file from the V* release")
    boxes = []
    for raw in data.get("bbox", []) or []:
        if not (isinstance(raw, (list, tuple)) and len(raw) == 4 and all(_is_number(v) for v in raw)):
            raise RecordProblem(f"the annotation file {side} has a bbox {_clip(raw)}, expected [x, y, w, h]", "restore the file from the V* release")
        x, y, w, h = (float(v) for v in raw)
        boxes.append((x, y, x + w, y + h))
    target = data.get("target_object", [])
    options = data.get("options") if isinstance(data.get("options"), list) else []
    return {"boxes": boxes, "target_object": target if isinstance(target, list) else [target], "options": options}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _jsonl_items(path: Path) -> Iterator[tuple[int, int | None, Any]]:
    """(index, line number, parsed object) for each non-blank line; an unparsable line becomes a string."""
    try:
        handle = path.open(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; check the path") from None
    with handle:
        index = 0
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value: Any = json.loads(line)
            except json.JSONDecodeError as error:
                value = _Unparsable(str(error))
            yield index, number, value
            index += 1


class _Unparsable(str):
    """A JSONL line that is not JSON; the record builder reports it."""


# ---------------------------------------------------------------- HR-Bench

_HR_COLUMNS = ("index", "question", "answer", "image")
_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)
_ROW_PROBLEM = "\x00problem"  # key under which a row reader passes a malformed row's problem
_REFERENCE_MAX = 64  # VLMEvalKit-style tables write a repeated image as the index of its first row


def iter_hrbench(path: Path, cache_dir: Path | None = None) -> Iterator[Record]:
    """HR-Bench 4K/8K (DreamMr/HR-Bench): `hr_bench_{4k,8k}.tsv` or `.parquet`, read row by row.

    Columns, read by header name in any order (order and quoting unconfirmed): index,
    question, answer (A-D; the option's text is also accepted), category (single|cross),
    A, B, C, D, cycle_category (0-3), image (base64 JPEG; parquet may also hold raw bytes or
    a {"bytes": ...} struct; a short value naming another row's index reuses its image).

    Images: each distinct image is decoded once and written, byte for byte, to
    `<cache_dir>/hrbench/<sha256>.jpg` (default cache: $MINI_O3_CACHE or ~/.cache/mini-o3);
    the Sample holds that path. Only one row (parquet: one small batch) is in memory at a
    time, so 800 rows of 8K images never sit in RAM, and a second load finds the files and
    decodes nothing. Rotations of one question share `meta["group"]` for per-cycle scoring.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found; check the path")
    images = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "hrbench"
    bench = _hrbench_name(path)
    rows = _parquet_rows(path) if path.suffix.lower() == ".parquet" else _tsv_rows(path)
    return _hrbench_records(path, rows, images, bench)


def _hrbench_name(path: Path) -> str:
    match = re.search(r"hr_?bench_?(\d+k)", path.name, re.IGNORECASE)
    return f"hr_bench_{match.group(1).lower()}" if match else path.stem


def _hrbench_records(path: Path, rows: Iterator[tuple[int, int | None, dict[str, Any]]], images: Path, bench: str) -> Iterator[Record]:
    ids = _Ids()
    image_of_index: dict[str, Path] = {}
    for position, line, row in rows:
        record_id = _record_id(row.get("index"))
        try:
            if _ROW_PROBLEM in row:
                raise row[_ROW_PROBLEM]
            if record_id is None:
                raise RecordProblem("the 'index' cell is empty", "give every row an index")
            question = _text_field(row, "question", "give the question in the 'question' column")
            options = {letter: str(row[letter]).strip() for letter in "ABCDEFGH" if _cell(row.get(letter))}
            if len(options) < 2:
                raise RecordProblem("fewer than two option columns (A, B, C, D) are filled", "fill the option columns")
            answer = answer_letter(row.get("answer"), options)
            image = _hrbench_image(row.get("image"), image_of_index, images)
            category = str(row["category"]).strip() if _cell(row.get("category")) else ""
            cycle = _cycle(row.get("cycle_category"))
            ids.claim(record_id, position)
            image_of_index[record_id] = image
            group = f"{bench}:{image.stem[:16]}:{hashlib.sha1(question.strip().encode()).hexdigest()[:10]}"
            yield Sample(
                id=record_id,
                image=image,
                question=multiple_choice_question(question, options),
                answer=answer,
                options=options,
                source="hrbench",
                split=f"{bench}/{category}" if category else bench,
                category=category,
                meta={"cycle_category": cycle, "group": group, "raw_question": question.strip()},
            )
        except RecordProblem as problem:
            yield BadRecord(path, position, record_id, problem.reason, problem.fix, line)


def _cell(value: Any) -> bool:
    if value is None or (isinstance(value, float) and value != value):
        return False
    return bool(str(value).strip())


def _cycle(value: Any) -> int | None:
    if not _cell(value):
        return None
    try:
        return int(float(str(value).strip()))
    except ValueError:
        raise RecordProblem(f"cycle_category is {_clip(value)}, expected 0-3", "give cycle_category as a number") from None


def _hrbench_image(value: Any, image_of_index: dict[str, Path], images: Path) -> Path:
    fix = "the 'image' column must hold a base64 JPEG (re-download the file if it is truncated)"
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= _REFERENCE_MAX:
            if text in image_of_index:
                return image_of_index[text]
            raise RecordProblem(f"the image cell {text!r} is neither base64 nor the index of an earlier row", fix)
        key = hashlib.sha256(text.encode("ascii", "replace")).hexdigest()
        return _cached(images, key, lambda: _b64decode(text, fix), fix)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if _image_suffix(raw) is None:  # a binary column holding base64 text
            return _hrbench_image(raw.decode("ascii", "replace"), image_of_index, images)
        return _cached(images, hashlib.sha256(raw).hexdigest(), lambda: raw, fix)
    raise RecordProblem(f"the image cell is {'empty' if not _cell(value) else type(value).__name__}", fix)


def _b64decode(text: str, fix: str) -> bytes:
    try:
        return base64.b64decode(text)
    except (binascii.Error, ValueError) as error:
        raise RecordProblem(f"the image cell is not valid base64 ({error})", fix) from None


def _image_suffix(data: bytes) -> str | None:
    for magic, suffix in _IMAGE_MAGIC:
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return None


def _cached(folder: Path, key: str, decode: Any, fix: str) -> Path:
    """The cache file for `key`, decoded and written (atomically) only when absent."""
    for suffix in (".jpg", ".png", ".webp", ".gif", ".bmp", ".tif"):
        existing = folder / f"{key}{suffix}"
        if existing.is_file():
            return existing
    data = decode()
    suffix = _image_suffix(data)
    if suffix is None:
        raise RecordProblem("the image cell decodes to bytes that are not a JPEG, PNG, WebP, GIF, BMP or TIFF image", fix)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}{suffix}"
    try:
        write_atomic(target, data)
    except OSError as error:
        raise DatasetError(f"cannot write the image cache {target}: {error}; set ${CACHE_ENV} to a writable folder") from None
    return target


def _tsv_rows(path: Path) -> Iterator[tuple[int, int | None, dict[str, Any]]]:
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # one cell holds a whole 8K JPEG
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}: the file is empty; expected a header row with {', '.join(_HR_COLUMNS)}")
            names = _column_names(path, header)
            position = 0
            while True:
                line = reader.line_num + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as error:
                    raise DatasetError(f"{path}: line {line}: not a readable TSV row ({error})") from None
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(header):
                    problem = RecordProblem(
                        f"the row has {len(cells)} cells but the header has {len(header)}",
                        "the file may be truncated or a cell holds an unquoted tab; re-download it",
                    )
                    yield position, line, {"index": cells[names["index"]] if len(cells) > names["index"] else None, _ROW_PROBLEM: problem}
                else:
                    yield position, line, {key: cells[column] for key, column in names.items()}
                position += 1
    finally:
        csv.field_size_limit(previous_limit)


def _column_names(path: Path, header: list[str]) -> dict[str, int]:
    """Column positions keyed by canonical name: the HR-Bench names matched case-insensitively."""
    canonical = {"index", "question", "answer", "category", "cycle_category", "image"} | set("ABCDEFGH")
    names: dict[str, int] = {}
    for position, name in enumerate(header):
        key = name.strip()
        key = key if key in canonical else key.lower()
        if key in canonical and key not in names:
            names[key] = position
    missing = [name for name in (*_HR_COLUMNS, "A", "B") if name not in names]
    if missing:
        raise DatasetError(
            f"{path}: missing HR-Bench column(s) {', '.join(missing)}; found {', '.join(header[:20])}. "
            "Is this an HR-Bench file (hr_bench_4k.tsv / hr_bench_8k.tsv)?"
        )
    return names


def _parquet_rows(path: Path) -> Iterator[tuple[int, int | None, dict[str, Any]]]:
    import pyarrow.parquet as pq  # a declared dependency, imported only where parquet is read

    try:
        table = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a bad file
        raise DatasetError(f"{path}: not a readable parquet file ({error})") from None
    names = _column_names(path, list(table.schema_arrow.names))
    header = list(table.schema_arrow.names)
    position = 0
    # A few rows per batch: an 8K image is several MB, so a batch stays small.
    for batch in table.iter_batches(batch_size=4, columns=[header[i] for i in names.values()]):
        for row in batch.to_pylist():
            yield position, None, {key: row[header[column]] for key, column in names.items()}
            position += 1


# ---------------------------------------------------------------- MME-RealWorld


def iter_mme_realworld(path: Path, image_dir: Path | None = None, source: str = "mme-realworld") -> Iterator[Record]:
    """MME-RealWorld (yifanzhang114/MME-RealWorld and -Lite): a JSON array of records.

    Keys (any order; matched ignoring case, spaces and underscores, so `Question type` and
    `Question Type` both work): Question_id, Image (relative path), Text, Answer choices
    (["(A) ..", .. "(E) .."]), Ground truth (a letter), Question Type, Category, Subtask,
    Task, optional Dataset. Images are joined to `image_dir` (default: the JSON's folder);
    when absent there, `imgs/<Image>` and `imgs/<file name>` are tried (the Lite layout,
    unconfirmed). The question is rebuilt in the V* form with every choice, E included.
    """
    path = Path(path)
    base = Path(image_dir) if image_dir is not None else path.parent
    name = source.replace("-", "_")
    fix = f"check that the image archives are extracted under {base} (or pass the image folder as mme-realworld:FILE:IMAGE_DIR)"

    def build(raw: dict[str, Any], index: int) -> Sample:
        record = {_mme_key(key): value for key, value in raw.items()}
        sample_id = _record_id(record.get("question id"))
        if sample_id is None:
            raise RecordProblem("field 'Question_id' is missing", "give every record a Question_id")
        text = _text_field(record, "text", "give the question as 'Text'")
        options = _mme_options(record.get("answer choices"))
        answer = answer_letter(record.get("ground truth"), options)
        image_name = record.get("image")
        primary = safe_image_path(base, image_name)
        relative = primary.relative_to(Path(os.path.normpath(os.path.abspath(base))))
        fallbacks = [safe_image_path(base, str("imgs" / relative)), safe_image_path(base, "imgs/" + primary.name)]
        image = existing_image(base, image_name, fix, fallbacks)
        task = str(record.get("task") or "").strip()
        return Sample(
            id=sample_id,
            image=image,
            question=multiple_choice_question(text, options),
            answer=answer,
            options=options,
            source=source,
            split=f"{name}/{task.lower()}" if task else name,
            category=str(record.get("category") or "").strip(),
            meta={
                "task": task,
                "subtask": str(record.get("subtask") or "").strip(),
                "question_type": str(record.get("question type") or "").strip(),
                "dataset": str(record.get("dataset") or "").strip(),
                "raw_question": text.strip(),
            },
        )

    return build_records(path, ((i, None, r) for i, r in enumerate(_json_array(path, "MME-RealWorld"))), build)


def _mme_key(key: str) -> str:
    return re.sub(r"[\s_]+", " ", str(key).strip().lower())


def _mme_options(choices: Any) -> dict[str, str]:
    fix = "give 'Answer choices' as a list like [\"(A) ..\", \"(B) ..\"]"
    if isinstance(choices, str):
        choices = [line for line in choices.splitlines() if line.strip()]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise RecordProblem(f"field 'Answer choices' is {_clip(choices)}, expected a list of at least two strings", fix)
    parsed = [item for item in (parse_choice(choice) for choice in choices) if item is not None]
    if len(parsed) == len(choices):
        options = dict(parsed)
        if len(options) == len(parsed):
            return options
        raise RecordProblem(f"'Answer choices' repeats a letter: {', '.join(letter for letter, _ in parsed)}", fix)
    # Choices written without letters: letter them in order.
    return {chr(ord("A") + i): choice.strip() for i, choice in enumerate(choices)}


def find_mme_lite_json(root: Path) -> Path | None:
    """`MME-RealWorld-Lite.json` in `root` or `root/data`, if there."""
    for candidate in (root / "data" / "MME-RealWorld-Lite.json", root / "MME-RealWorld-Lite.json"):
        if candidate.is_file():
            return candidate
    return None


def iter_mme_realworld_lite(root: Path) -> Iterator[Record]:
    """MME-RealWorld-Lite: `data/MME-RealWorld-Lite.json` (or the JSON itself), images under `data/imgs/`."""
    root = Path(root)
    path = root if root.is_file() else find_mme_lite_json(root)
    if path is None:
        raise DatasetError(f"{root}: no data/MME-RealWorld-Lite.json or MME-RealWorld-Lite.json; extract data.zip from the Lite release there")
    return iter_mme_realworld(path, path.parent, source="mme-realworld-lite")


# ---------------------------------------------------------------- generic JSON / JSONL


def iter_generic(path: Path, jsonl: bool | None = None) -> Iterator[Record]:
    """Our generic form: a JSON array or JSONL of {id, image, question, answer[, options, category]}.

    `image` is relative to the file's folder. `options` is a dict letter -> text or a list
    (lettered A, B, ..); the answer may be the letter or the option's text. A question that
    does not list its options as "(A) .." lines gets them appended in the V* form. Optional
    `split`, `source`, `boxes` ([[x0, y0, x1, y1], ..] in pixels) and `meta` pass through.
    """
    path = Path(path)
    jsonl = path.suffix.lower() == ".jsonl" if jsonl is None else jsonl
    base = path.parent
    fix = f"image paths are relative to {base}; check the path"

    def build(record: dict[str, Any], index: int) -> Sample:
        sample_id = _record_id(record.get("id"))
        if sample_id is None:
            raise RecordProblem("field 'id' is missing", "give every record an 'id'")
        question = _text_field(record, "question", "give the question as 'question'")
        answer = _text_field(record, "answer", "give the answer as 'answer'").strip()
        options = _generic_options(record.get("options"))
        if options:
            answer = answer_letter(answer, options)
            if not all(f"({letter})" in question for letter in options):
                question = multiple_choice_question(question, options)
        meta = record.get("meta", {})
        if not isinstance(meta, dict):
            raise RecordProblem(f"field 'meta' is {_clip(meta)}, expected an object", "give 'meta' as a JSON object")
        return Sample(
            id=sample_id,
            image=existing_image(base, record.get("image"), fix),
            question=question.strip(),
            answer=answer,
            options=options,
            source=str(record.get("source") or path.stem),
            split=str(record.get("split") or ""),
            category=str(record.get("category") or ""),
            boxes=_generic_boxes(record.get("boxes")),
            meta=meta,
        )

    if jsonl:
        return build_records(path, _jsonl_items(path), build)
    return build_records(path, ((i, None, r) for i, r in enumerate(_json_array(path, "generic"))), build)


def _generic_options(raw: Any) -> dict[str, str]:
    fix = "give 'options' as {\"A\": \"..\", \"B\": \"..\"} or a list of texts"
    if raw is None or raw == {} or raw == []:
        return {}
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw) and len(raw) <= 26:
        return {chr(ord("A") + i): item.strip() for i, item in enumerate(raw)}
    if isinstance(raw, dict) and all(re.fullmatch(r"[A-Z]", str(k)) and isinstance(v, str) for k, v in raw.items()):
        return {str(k): v.strip() for k, v in raw.items()}
    raise RecordProblem(f"field 'options' is {_clip(raw)}", fix)


def _generic_boxes(raw: Any) -> list[tuple[float, float, float, float]]:
    if raw is None:
        return []
    fix = "give 'boxes' as a list of [x0, y0, x1, y1] in pixels"
    if not isinstance(raw, list):
        raise RecordProblem(f"field 'boxes' is {_clip(raw)}", fix)
    boxes = []
    for box in raw:
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)) or box[2] < box[0] or box[3] < box[1]:
            raise RecordProblem(f"field 'boxes' holds {_clip(box)}", fix)
        boxes.append((float(box[0]), float(box[1]), float(box[2]), float(box[3])))
    return boxes
