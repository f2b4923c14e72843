"""Append-only JSONL files: torn tails cut and skipped, bad middles named, atomic whole-file writes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from mini_o3.jsonl import JsonlAppender, JsonlError, iter_numbered, iter_records, open_atomic, repair_tail, write_atomic, write_json


def test_repair_tail_cuts_only_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    assert repair_tail(path) == 0 and not path.exists()
    path.write_text("")
    assert repair_tail(path) == 0
    path.write_text('{"a": 1}\n{"b": ')
    assert repair_tail(path) == 6 and path.read_text() == '{"a": 1}\n'
    assert repair_tail(path) == 0
    path.write_text("x" * 200_000)  # longer than one read chunk, no newline at all
    assert repair_tail(path) == 200_000 and path.read_text() == ""
    path.write_text('{"a": 1}\n{"b": 2}')  # whole, only the newline is missing: kept
    assert repair_tail(path) == 0 and path.read_text() == '{"a": 1}\n{"b": 2}\n'


def test_repair_tail_cuts_a_line_torn_inside_a_utf8_character(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    line = json.dumps({"text": "é"}, ensure_ascii=False).encode("utf-8")
    path.write_bytes(b'{"a": 1}\n' + line[: line.index(b"\xc3") + 1])
    assert list(iter_records(path)) == [{"a": 1}]
    assert repair_tail(path) > 0 and path.read_bytes() == b'{"a": 1}\n'


def test_iter_records_skips_blank_lines_and_a_torn_tail_but_names_a_bad_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\n{"c": ')
    assert list(iter_records(path)) == [{"a": 1}, {"b": 2}]
    assert [number for number, _ in iter_numbered(path)] == [1, 3]
    path.write_text('{"a": 1}\n{"b": \n{"c": 3}\n')
    with pytest.raises(JsonlError, match=r"x.jsonl:2: not a JSON record"):
        list(iter_records(path))
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: .*list, not an object"):
        list(iter_records(path))


def test_appender_cuts_a_torn_tail_before_its_first_record(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "x.jsonl"
    path.parent.mkdir()
    path.write_text('{"a": 1}\n{"b": ')
    with JsonlAppender(path) as appender:
        appender.append({"c": "é"})
        assert appender.repaired == 6
        assert path.read_text(encoding="utf-8") == '{"a": 1}\n{"c": "é"}\n'  # flushed at once
    with JsonlAppender(path) as appender:  # a second rerun: nothing to repair, appends go on
        appender.append({"d": 4})
    assert list(iter_records(path)) == [{"a": 1}, {"c": "é"}, {"d": 4}]


def test_appender_is_safe_across_threads(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    appender = JsonlAppender(path)

    def write(worker: int) -> None:
        for index in range(200):
            appender.append({"worker": worker, "index": index, "pad": "x" * 5000})

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    appender.close()
    records = list(iter_records(path))
    assert len(records) == 800 and {(r["worker"], r["index"]) for r in records} == {(w, i) for w in range(4) for i in range(200)}


def test_two_crashes_mid_line_and_reruns_leave_a_file_that_reads_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    kept: list[dict] = []
    for rerun in range(3):
        with JsonlAppender(path) as appender:
            for index in range(3):
                record = {"rerun": rerun, "index": index, "pad": "é" * 50}
                appender.append(record)
                kept.append(record)
        size = path.stat().st_size
        with path.open("r+b") as handle:  # the crash: the last record only half written
            handle.truncate(size - 40)
        kept.pop()
        assert list(iter_records(path)) == kept
    assert repair_tail(path) > 0 and list(iter_records(path)) == kept


def test_atomic_writes_replace_whole_files_and_leave_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_json(path, {"path": tmp_path, "text": "é"}, indent=1)
    assert json.loads(path.read_text(encoding="utf-8")) == {"path": str(tmp_path), "text": "é"}
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_atomic(path, "a\nb\n")
    assert path.read_bytes() == b"a\nb\n"
    with pytest.raises(RuntimeError):
        with open_atomic(path) as handle:
            handle.write("half")
            raise RuntimeError("the writer failed")
    assert path.read_bytes() == b"a\nb\n"  # the old file stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
