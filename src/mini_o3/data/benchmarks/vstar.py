"""V* Bench (craigwu/vstar_bench)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mini_o3.data.benchmarks.common import (
    Record,
    RecordProblem,
    _clip,
    _is_number,
    _jsonl_items,
    _record_id,
    _text_field,
    answer_letter,
    build_records,
    existing_image,
    parse_option_lines,
)
from mini_o3.agent.sample import Sample


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
