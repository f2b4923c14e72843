"""Benchmark loaders on tiny fixtures written in each benchmark's published format."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mini_o3.data.benchmarks import MULTIPLE_CHOICE_INSTRUCTION, DatasetError
from mini_o3.data.loading import LoadResult, load_dataset, parse_spec
from mini_o3.agent.sample import Sample
from mini_o3.agent.images import open_image


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINI_O3_CACHE", str(cache))
    return cache


def jpeg(path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")
    return path


def jpeg_base64(size: tuple[int, int], color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------- VisualProbe


def visualprobe(root: Path) -> Path:
    """`VisualProbe_Hard/val.json` with images under `data/`, as the Mini-o3 release ships it."""
    records = [
        {
            "images": [f"data/visual_probe_hard_{i}.jpg"],
            "doc_id": i,
            "problem": f"<image>\n{question}",
            "solution": answer,
            "data_source": "visual_probe_hard",
        }
        for i, (question, answer) in enumerate(
            [("What is the color of the umbrella near the fountain?", "Blue."), ("What number is on the bus?", "42")]
        )
    ]
    for i in range(len(records)):
        jpeg(root / "data" / f"visual_probe_hard_{i}.jpg")
    path = root / "val.json"
    path.write_text(json.dumps(records, indent=4))
    return path


def test_visualprobe_fields(tmp_path: Path) -> None:
    path = visualprobe(tmp_path / "VisualProbe_Hard")
    result = load_dataset(f"visualprobe:{path}")
    assert result.kind == "visualprobe" and result.skipped == 0 and len(result) == 2
    first = result.samples[0]
    assert first.id == "0"
    assert first.question == "What is the color of the umbrella near the fountain?"
    assert first.answer == "Blue."
    assert first.image == (tmp_path / "VisualProbe_Hard" / "data" / "visual_probe_hard_0.jpg")
    assert (first.source, first.split, first.options, first.boxes) == ("visualprobe", "visual_probe_hard", {}, [])
    assert not first.is_multiple_choice
    assert open_image(first.image).size == (64, 48)


def test_visualprobe_separate_image_dir(tmp_path: Path) -> None:
    path = visualprobe(tmp_path / "images")
    moved = tmp_path / "meta" / "val.json"
    moved.parent.mkdir()
    path.rename(moved)
    assert len(load_dataset(f"visualprobe:{moved}:{tmp_path / 'images'}")) == 2
    with pytest.raises(DatasetError, match="image not found"):
        load_dataset(f"visualprobe:{moved}")


def test_missing_field_names_field_and_record(tmp_path: Path) -> None:
    path = visualprobe(tmp_path)
    records = json.loads(path.read_text())
    del records[1]["solution"]
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetError) as error:
        load_dataset(f"visualprobe:{path}")
    message = str(error.value)
    assert str(path) in message and "record 1" in message and "'1'" in message and "'solution'" in message


# ---------------------------------------------------------------- V* Bench


def vstar(root: Path) -> Path:
    """`test_questions.jsonl` plus images and their `<stem>.json` annotations, as craigwu/vstar_bench ships them."""
    lines = [
        {
            "image": "direct_attributes/sa_4690.jpg",
            "text": "What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\n"
            "Answer with the option's letter from the given choices directly.",
            "category": "direct_attributes",
            "question_id": "0",
            "label": "A",
        },
        {
            "image": "relative_position/sa_1234.jpg",
            "text": "Is the cup on the left or right side of the laptop?\n(A) left\n(B) right\n"
            "Answer with the option's letter from the given choices directly.",
            "category": "relative_position",
            "question_id": "115",
            "label": "A",
        },
    ]
    jpeg(root / "direct_attributes" / "sa_4690.jpg", (120, 90))
    (root / "direct_attributes" / "sa_4690.json").write_text(
        json.dumps({"target_object": ["glove"], "bbox": [[10, 20, 30, 40]], "question": "What is the material of the glove?",
                    "options": ["rubber", "cotton", "kevlar", "leather"]})
    )
    jpeg(root / "relative_position" / "sa_1234.jpg", (120, 90))
    (root / "relative_position" / "sa_1234.json").write_text(
        json.dumps({"target_object": ["cup", "laptop"], "bbox": [[1, 2, 3, 4], [50, 60, 10, 5]],
                    "question": "Is the cup on the left or right side of the laptop?", "options": ["left", "right"]})
    )
    (root / "test_questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_vstar_fields(tmp_path: Path) -> None:
    root = vstar(tmp_path / "vstar_bench")
    result = load_dataset(f"vstar:{root}")
    attribute, position = result.samples
    assert attribute.id == "0" and attribute.answer == "A"
    assert attribute.options == {"A": "rubber", "B": "cotton", "C": "kevlar", "D": "leather"}
    assert attribute.question.startswith("What is the material of the glove?\n(A) rubber")
    assert attribute.question.endswith(MULTIPLE_CHOICE_INSTRUCTION)
    assert attribute.boxes == [(10.0, 20.0, 40.0, 60.0)]
    assert (attribute.source, attribute.split, attribute.category) == ("vstar", "direct_attributes", "direct_attributes")
    assert attribute.meta["target_object"] == ["glove"]
    assert position.options == {"A": "left", "B": "right"}
    assert position.boxes == [(1.0, 2.0, 4.0, 6.0), (50.0, 60.0, 60.0, 65.0)]
    assert position.split == "relative_position"


# ---------------------------------------------------------------- HR-Bench

HR_HEADER = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]


def hrbench_rows() -> list[dict[str, object]]:
    """Two questions, each in two of its four rotations (cycle_category 0 and 1)."""
    first, second = jpeg_base64((160, 90), (10, 120, 10)), jpeg_base64((90, 160), (10, 10, 120))
    question = 'What is written on the "EXIT" sign?'
    return [
        {"index": 0, "question": question, "answer": "A", "category": "single", "A": "EXIT", "B": "EXAM", "C": "EDIT", "D": "EXILE", "cycle_category": 0, "image": first},
        {"index": 1, "question": question, "answer": "D", "category": "single", "A": "EXAM", "B": "EDIT", "C": "EXILE", "D": "EXIT", "cycle_category": 1, "image": first},
        {"index": 2, "question": "How many boats are there?", "answer": "B", "category": "cross", "A": "2", "B": "3", "C": "4", "D": "5", "cycle_category": 0, "image": second},
        {"index": 3, "question": "How many boats are there?", "answer": "A", "category": "cross", "A": "3", "B": "4", "C": "5", "D": "2", "cycle_category": 1, "image": second},
    ]


def write_tsv(path: Path, rows: list[dict[str, object]], header: list[str] = HR_HEADER) -> Path:
    """A tab-separated file with minimal quoting, as pandas' to_csv(sep='\\t', index=False) writes it."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([row[name] for name in header])
    return path


def check_hrbench(result: LoadResult, cache: Path) -> None:
    assert result.kind == "hrbench" and len(result) == 4
    first, rotated, cross, _ = result.samples
    assert first.id == "0" and first.answer == "A" and rotated.answer == "D"
    assert first.options == {"A": "EXIT", "B": "EXAM", "C": "EDIT", "D": "EXILE"}
    assert first.question == (
        'What is written on the "EXIT" sign?\n(A) EXIT\n(B) EXAM\n(C) EDIT\n(D) EXILE\n' + MULTIPLE_CHOICE_INSTRUCTION
    )
    assert (first.source, first.split, first.category) == ("hrbench", "hr_bench_4k/single", "single")
    assert cross.split == "hr_bench_4k/cross"
    assert [s.meta["cycle_category"] for s in result.samples] == [0, 1, 0, 1]
    assert first.meta["group"] == rotated.meta["group"] != cross.meta["group"]
    assert first.meta["raw_question"] == 'What is written on the "EXIT" sign?'
    # Each distinct image is decoded once into the cache, and open_image reads it.
    assert first.image == rotated.image and Path(first.image).parent == cache / "hrbench"
    assert len(list((cache / "hrbench").iterdir())) == 2
    assert open_image(first.image).size == (160, 90) and open_image(cross.image).size == (90, 160)


def test_hrbench_tsv(tmp_path: Path, _cache: Path) -> None:
    path = write_tsv(tmp_path / "hr_bench_4k.tsv", hrbench_rows())
    check_hrbench(load_dataset(f"hrbench:{path}"), _cache)
    # A second load finds the cached files and writes nothing new.
    check_hrbench(load_dataset(f"hrbench:{path}"), _cache)


def test_hrbench_parquet(tmp_path: Path, _cache: Path) -> None:
    rows = hrbench_rows()
    table = pa.Table.from_pylist(rows)
    assert table.column_names == HR_HEADER
    pq.write_table(table, tmp_path / "hr_bench_4k.parquet")
    check_hrbench(load_dataset(f"hrbench:{tmp_path / 'hr_bench_4k.parquet'}"), _cache)


def test_hrbench_variants_column_order_text_answer_and_image_reference(tmp_path: Path, _cache: Path) -> None:
    rows = hrbench_rows()
    rows[1]["answer"] = "EXIT"  # the option's text instead of its letter
    rows[1]["image"] = "0"  # VLMEvalKit-style: the index of the row holding the image
    header = ["image", "D", "C", "B", "A", "cycle_category", "category", "answer", "question", "index"]
    result = load_dataset(f"hrbench:{write_tsv(tmp_path / 'hr_bench_8k.tsv', rows, header)}")
    assert [s.answer for s in result.samples] == ["A", "D", "B", "A"]
    assert result.samples[0].image == result.samples[1].image
    assert result.samples[0].split == "hr_bench_8k/single"


def test_hrbench_limit_stops_reading(tmp_path: Path, _cache: Path) -> None:
    path = write_tsv(tmp_path / "hr_bench_4k.tsv", hrbench_rows())
    result = load_dataset(str(path), limit=1)
    assert len(result) == 1 and len(list((_cache / "hrbench").iterdir())) == 1


def test_hrbench_bad_rows(tmp_path: Path) -> None:
    rows = hrbench_rows()
    rows[1]["image"] = "bm90IGFuIGltYWdl" * 8  # base64 of text, not an image
    rows[2]["answer"] = "Z"
    path = write_tsv(tmp_path / "hr_bench_4k.tsv", rows)
    with pytest.raises(DatasetError, match=r"record 1 \(line 3\), id '1': .*not a JPEG"):
        load_dataset(f"hrbench:{path}")
    result = load_dataset(f"hrbench:{path}", skip_bad=True)
    assert [s.id for s in result.samples] == ["0", "3"] and result.skipped == 2
    assert "id '2'" in result.reasons[1] and "'Z'" in result.reasons[1]


def test_hrbench_missing_column(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "hr_bench_4k.tsv", hrbench_rows(), [n for n in HR_HEADER if n != "question"])
    with pytest.raises(DatasetError, match="missing HR-Bench column.*question"):
        load_dataset(f"hrbench:{path}")


# ---------------------------------------------------------------- MME-RealWorld

MME_RECORDS = [
    {
        "Question_id": "perception/diagram_and_table/0",
        "Image": "diagram_and_table/cons9.jpg",
        "Text": "What is the value in the second row of the table?",
        "Question Type": "Multiple Choice",
        "Answer choices": ["(A) 12", "(B) 15", "(C) 18", "(D) 21", "(E) The image does not feature the table."],
        "Ground truth": "B",
        "Category": "diagram_and_table",
        "Subtask": "Diagram and Table",
        "Task": "Perception",
    },
    {  # another key order, the lower-case "Question type" and a Dataset key
        "Task": "Reasoning",
        "Subtask": "Autonomous_Driving",
        "Category": "intention",
        "Ground truth": "(A)",
        "Answer choices": ["(A) Turn left", "(B) Go straight", "(C) Turn right", "(D) Stop", "(E) None of the above"],
        "Question type": "Multiple Choice",
        "Text": "What will the white car do next?",
        "Image": "autonomous_driving/nuscenes_17.jpg",
        "Dataset": "nuscenes",
        "Question_id": "reasoning/autonomous_driving/17",
    },
]


def test_mme_realworld(tmp_path: Path) -> None:
    jpeg(tmp_path / "diagram_and_table" / "cons9.jpg")
    jpeg(tmp_path / "autonomous_driving" / "nuscenes_17.jpg")
    path = tmp_path / "MME_RealWorld.json"
    path.write_text(json.dumps(MME_RECORDS, indent=2))
    table, driving = load_dataset(f"mme-realworld:{path}").samples
    assert table.id == "perception/diagram_and_table/0" and table.answer == "B"
    assert table.options["E"] == "The image does not feature the table."
    assert table.question == (
        "What is the value in the second row of the table?\n(A) 12\n(B) 15\n(C) 18\n(D) 21\n"
        "(E) The image does not feature the table.\n" + MULTIPLE_CHOICE_INSTRUCTION
    )
    assert (table.source, table.split, table.category) == ("mme-realworld", "mme_realworld/perception", "diagram_and_table")
    assert table.meta["task"] == "Perception" and table.meta["subtask"] == "Diagram and Table"
    assert driving.answer == "A" and driving.split == "mme_realworld/reasoning"
    assert driving.meta["question_type"] == "Multiple Choice" and driving.meta["dataset"] == "nuscenes"


def test_mme_realworld_lite(tmp_path: Path) -> None:
    root = tmp_path / "MME-RealWorld-Lite"
    data = root / "data"
    jpeg(data / "imgs" / "cons9.jpg")  # flat file names under imgs/ (unconfirmed layout)
    jpeg(data / "imgs" / "nuscenes_17.jpg")
    data.mkdir(parents=True, exist_ok=True)
    (data / "MME-RealWorld-Lite.json").write_text(json.dumps(MME_RECORDS))
    result = load_dataset(f"mme-realworld-lite:{root}")
    assert [s.image for s in result] == [data / "imgs" / "cons9.jpg", data / "imgs" / "nuscenes_17.jpg"]
    assert result.samples[0].source == "mme-realworld-lite" and result.samples[0].split == "mme_realworld_lite/perception"


# ---------------------------------------------------------------- generic form, bad records


def generic_records(root: Path) -> list[dict[str, object]]:
    jpeg(root / "img" / "a.jpg")
    jpeg(root / "img" / "b.jpg")
    return [
        {"id": "a", "image": "img/a.jpg", "question": "What colour is the square?", "answer": "red", "category": "colour"},
        {"id": 7, "image": "img/b.jpg", "question": "Which shape is it?", "answer": "circle", "options": ["square", "circle"]},
        {"id": "c", "image": str(root / "img" / "a.jpg"), "question": "Is it red?\n(A) yes\n(B) no", "answer": "A",
         "options": {"A": "yes", "B": "no"}, "boxes": [[1, 2, 10, 20]]},
    ]


def test_generic_json_and_jsonl(tmp_path: Path) -> None:
    records = generic_records(tmp_path)
    (tmp_path / "set.json").write_text(json.dumps(records))
    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    for spec in (f"json:{tmp_path / 'set.json'}", f"jsonl:{tmp_path / 'set.jsonl'}"):
        open_answer, choice, listed = load_dataset(spec).samples
        assert (open_answer.id, open_answer.answer, open_answer.category, open_answer.options) == ("a", "red", "colour", {})
        assert open_answer.question == "What colour is the square?"
        assert choice.id == "7" and choice.answer == "B" and choice.options == {"A": "square", "B": "circle"}
        assert choice.question == "Which shape is it?\n(A) square\n(B) circle\n" + MULTIPLE_CHOICE_INSTRUCTION
        assert listed.question == "Is it red?\n(A) yes\n(B) no" and listed.boxes == [(1.0, 2.0, 10.0, 20.0)]
        assert listed.image == tmp_path / "img" / "a.jpg"  # an absolute path inside the folder is fine


def test_image_path_escape_rejected_and_skip_bad_counts(tmp_path: Path) -> None:
    outside = jpeg(tmp_path / "outside.jpg")
    data = tmp_path / "data"
    records = generic_records(data) + [
        {"id": "up", "image": "../../etc/passwd", "question": "q", "answer": "a"},
        {"id": "abs", "image": str(outside), "question": "q", "answer": "a"},
        {"id": "gone", "image": "img/missing.jpg", "question": "q", "answer": "a"},
    ]
    path = data / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DatasetError, match=r"record 3 \(line 4\), id 'up': .*outside the data folder"):
        load_dataset(f"jsonl:{path}")
    result = load_dataset(f"jsonl:{path}", skip_bad=True)
    assert [s.id for s in result] == ["a", "7", "c"] and result.skipped == 3
    assert "outside the data folder" in result.reasons[1] and "'abs'" in result.reasons[1]
    assert str(path) in result.reasons[2] and "record 5" in result.reasons[2] and "missing.jpg" in result.reasons[2]
    assert len(load_dataset(f"jsonl:{path}", skip_bad=True, limit=2)) == 2


def test_missing_image_error_names_file_record_and_fix(tmp_path: Path) -> None:
    root = vstar(tmp_path)
    (root / "relative_position" / "sa_1234.jpg").unlink()
    with pytest.raises(DatasetError) as error:
        load_dataset(f"vstar:{root}")
    message = str(error.value)
    assert str(root / "test_questions.jsonl") in message
    assert "record 1 (line 2), id '115'" in message
    assert "image not found" in message and "sa_1234.jpg" in message and "--skip-bad" in message


def test_duplicate_ids_and_bad_json_lines(tmp_path: Path) -> None:
    records = generic_records(tmp_path)
    records[2]["id"] = "a"
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "{not json\n")
    result = load_dataset(f"jsonl:{path}", skip_bad=True)
    assert result.skipped == 2
    assert "already used by record 0" in result.reasons[0] and "not valid JSON" in result.reasons[1]


# ---------------------------------------------------------------- specs and detection


def test_auto_detect(tmp_path: Path) -> None:
    vp = visualprobe(tmp_path / "vp")
    vs = vstar(tmp_path / "vs")
    hr = write_tsv(tmp_path / "hr_bench_4k.tsv", hrbench_rows())
    (tmp_path / "mme").mkdir()
    jpeg(tmp_path / "mme" / "diagram_and_table" / "cons9.jpg")
    jpeg(tmp_path / "mme" / "autonomous_driving" / "nuscenes_17.jpg")
    (tmp_path / "mme" / "MME_RealWorld.json").write_text(json.dumps(MME_RECORDS))
    generic = tmp_path / "gen" / "set.json"
    generic.parent.mkdir()
    generic.write_text(json.dumps(generic_records(generic.parent)))
    cases = {
        str(vp): "visualprobe",
        str(vp.parent): "visualprobe",
        str(vs): "vstar",
        str(vs / "test_questions.jsonl"): "vstar",
        str(hr): "hrbench",
        str(tmp_path / "mme" / "MME_RealWorld.json"): "mme-realworld",
        str(generic): "json",
    }
    for spec, kind in cases.items():
        result = load_dataset(spec)
        assert result.kind == kind and len(result) >= 2, spec
        assert all(isinstance(s, Sample) for s in result)


def test_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset kind 'nope'"):
        parse_spec("nope:/x")
    with pytest.raises(DatasetError, match="not found"):
        parse_spec(f"vstar:{tmp_path / 'absent'}")
    with pytest.raises(DatasetError, match="cannot tell the dataset kind"):
        parse_spec(str(tmp_path))
    assert parse_spec(f"V*:{tmp_path}").kind == "vstar"


def _synthetic_set(root: Path, count: int) -> list[dict]:
    """A synthetic set as `mini-o3 synth` lays it out, written by hand (no rendering)."""
    (root / "images").mkdir(parents=True)
    records = []
    for index in range(count):
        jpeg(root / "images" / f"s{index}.jpg")
        records.append({
            "images": [f"images/s{index}.jpg"], "doc_id": f"synthetic_easy_{index:06d}",
            "problem": "<image>\nWhat colour is the square?", "solution": "red", "data_source": "synthetic_easy",
            "meta": {"level": "easy", "question_type": "attribute", "options": {}, "boxes": [[1, 2, 30, 40]]},
        })
    (root / "synth_config.json").write_text("{}")
    (root / "data.json").write_text(json.dumps(records))
    return records


def test_synthetic_sets_load_by_spec_and_by_folder(tmp_path: Path) -> None:
    _synthetic_set(tmp_path / "set", 3)
    result = load_dataset(f"synthetic:{tmp_path / 'set'}", limit=2)
    assert result.kind == "synthetic" and [s.id for s in result] == ["synthetic_easy_000000", "synthetic_easy_000001"]
    sample = result.samples[0]
    assert (sample.question, sample.answer, sample.split, sample.category) == ("What colour is the square?", "red", "easy", "attribute")
    assert sample.boxes == [(1.0, 2.0, 30.0, 40.0)] and Path(sample.image).is_file()
    assert load_dataset(str(tmp_path / "set")).kind == "synthetic"


def test_synthetic_bad_records_stop_the_load_or_are_skipped_and_counted(tmp_path: Path) -> None:
    from mini_o3.data.synth_loading import load_synthetic

    root = tmp_path / "set"
    records = _synthetic_set(root, 4)
    records[1]["images"] = ["../outside.jpg"]
    del records[2]["solution"]
    (root / "images" / "s3.jpg").unlink()
    (root / "data.json").write_text(json.dumps(records))
    with pytest.raises(DatasetError, match=r"data.json: record 1, id 'synthetic_easy_000001': .*outside the data folder.*--skip-bad"):
        load_dataset(f"synthetic:{root}")
    with pytest.raises(DatasetError, match=r"record 1, id 'synthetic_easy_000001'"):
        load_synthetic(root)
    result = load_dataset(f"synthetic:{root}", skip_bad=True)
    assert [s.id for s in result] == ["synthetic_easy_000000"] and result.skipped == 3
    assert "field 'solution'" in result.reasons[1] and "image not found" in result.reasons[2]
    assert all("rerun `mini-o3 synth`" in reason for reason in result.reasons[1:])

# ---------------------------------------------------------------- hostile files (issue 13)


def test_a_jsonl_line_that_is_not_utf8_is_a_bad_record_naming_file_and_line(tmp_path: Path) -> None:
    records = generic_records(tmp_path)
    lines = [json.dumps(r).encode() for r in records]
    lines.insert(1, b'{"id": "x", "image": "img/a.jpg", "question": "caf\xe9?", "answer": "a"}')  # Latin-1, not UTF-8
    for name, order in (("later.jsonl", lines), ("first.jsonl", [lines[1], lines[0], *lines[2:]])):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(order) + b"\n")  # with a BOM, as Windows editors save
        bad_line = 2 if name == "later.jsonl" else 1
        with pytest.raises(DatasetError, match=rf"{name}: record {bad_line - 1} \(line {bad_line}\): .*not UTF-8 .*--skip-bad"):
            load_dataset(f"jsonl:{path}")
        for spec in (f"jsonl:{path}", str(path)):  # the bare path is detected past the bad line
            result = load_dataset(spec, skip_bad=True)
            assert sorted(s.id for s in result) == ["7", "a", "c"] and result.skipped == 1
            assert f"line {bad_line}" in result.reasons[0] and "byte 0xe9" in result.reasons[0]


def test_a_tsv_row_that_is_not_utf8_is_a_bad_record(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "hr_bench_4k.tsv", hrbench_rows())
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"EXIT", b"EX\xffT", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DatasetError, match=r"record 1 \(line 3\), id '1': .*not UTF-8"):
        load_dataset(f"hrbench:{path}")
    result = load_dataset(f"hrbench:{path}", skip_bad=True)
    assert [s.id for s in result] == ["0", "2", "3"] and result.skipped == 1


def test_lone_surrogates_in_a_data_file_are_made_safe_where_they_are_read(tmp_path: Path) -> None:
    records = generic_records(tmp_path)
    records[0].update(question="what does \udc80 say?", category="\ud800", id="a\udcff")
    records.append({"id": "bad\udc80", "image": "img/gone.jpg", "question": "q", "answer": "a"})
    path = tmp_path / "set.json"
    path.write_text(json.dumps(records))  # json.dumps writes them as \udc80 escapes: valid JSON
    result = load_dataset(str(path), skip_bad=True)
    first = result.samples[0]
    assert (first.id, first.question, first.category) == ("a\ufffd", "what does \ufffd say?", "\ufffd")
    assert "bad\ufffd" in result.reasons[0]
    for text in (first.id, first.question, first.category, *result.reasons):
        text.encode("utf-8")


def test_images_are_checked_at_load_from_their_headers(tmp_path: Path) -> None:
    import struct
    import zlib

    def png_header(width: int, height: int) -> bytes:
        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")

    folder = tmp_path / "img"
    folder.mkdir()
    noise = Image.frombytes("RGB", (300, 200), bytes(range(256)) * 703 + bytes(132))
    buffer = io.BytesIO()
    noise.save(buffer, format="JPEG")
    whole = buffer.getvalue()
    files = {
        "good.jpg": whole,
        "truncated.jpg": whole[: len(whole) // 2],  # its header is whole: it passes here and fails at the episode
        "empty.jpg": b"",
        "text.jpg": b"hello, I am not an image\n",
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 100,
        "bomb.png": png_header(20_000, 20_000),
        "big.png": png_header(14_000, 14_000),  # 196M pixels: over Pillow's guard, under our limit
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "folder.jpg").mkdir()
    names = [*files, "folder.jpg"]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps({"id": name, "image": f"img/{name}", "question": "q", "answer": "a"}) + "\n" for name in names))
    with pytest.raises(DatasetError, match=r"record 2, id 'empty.jpg': image .*empty.jpg is empty.*--skip-bad"):
        load_dataset(f"jsonl:{path}")
    result = load_dataset(f"jsonl:{path}", skip_bad=True)
    assert [s.id for s in result] == ["good.jpg", "truncated.jpg", "big.png"]
    assert result.skipped == 5
    expected = {"empty.jpg": "empty", "text.jpg": "not an image", "corrupt.jpg": "not an image",
                "bomb.png": "over the limit of 300,000,000 pixels; raise --image-pixel-limit", "folder.jpg": "is a folder"}
    for reason, (name, words) in zip(result.reasons, expected.items()):
        assert str(path) in reason and f"id {name!r}" in reason and words in reason, reason
    smaller = load_dataset(f"jsonl:{path}", skip_bad=True, pixel_limit=100_000_000)
    assert [s.id for s in smaller] == ["good.jpg", "truncated.jpg"] and "100,000,000" in smaller.reasons[-2]
