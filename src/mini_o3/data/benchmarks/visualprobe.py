"""VisualProbe (Mini-o3/VisualProbe_{Easy,Medium,Hard,train})."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mini_o3.data.benchmarks.common import (
    Record,
    RecordProblem,
    _clip,
    _json_array,
    _record_id,
    _text_field,
    build_records,
    existing_image,
)
from mini_o3.agent.sample import Sample
from mini_o3.agent.protocol import question_from_problem


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
