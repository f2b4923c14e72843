"""MME-RealWorld and MME-RealWorld-Lite (yifanzhang114/MME-RealWorld, -Lite)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mini_o3.data.benchmarks.common import (
    DatasetError,
    Record,
    RecordProblem,
    _clip,
    _json_array,
    _record_id,
    _text_field,
    answer_letter,
    build_records,
    existing_image,
    multiple_choice_question,
    parse_choice,
    safe_image_path,
)
from mini_o3.agent.sample import Sample


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
