"""Our samples as verl dataset rows, and back: what `mini-o3 export verl` writes and the loop reads.

verl's `RLHFDataset` hands every column of a row to the agent loop's `run(**kwargs)`
(verl/utils/dataset/rl_dataset.py, `__getitem__`). A row carries:

    data_source   the sample's source (verl groups validation metrics by it)
    prompt        [{"role": "user", "content": question}]: text only, so verl never opens the image
    ability       "visual_search"
    reward_model  {"style": "rule", "ground_truth": answer}
    agent_name    the registered loop ("mini_o3")
    extra_info    {"index": i, "sample": JSON of the Sample, "limits": JSON of per-row overrides}

Nested values are JSON strings so that every row has the same parquet schema whatever the
options and limits hold. The image is a path (absolute, so every node of a cluster finds it on
shared storage); in-memory images are written next to the parquet file first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from mini_o3.agent.sample import Sample

AGENT_NAME = "mini_o3"
"""The name the loop registers under and the rows ask for."""

LIMIT_KEYS = ("max_turns", "max_images", "max_context_tokens", "context_reserve")
"""Per-row limit overrides a row may carry (validation rows use 12 turns, say)."""


def sample_to_row(sample: Sample, index: int, limits: Mapping[str, int | None] | None = None, agent_name: str = AGENT_NAME) -> dict[str, Any]:
    """One verl dataset row for `sample`; its image must be a path (see `export_rows`)."""
    if not isinstance(sample.image, (str, Path)):
        raise ValueError(f"sample {sample.id}: the image must be a file path to export, got {type(sample.image).__name__}")
    overrides = dict(limits or {})
    unknown = sorted(set(overrides) - set(LIMIT_KEYS))
    if unknown:
        raise ValueError(f"unknown limit override(s) {unknown}; use {', '.join(LIMIT_KEYS)}")
    record = {
        "id": sample.id,
        "image": str(Path(sample.image).resolve()),
        "question": sample.question,
        "answer": sample.answer,
        "options": dict(sample.options),
        "source": sample.source,
        "split": sample.split,
        "category": sample.category,
    }
    return {
        "data_source": sample.source or "mini_o3",
        "prompt": [{"role": "user", "content": sample.question}],
        "ability": "visual_search",
        "reward_model": {"style": "rule", "ground_truth": sample.answer},
        "agent_name": agent_name,
        "extra_info": {"index": index, "sample": json.dumps(record), "limits": json.dumps(overrides)},
    }


def row_to_sample(row: Mapping[str, Any]) -> tuple[Sample, dict[str, int | None]]:
    """The sample and the limit overrides of a row as verl passes it to `run(**kwargs)`."""
    extra = row.get("extra_info")
    if isinstance(extra, str):  # a trainer that hands nested columns over as JSON text
        extra = json.loads(extra)
    if not isinstance(extra, Mapping) or "sample" not in extra:
        raise ValueError("the row has no extra_info.sample; write the data with `mini-o3 export verl`")
    record = json.loads(extra["sample"])
    limits = json.loads(extra.get("limits") or "{}")
    sample = Sample(
        id=str(record["id"]),
        image=Path(record["image"]),
        question=record["question"],
        answer=record["answer"],
        options=dict(record.get("options") or {}),
        source=record.get("source", ""),
        split=record.get("split", ""),
        category=record.get("category", ""),
    )
    return sample, {key: limits[key] for key in LIMIT_KEYS if key in limits}


def export_rows(samples: Iterable[Sample], image_dir: Path, limits: Mapping[str, int | None] | None = None) -> list[dict[str, Any]]:
    """Rows for `samples`, saving in-memory images into `image_dir` as PNG files first."""
    rows = []
    for index, sample in enumerate(samples):
        if not isinstance(sample.image, (str, Path)):
            image_dir.mkdir(parents=True, exist_ok=True)
            path = image_dir / f"{index:06d}.png"
            sample.image.save(path)
            sample = Sample(**{**sample.__dict__, "image": path})
        rows.append(sample_to_row(sample, index, limits))
    return rows


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows as one parquet file (the format `data.train_files` takes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
