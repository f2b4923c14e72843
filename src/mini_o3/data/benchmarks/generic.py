"""Our generic form: a JSON array or JSONL of {id, image, question, answer[, options, category]}."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mini_o3.data.benchmarks.common import (
    Record,
    RecordProblem,
    _clip,
    _is_number,
    _json_array,
    _jsonl_items,
    _record_id,
    _text_field,
    answer_letter,
    build_records,
    existing_image,
    multiple_choice_question,
)
from mini_o3.agent.sample import Sample


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
