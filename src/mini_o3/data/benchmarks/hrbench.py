"""HR-Bench 4K/8K (DreamMr/HR-Bench): TSV and parquet rows, base64 images decoded once into an on-disk cache."""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mini_o3.data.benchmarks.common import (
    CACHE_ENV,
    BadRecord,
    DatasetError,
    Record,
    RecordProblem,
    _clip,
    _Ids,
    _record_id,
    _text_field,
    answer_letter,
    default_cache_dir,
    multiple_choice_question,
)
from mini_o3.agent.sample import Sample
from mini_o3.jsonl import safe_text, write_atomic

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
        # surrogateescape: a byte that is not UTF-8 becomes a lone surrogate, found below, so it
        # is the problem of its own row (a bad record) and not of the whole file.
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
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
                bad_text = next((cell for cell in cells if not _is_utf8(cell)), None)
                if bad_text is not None:
                    byte = bad_text.encode("utf-8", "surrogateescape")[_first_bad(bad_text)]
                    problem = RecordProblem(f"the row is not UTF-8 text (byte 0x{byte:02x})", "save the file as UTF-8, or fix or remove this row")
                    yield position, line, {"index": safe_text(cells[names["index"]]) if len(cells) > names["index"] else None, _ROW_PROBLEM: problem}
                elif len(cells) != len(header):
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


def _is_utf8(cell: str) -> bool:
    return cell.isascii() or not any("\udc80" <= char <= "\udcff" for char in cell)


def _first_bad(cell: str) -> int:
    """The byte offset of the first undecodable byte in a surrogateescape-decoded cell."""
    for position, char in enumerate(cell):
        if "\udc80" <= char <= "\udcff":
            return len(cell[:position].encode("utf-8", "surrogateescape"))
    return 0


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
