"""The cold-start SFT dataset on disk, in two forms, written from accepted trajectories.

1. Chat messages with image files (`messages.jsonl` + `images/`), what TRL-style trainers read.
   One row per trajectory:

       {"id": "<sample>__r<run>", "sample_id": ..., "run": 0, "data_source": ..., "num_turns": 3,
        "messages": [
          {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
          {"role": "user", "content": [{"type": "image", "image": "images/<id>/original_image.jpg"},
                                       {"type": "text", "text": "\\n<question>"}]},
          {"role": "assistant", "content": [{"type": "text", "text": "<think>...</think><grounding>...</grounding>"}]},
          {"role": "user", "content": [{"type": "text", "text": "After the above Action 0, ... (Observation 1):\\n"},
                                       {"type": "image", "image": "images/<id>/observation_1.jpg"},
                                       {"type": "text", "text": ".\\nContinue your reasoning ..."}]},
          ...],
        "images": ["images/<id>/original_image.jpg", "images/<id>/observation_1.jpg", ...]}

   The messages are exactly `Trajectory.messages()` (mini_o3.agent.protocol's strings, byte for byte),
   with image paths relative to the dataset folder; "images" lists the same paths in order. The
   loss goes on the assistant messages only (the trainer's job: observation and error turns
   are user turns).

2. The Mini-o3 cold-start parquet schema (`coldstart/train-XXXXX-of-YYYYY.parquet`), the columns
   of the released Mini-o3-Coldstart-Dataset, which its `preprocess_coldstart.py` turns into a
   LLaMA-Factory "sharegpt" file:
   - `images`: list of images (Hugging Face `Image` feature: {bytes, path}), in order of use;
   - `image_names`: list of file names (`original_image.jpg`, `observation_1.jpg`, ...);
   - `conversations`: a *string* holding the list of turns [{"from": "system"|"human"|"gpt",
     "value": text}], each image written as the placeholder `<image>`. Their script reads it
     with Python's `eval`, so we write JSON of plain strings, which is also a valid Python
     literal (`ast.literal_eval` and `json.loads` both read it). The system turn comes first;
     the first human turn is "<image>\\n<question>" (the `problem` form of their data); an
     observation turn is "After the above Action t, ... (Observation n):\\n<image>.\\nContinue ...";
   - `data_source` (string), `sample_index` (the question's index in the collection's sample
     list), `rollout_index` (the run number of that question's episode).
   The exact wording of the released rows is not published beyond this schema; ours follows
   the protocol module, which is byte-exact with the released checkpoint.

Images are the views as the model saw them (after the resize policy), recomputed from the
original and the recorded boxes (`env.replay_views`), saved once as JPEG (quality 95 by
default) and shared by both forms.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from PIL import Image

from mini_o3.agent.env import replay_views
from mini_o3.agent.images import ResizePolicy, encode_image, open_image
from mini_o3.jsonl import open_atomic, remove_stale_temporaries
from mini_o3.agent.store import safe_name
from mini_o3.agent.trajectory import Trajectory

MESSAGES_FILE = "messages.jsonl"
IMAGES_DIR = "images"
PARQUET_DIR = "coldstart"
IMAGE_TOKEN = "<image>"
"""The image placeholder of the sharegpt form."""

SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


@dataclass
class SftExample:
    """One accepted trajectory and the images it showed, ready to be written."""

    trajectory: Trajectory
    images: list[Image.Image]
    """View i as the model saw it (0 is the original)."""
    sample_index: int = 0
    """The question's index in the collection's sample list."""
    rollout_index: int = 0
    """Which run of that question this is."""
    data_source: str = ""
    """Where the question came from (the sample's source when empty)."""


@dataclass
class SftFiles:
    """What `write_sft_dataset` wrote."""

    directory: Path
    messages: Path
    parquet: list[Path] = field(default_factory=list)
    rows: int = 0
    images: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "directory": str(self.directory),
            "messages": str(self.messages),
            "parquet": [str(path) for path in self.parquet],
            "rows": self.rows,
            "images": self.images,
        }


def image_names(count: int, extension: str = "jpg") -> list[str]:
    """File names of a trajectory's views: original_image, observation_1, ..."""
    return [f"{'original_image' if index == 0 else f'observation_{index}'}.{extension}" for index in range(count)]


def trajectory_images(trajectory: Trajectory, original: Any, resize: ResizePolicy = ResizePolicy()) -> list[Image.Image]:
    """The views a trajectory showed, recomputed from its original (a path or PIL image) and its boxes."""
    return replay_views(trajectory, open_image(original), resize)


def example_id(trajectory: Trajectory) -> str:
    """The row id of a trajectory: its sample id and run, file-system safe."""
    return f"{safe_name(trajectory.sample_id)}__r{int(trajectory.meta.get('run', 0))}"


def sharegpt_conversation(trajectory: Trajectory) -> list[dict[str, str]]:
    """The trajectory as [{"from", "value"}] turns with `<image>` placeholders (the cold-start form)."""
    turns = []
    for message in trajectory.messages():
        value = "".join(IMAGE_TOKEN if part["type"] == "image" else part["text"] for part in message["content"])
        turns.append({"from": SHAREGPT_ROLES[message["role"]], "value": value})
    return turns


def write_sft_dataset(
    examples: Iterable[SftExample],
    directory: str | Path,
    image_format: str = "JPEG",
    quality: int = 95,
    shard_rows: int = 500,
) -> SftFiles:
    """Write both forms of the SFT dataset into `directory`, replacing what was there."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parquet_dir = directory / PARQUET_DIR
    parquet_dir.mkdir(exist_ok=True)
    remove_stale_temporaries(directory)  # a killed run's half-written messages file
    for old in [*parquet_dir.glob("*.parquet"), *parquet_dir.glob(".shard-*.parquet.tmp")]:
        old.unlink()
    extension = "png" if image_format.upper() == "PNG" else "jpg"
    files = SftFiles(directory, directory / MESSAGES_FILE)
    shard: list[dict[str, Any]] = []
    shard_paths: list[Path] = []
    with open_atomic(files.messages) as handle:
        for example in examples:
            row, parquet_row = _write_example(example, directory, image_format, quality, extension)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            files.rows += 1
            files.images += len(row["images"])
            shard.append(parquet_row)
            if len(shard) >= shard_rows:
                shard_paths.append(_write_shard(shard, parquet_dir, len(shard_paths)))
                shard = []
        if shard or not shard_paths:
            shard_paths.append(_write_shard(shard, parquet_dir, len(shard_paths)))
    written = {row_id for row_id in _row_ids(files.messages)}
    for folder in (directory / IMAGES_DIR).glob("*"):
        if folder.is_dir() and folder.name not in written:  # images of rows a rewrite dropped
            shutil.rmtree(folder)
    total = len(shard_paths)
    for number, path in enumerate(shard_paths):
        final = parquet_dir / f"train-{number:05d}-of-{total:05d}.parquet"
        os.replace(path, final)
        files.parquet.append(final)
    return files


def _row_ids(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)["id"]


def _write_example(
    example: SftExample, directory: Path, image_format: str, quality: int, extension: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    trajectory = example.trajectory
    if len(example.images) != len(trajectory.views):
        raise ValueError(
            f"trajectory {trajectory.sample_id!r} showed {len(trajectory.views)} views but {len(example.images)} images were given"
        )
    key = example_id(trajectory)
    names = image_names(len(example.images), extension)
    folder = directory / IMAGES_DIR / key
    folder.mkdir(parents=True, exist_ok=True)
    relative = []
    blobs = []
    for name, image in zip(names, example.images):
        data = encode_image(image, image_format, quality)
        (folder / name).write_bytes(data)
        relative.append(f"{IMAGES_DIR}/{key}/{name}")
        blobs.append({"bytes": data, "path": name})
    source = example.data_source or trajectory.source
    row = {
        "id": key,
        "sample_id": trajectory.sample_id,
        "run": int(trajectory.meta.get("run", 0)),
        "data_source": source,
        "num_turns": trajectory.num_turns,
        "messages": trajectory.messages(relative),
        "images": relative,
    }
    conversation = sharegpt_conversation(trajectory)
    placeholders = sum(turn["value"].count(IMAGE_TOKEN) for turn in conversation)
    if placeholders != len(blobs):
        raise ValueError(
            f"trajectory {key}: the conversation holds {placeholders} '<image>' placeholders for {len(blobs)} images; "
            "a question or turn text contains the literal '<image>'"
        )
    parquet_row = {
        "images": blobs,
        "image_names": names,
        "conversations": json.dumps(conversation, ensure_ascii=False),
        "data_source": source,
        "sample_index": int(example.sample_index),
        "rollout_index": int(example.rollout_index),
    }
    return row, parquet_row


def coldstart_features() -> Any:
    """The Hugging Face features of the cold-start parquet schema."""
    import datasets

    return datasets.Features(
        {
            "images": datasets.List(datasets.Image()),
            "image_names": datasets.List(datasets.Value("string")),
            "conversations": datasets.Value("string"),
            "data_source": datasets.Value("string"),
            "sample_index": datasets.Value("int64"),
            "rollout_index": datasets.Value("int64"),
        }
    )


def _write_shard(rows: list[dict[str, Any]], folder: Path, number: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The schema carries the Hugging Face feature metadata, so `datasets` decodes the images.
    table = pa.Table.from_pylist(rows, schema=coldstart_features().arrow_schema)
    path = folder / f".shard-{number:05d}.parquet.tmp"
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------- reading


def read_sft_rows(directory: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of `messages.jsonl`, image paths resolved to absolute paths."""
    directory = Path(directory)
    path = directory / MESSAGES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no SFT dataset in {directory}: {MESSAGES_FILE} is missing (run `mini-o3 collect` first)")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON row ({error})") from error
            yield _resolve(row, directory)


def _resolve(row: dict[str, Any], directory: Path) -> dict[str, Any]:
    row["images"] = [str(directory / image) for image in row["images"]]
    for message in row["messages"]:
        for part in message["content"]:
            if part["type"] == "image":
                part["image"] = str(directory / part["image"])
    return row


def load_sft_dataset(directory: str | Path, images: str = "path") -> Any:
    """The chat-message form as a `datasets.Dataset` (columns messages, images, id, ...).

    `images="path"` keeps absolute paths; `images="pil"` opens them lazily (a transform) as
    RGB PIL images, in both the "images" column and the messages' image parts.
    """
    import datasets

    if images not in ("path", "pil"):
        raise ValueError(f"images must be 'path' or 'pil', got {images!r}")
    rows = list(read_sft_rows(directory))
    if not rows:
        raise ValueError(f"the SFT dataset in {directory} has no rows (no trajectory was accepted)")
    dataset = datasets.Dataset.from_list(rows)
    if images == "pil":
        dataset.set_transform(_open_images)
    return dataset


def _open_images(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    if "images" in batch:
        batch["images"] = [[open_image(path) for path in paths] for paths in batch["images"]]
    if "messages" in batch:
        for messages in batch["messages"]:
            for message in messages:
                for part in message["content"]:
                    if part.get("type") == "image" and isinstance(part.get("image"), str):
                        part["image"] = open_image(part["image"])
    return batch


def load_coldstart_parquet(directory: str | Path) -> Any:
    """The cold-start parquet form as a `datasets.Dataset` (images decode to PIL)."""
    import datasets

    folder = Path(directory)
    if (folder / PARQUET_DIR).is_dir():
        folder = folder / PARQUET_DIR
    files = sorted(str(path) for path in folder.glob("train-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no cold-start parquet files (train-*.parquet) in {folder}")
    return datasets.Dataset.from_parquet(files, features=coldstart_features())


def conversation_from_row(row: dict[str, Any]) -> list[dict[str, str]]:
    """The `conversations` column parsed back into turns."""
    value = row["conversations"]
    return json.loads(value) if isinstance(value, str) else list(value)


def examples_from(
    trajectories: Sequence[Trajectory],
    originals: dict[str, Any],
    resize: ResizePolicy = ResizePolicy(),
    sample_indices: dict[str, int] | None = None,
) -> Iterator[SftExample]:
    """SftExamples for trajectories whose originals are given by sample id (images recomputed lazily)."""
    for trajectory in trajectories:
        if trajectory.sample_id not in originals:
            raise KeyError(f"no original image for sample {trajectory.sample_id!r}")
        yield SftExample(
            trajectory,
            trajectory_images(trajectory, originals[trajectory.sample_id], resize),
            sample_index=(sample_indices or {}).get(trajectory.sample_id, 0),
            rollout_index=int(trajectory.meta.get("run", 0)),
        )


__all__ = [
    "IMAGE_TOKEN",
    "MESSAGES_FILE",
    "PARQUET_DIR",
    "SftExample",
    "SftFiles",
    "coldstart_features",
    "conversation_from_row",
    "example_id",
    "examples_from",
    "image_names",
    "load_coldstart_parquet",
    "load_sft_dataset",
    "read_sft_rows",
    "sharegpt_conversation",
    "trajectory_images",
    "write_sft_dataset",
]
