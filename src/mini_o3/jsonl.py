"""Append-only JSONL files that survive a crash mid-write, and whole files replaced atomically.

A process killed while appending leaves at most one torn last line: bytes with no newline
after them. Readers skip it (`iter_records`), and the writer cuts it before its first append
(`JsonlAppender` calls `repair_tail` when it opens the file), so every record starts on a
fresh line and a torn line can never end up in the middle of a file, where it would be an
error. A last line that lacks only its newline (the record is whole) is kept and given one.

Files written in one piece (configs, metrics, a report page, rewritten results) go to a
temporary file beside their path and are renamed over it (`write_atomic`, `write_json`,
`open_atomic`), so a reader sees the old file or the new one, never half of one. Both
protect against the process dying, not the machine losing power (nothing is fsynced).

Text that enters from outside (data files, server replies, the command line) is made writable
once, where it enters, with `safe_text` (lone UTF-16 surrogates, which JSON allows and UTF-8
cannot encode, become U+FFFD); `json_safe` does the same for a whole value and also drops
non-finite floats, for the last-resort paths that must save whatever they hold.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 16
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")
"""The names `open_atomic` gives its temporaries: '.NAME.<32 hex digits>.tmp'."""


def safe_text(text: str) -> str:
    """`text` with every lone UTF-16 surrogate replaced by U+FFFD, so it can be written as UTF-8."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A high and low surrogate side by side are one character written in two halves: join them.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def json_safe(value: Any) -> Any:
    """`value` as plain JSON data that always encodes: safe text, finite numbers (others None), lists for tuples, str() for the rest."""
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, str):
        return safe_text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 1024 else None  # json.dumps refuses ints over 4,300 digits
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {safe_text(str(key)): json_safe(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: json_safe(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return safe_text(str(value))


def encode_line(record: dict[str, Any]) -> bytes:
    """One JSONL line of `record` in UTF-8, strictly: a lone surrogate or a non-finite float raises ValueError."""
    return (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


class JsonlError(ValueError):
    """A line in the middle of a JSONL file that is not a JSON object (so not a torn last line)."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: not a JSON record ({problem})")
        self.path = path
        self.line = line
        self.problem = problem


def repair_tail(path: str | Path) -> int:
    """Cut a torn last line off a JSONL file so appends start on a fresh line; returns the bytes cut.

    A last line that is a whole JSON object missing only its newline gets the newline instead
    (0 bytes cut). A missing or empty file is left alone.
    """
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep = _last_line_start(handle, size)
        handle.seek(keep)
        if _record(handle.read(size - keep)) is not None:
            handle.seek(size)
            handle.write(b"\n")
            return 0
        handle.truncate(keep)
        return size - keep


def _last_line_start(handle: IO[bytes], size: int) -> int:
    """The offset just after the last newline of the file (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        handle.seek(start)
        at = handle.read(end - start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def _record(line: bytes) -> dict[str, Any] | None:
    """The JSON object a line holds, or None when it holds anything else."""
    try:
        value = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError (a line cut inside a character)
        return None
    return value if isinstance(value, dict) else None


def iter_numbered(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, record) for every JSON object line of a file, skipping blank lines and a torn last line.

    Raises JsonlError (a ValueError naming file:line) for a bad line that is not the last.
    """
    path = Path(path)
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = _record(line)
            if record is None:
                if not line.endswith(b"\n"):
                    return  # only the last line can lack its newline: torn by a crash mid-write
                raise JsonlError(path, number, _problem(line))
            yield number, record


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of a JSONL file, in order; a torn last line is skipped, a bad line elsewhere raises JsonlError."""
    for _, record in iter_numbered(path):
        yield record


def _problem(line: bytes) -> str:
    try:
        value = json.loads(line)
    except ValueError as error:
        return str(error)
    return f"a JSON {type(value).__name__}, not an object"


class JsonlAppender:
    """Appends records to a JSONL file, one line each, flushed at once; safe to share between threads.

    The file is opened (and its torn tail, if any, cut) on the first append, and again on the
    first append after `close`. `repaired` counts the bytes cut so far.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.repaired = 0
        self._handle: IO[bytes] | None = None
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line and flush it."""
        self.append_line((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def append_line(self, line: bytes) -> None:
        """Write one encoded line (ending in a newline) and flush it."""
        with self._lock:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.repaired += repair_tail(self.path)
                self._handle = self.path.open("ab")
            self._handle.write(line)
            self._handle.flush()

    def close(self) -> None:
        """Close the file (a later append opens it again)."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def open_atomic(path: str | Path, binary: bool = False) -> Iterator[IO[Any]]:
    """A handle on a temporary file beside `path` that replaces `path` when the block ends without an error."""
    path = Path(path)
    # A random name: processes (on any machine sharing the folder) and threads writing the same path never share a temporary.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # newline="": text is written as given, so a file has the same bytes on every platform.
        with temporary.open("wb") if binary else temporary.open("w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries `open_atomic` left in `folder` when a process was killed mid-write; returns them.

    Only for folders one job owns: a temporary of a write still running elsewhere would go too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [path for path in folder.iterdir() if _TEMPORARY.fullmatch(path.name) and path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace `path` with `data` (text is written as UTF-8) so that no reader ever sees half of it."""
    with open_atomic(path, binary=isinstance(data, bytes)) as handle:
        handle.write(data)


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> None:
    """Replace `path` with `value` as JSON (non-JSON values such as paths written as strings), atomically."""
    write_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False, default=str) + "\n")


__all__ = [
    "JsonlAppender",
    "JsonlError",
    "encode_line",
    "iter_numbered",
    "json_safe",
    "iter_records",
    "open_atomic",
    "remove_stale_temporaries",
    "repair_tail",
    "safe_text",
    "write_atomic",
    "write_json",
]
