"""What an episode leaves behind: turns, views and a final status, with JSONL and chat forms."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Iterator

from mini_o3.agent import protocol
from mini_o3.jsonl import JsonlAppender, iter_records, write_atomic


class Status(str, Enum):
    """How an episode ended. Answered and no_answer terminate; over_turn and over_context truncate."""

    ANSWERED = "answered"
    """The model wrote a final answer."""
    NO_ANSWER = "no_answer"
    """The model ended a turn with neither a zoom nor an answer."""
    OVER_TURN = "over_turn"
    """The turn or image budget ran out while the model still wanted to act (masked in RL)."""
    OVER_CONTEXT = "over_context"
    """The context budget ran out (masked in RL)."""
    ERROR = "error"
    """The episode could not run: the policy failed, or the image could not be loaded."""

    @property
    def truncated(self) -> bool:
        """True for the statuses Mini-o3 calls over-turn: limits cut the episode, not the model."""
        return self in (Status.OVER_TURN, Status.OVER_CONTEXT)


ERROR_KINDS = {
    "image": "the original image could not be read (fix or replace the file: running again cannot help)",
    "policy": "the policy failed or raised (a dead server, a bug): running again may help",
    "cancelled": "the job stopped while the episode ran",
    "save": "the episode could not be saved as it ran and was saved as this error, its text made safe",
}
"""What `Trajectory.error_kind` can say."""


@dataclass
class ViewRecord:
    """An image shown to the model: the original (index 0) or the crop `observation_N`."""

    index: int
    box: tuple[int, int, int, int]
    """The region in original-image pixels (x0, y0, x1, y1), x1 and y1 exclusive."""
    size: tuple[int, int]
    """The size the model saw it at, after the resize policy."""
    source: int | None = None
    """The index of the view it was cut from (None for the original)."""
    relative_box: tuple[float, float, float, float] | None = None
    """The box the model asked for, relative to the source view."""
    file: str | None = None
    """Where the shown image was saved, relative to the trajectory file, once saved."""


@dataclass
class TurnRecord:
    """One assistant turn and what the environment answered."""

    text: str
    kind: str
    """zoom, answer, malformed or none (what the text was parsed as)."""
    feedback: str | None = None
    """observation, error, or None when the episode ended on this turn."""
    error: str | None = None
    """The error shown to the model (feedback == "error")."""
    view: int | None = None
    """The view this turn's zoom produced (feedback == "observation")."""
    label: tuple[int, int] | None = None
    """(Action t, Observation n) as printed in the observation turn."""
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None


@dataclass
class Trajectory:
    """One episode: the question, every turn, every view, and how it ended."""

    sample_id: str
    question: str
    image: str
    """The original image's path (or a name for in-memory images)."""
    image_size: tuple[int, int]
    ground_truth: str = ""
    options: dict[str, str] = field(default_factory=dict)
    source: str = ""
    split: str = ""
    category: str = ""
    status: Status = Status.NO_ANSWER
    answer: str | None = None
    error: str | None = None
    error_kind: str | None = None
    """Why an `error` episode failed: one of ERROR_KINDS ("image" cannot be fixed by running it again)."""
    turns: list[TurnRecord] = field(default_factory=list)
    views: list[ViewRecord] = field(default_factory=list)
    context_tokens: int = 0
    limits: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_turns(self) -> int:
        """The number of assistant turns."""
        return len(self.turns)

    @property
    def num_zooms(self) -> int:
        """The number of crops the model was shown."""
        return len(self.views) - 1 if self.views else 0

    def messages(self, images: list[Any] | None = None) -> list[dict[str, Any]]:
        """The conversation as chat messages; `images[i]` stands for view i (default: its index)."""
        shown = images if images is not None else list(range(len(self.views)))
        messages = [protocol.system_message(), protocol.first_user_message(shown[0], self.question)]
        for turn in self.turns:
            messages.append(protocol.assistant_message(turn.text, turn.token_ids))
            if turn.feedback == "observation":
                action, observation = turn.label
                messages.append(protocol.observation_message(shown[turn.view], action, observation))
            elif turn.feedback == "error":
                messages.append(protocol.error_message(turn.error))
        return messages

    def rendered(self) -> str:
        """The whole conversation as the Qwen2.5-VL chat template renders it."""
        return protocol.render_messages(self.messages(), add_generation_prompt=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        record = asdict(self)
        record["status"] = self.status.value
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Trajectory":
        """Rebuild a trajectory written by `to_dict`."""
        data = dict(record)
        data["status"] = Status(data["status"])
        data["image_size"] = tuple(data["image_size"])
        data["turns"] = [
            TurnRecord(**{**turn, "label": tuple(turn["label"]) if turn.get("label") else None})
            for turn in data.get("turns", [])
        ]
        data["views"] = [
            ViewRecord(
                **{
                    **view,
                    "box": tuple(view["box"]),
                    "size": tuple(view["size"]),
                    "relative_box": tuple(view["relative_box"]) if view.get("relative_box") else None,
                }
            )
            for view in data.get("views", [])
        ]
        return cls(**data)


def write_jsonl(path: str | Path, trajectories: Iterable[Trajectory], append: bool = True) -> None:
    """Append trajectories to a JSONL file, one per line, flushed (a torn last line is cut first); or replace the file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not append:
        write_atomic(path, "".join(json.dumps(trajectory.to_dict(), ensure_ascii=False) + "\n" for trajectory in trajectories))
        return
    with JsonlAppender(path) as appender:
        for trajectory in trajectories:
            appender.append(trajectory.to_dict())


def read_jsonl(path: str | Path) -> Iterator[Trajectory]:
    """Trajectories from a JSONL file; a torn last line (a crash mid-write) is skipped."""
    for record in iter_records(path):
        yield Trajectory.from_dict(record)
