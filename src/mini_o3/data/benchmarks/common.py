"""Errors, the record types and the helpers every benchmark reader shares.

Also the JSON and JSONL readers used by more than one format (`_json_array`, `_jsonl_items`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mini_o3.agent.sample import Sample
from mini_o3.jsonl import safe_text

from mini_o3.agent.protocol import MULTIPLE_CHOICE_INSTRUCTION  # noqa: E402  (re-exported)
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
    if path.is_dir():
        raise RecordProblem(f"the image path {path} is a folder, not an image file", "name the image file itself")
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
                raise RecordProblem(record.reason, record.fix)
            if not isinstance(record, dict):
                raise RecordProblem(f"expected a JSON object, found {type(record).__name__}", "fix or remove this record")
            sample = safe_sample(build(record, index))
            record_id = sample.id
            ids.claim(sample.id, index)
            yield sample
        except RecordProblem as problem:
            if record_id is None and isinstance(record, dict):
                record_id = _record_id(_first_present(record, _ID_KEYS))
            record_id = None if record_id is None else safe_text(record_id)
            yield BadRecord(path, index, record_id, safe_text(problem.reason), safe_text(problem.fix), line)


def safe_sample(sample: Sample) -> Sample:
    """`sample` with its text made safe to write (lone surrogates, valid in JSON files, become U+FFFD)."""
    return replace(
        sample,
        id=safe_text(sample.id),
        question=safe_text(sample.question),
        answer=safe_text(sample.answer),
        options=_safe_strings(sample.options),
        source=safe_text(sample.source),
        split=safe_text(sample.split),
        category=safe_text(sample.category),
        meta=_safe_strings(sample.meta),
    )


def _safe_strings(value: Any) -> Any:
    """`value` with every string in it (keys included) made safe; other values untouched."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {_safe_strings(key): _safe_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_safe_strings(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_safe_strings(item) for item in value)
    return value


_ID_KEYS = ("id", "doc_id", "question_id", "Question_id", "index")


def _first_present(record: dict[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        if key in record:
            return record[key]
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _jsonl_items(path: Path) -> Iterator[tuple[int, int | None, Any]]:
    """(index, line number, parsed object) for each non-blank line; a line that is not UTF-8 JSON becomes an _Unparsable.

    Lines are read as bytes and decoded one by one, so a bad byte is the problem of its own
    line (a bad record, skippable) and not of the whole file.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; check the path") from None
    with handle:
        index = 0
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if not raw.strip():
                continue
            yield index, number, parse_json_line(raw)
            index += 1


_BOM = b"\xef\xbb\xbf"


def parse_json_line(raw: bytes) -> Any:
    """The JSON value of one line of bytes, or an _Unparsable saying why not (not UTF-8, not JSON)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = raw[error.start : error.start + 1].hex()
        return _Unparsable(
            f"the line is not UTF-8 text (byte 0x{byte} at column {error.start + 1})",
            "save the file as UTF-8, or fix or remove this line",
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return _Unparsable(f"the line is not valid JSON ({error})", "fix or remove this line")
    except RecursionError:
        return _Unparsable("the line nests JSON too deeply to read", "fix or remove this line")


class _Unparsable:
    """A JSONL line that is not JSON (or not UTF-8); the record builder reports it."""

    def __init__(self, reason: str, fix: str) -> None:
        self.reason = reason
        self.fix = fix
