"""One episode's state: the views shown so far, the conversation, the limits and the status.

Limits follow shared/reference/mini-o3.md section 4. A zoom (or a malformed action) on the
last allowed turn, or with the image budget spent, ends the episode as over_turn; an episode
whose context reaches `max_context_tokens - context_reserve` before or after adding an
observation ends as over_context (the observation is dropped). Both are truncations, which
RL masks; an answer or a turn without any action terminates.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable

from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.sample import Sample
from mini_o3.agent.images import (
    DEFAULT_IMAGE_PIXEL_LIMIT,
    BoxError,
    ResizePolicy,
    crop,
    data_url,
    open_image,
    resize_for_model,
    zoom_box_in_original,
)
from mini_o3.agent.policy import Generation, PolicyError
from mini_o3.jsonl import safe_text
from mini_o3.agent.trajectory import Status, Trajectory, TurnRecord, ViewRecord

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Limits:
    """The budget of one episode."""

    max_turns: int = 32
    """Assistant turns; 32 at inference (the paper's curve), 6 in training."""
    max_images: int | None = None
    """Images in the context, the original included; None for no limit (training uses 12)."""
    max_context_tokens: int = 32_768
    """The model's context window."""
    context_reserve: int = 2_000
    """Stop when the context gets within this many tokens of the window."""
    numbering: protocol.Numbering = "reference"
    """Observation labels: "reference" (byte-compatible, error turns counted) or "consistent"."""

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {self.max_turns}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be at least 1 or None, got {self.max_images}")


INFERENCE_LIMITS = Limits(max_turns=32)
TRAINING_LIMITS = Limits(max_turns=6, max_images=12)

PATCH_SIZE = 28


def image_tokens(width: int, height: int, patch: int = PATCH_SIZE) -> int:
    """Tokens Qwen2.5-VL spends on an image of this shown size, with its start and end markers."""
    return max(1, round(width / patch)) * max(1, round(height / patch)) + 2


def approximate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 3.5 bytes a token for English BPE), for servers that report no usage."""
    return len(text.encode("utf-8", "surrogatepass")) * 2 // 7 + 1  # a lone surrogate counts, not raises


def message_tokens(messages: list[dict[str, Any]], count_tokens: TokenCounter, image_cost: Callable[[Any], int]) -> int:
    """Context tokens of chat messages: 5 of chat markup each, text by `count_tokens`, images by `image_cost`."""
    total = 0
    for message in messages:
        total += 5  # <|im_start|>role\n ... <|im_end|>\n
        for part in message["content"]:
            if part["type"] == "image":
                total += image_cost(part["image"])
            else:
                total += count_tokens(part["text"])
    return total


class View:
    """An image shown to the model, with its box in the original and a cached encoding."""

    __slots__ = ("record", "image", "_encoded", "_lock")

    def __init__(self, record: ViewRecord, image: Image.Image) -> None:
        self.record = record
        self.image = image
        self._encoded: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    @property
    def index(self) -> int:
        """0 for the original, N for observation_N."""
        return self.record.index

    def data_url(self, fmt: str = "JPEG", quality: int = 95) -> str:
        """The shown image as a base64 data URL, encoded once per format."""
        key = (fmt, quality)
        with self._lock:
            if key not in self._encoded:
                self._encoded[key] = data_url(self.image, fmt, quality)
            return self._encoded[key]


class ZoomEnv:
    """The zoom environment for one sample: call `messages()`, ask a policy, then `step()`."""

    def __init__(
        self,
        sample: Sample,
        limits: Limits = INFERENCE_LIMITS,
        resize: ResizePolicy = ResizePolicy(),
        count_tokens: TokenCounter | None = None,
        pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT,
        original: Image.Image | None = None,
        count_image_tokens: Callable[[int, int], int] | None = None,
    ) -> None:
        self.sample = sample
        self.limits = limits
        self.resize = resize
        self.count_tokens = count_tokens or approximate_tokens
        # A policy knows its processor's limits (the tiny one caps images); else Qwen2.5-VL's rule.
        pads = count_image_tokens
        self.image_cost = (lambda w, h: pads(w, h) + 2) if pads is not None else image_tokens
        self.original = original if original is not None else open_image(sample.image, pixel_limit)
        width, height = self.original.size
        first = resize_for_model(self.original, resize, first=True)
        self.views = [View(ViewRecord(index=0, box=(0, 0, width, height), size=first.size), first)]
        # Text enters the episode here: loaders clean what they read, and a Sample built in code
        # is cleaned the same way (ids stay as given: results are keyed by them).
        question = safe_text(sample.question)
        self.trajectory = Trajectory(
            sample_id=sample.id,
            question=question,
            image=str(sample.image) if not isinstance(sample.image, Image.Image) else sample.image_name(),
            image_size=(width, height),
            ground_truth=safe_text(sample.answer),
            options={safe_text(str(key)): safe_text(str(text)) for key, text in sample.options.items()},
            source=safe_text(sample.source),
            split=safe_text(sample.split),
            category=safe_text(sample.category),
            views=[self.views[0].record],
            limits=asdict(limits),
        )
        self._messages = [protocol.system_message(), protocol.first_user_message(self.views[0], question)]
        self.context_tokens = self._prompt_tokens(self._messages)
        self.done = False

    # ------------------------------------------------------------ conversation

    def messages(self) -> list[dict[str, Any]]:
        """The conversation so far, ready for the next assistant turn."""
        return list(self._messages)

    def _prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        return message_tokens(messages, self.count_tokens, lambda view: self.image_cost(*view.image.size))

    # ------------------------------------------------------------ stepping

    def step(self, generation: Generation) -> bool:
        """Apply one assistant turn; return True when the episode is over."""
        if self.done:
            raise RuntimeError("step() on a finished episode")
        if not isinstance(generation.text, str):
            raise PolicyError(f"the policy returned text of type {type(generation.text).__name__}, not a string")
        # The model's text enters here, from any policy: what cannot be written as UTF-8 becomes U+FFFD.
        text = safe_text(generation.text)
        prompt_tokens, completion_tokens = _count(generation.prompt_tokens), _count(generation.completion_tokens)
        action = protocol.parse_action(text)
        turn = TurnRecord(
            text=text,
            kind=_kind(action),
            finish_reason=safe_text(str(generation.finish_reason)) if generation.finish_reason else "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=generation.latency_s,
            token_ids=generation.token_ids,
            logprobs=generation.logprobs,
        )
        self.trajectory.turns.append(turn)
        self._messages.append(protocol.assistant_message(text, generation.token_ids))
        if prompt_tokens is not None and completion_tokens is not None:
            self.context_tokens = prompt_tokens + completion_tokens
        else:
            self.context_tokens += 5 + (completion_tokens or self.count_tokens(text))
        self.trajectory.context_tokens = self.context_tokens

        if isinstance(action, protocol.Answer):
            self.trajectory.answer = action.text
            return self._finish(Status.ANSWERED)
        if isinstance(action, protocol.NoAction):
            return self._finish(Status.NO_ANSWER)
        if len(self.trajectory.turns) >= self.limits.max_turns:
            return self._finish(Status.OVER_TURN)
        if self._context_full(self.context_tokens):
            return self._finish(Status.OVER_CONTEXT)
        if isinstance(action, protocol.Malformed):
            return self._feedback_error(turn, action.error)
        if self.limits.max_images is not None and len(self.views) >= self.limits.max_images:
            return self._finish(Status.OVER_TURN)
        return self._zoom(turn, action)

    def _zoom(self, turn: TurnRecord, action: protocol.Zoom) -> bool:
        index = action.source_index()
        if index >= len(self.views):
            available = ", ".join(["original_image"] + [f"observation_{i}" for i in range(1, len(self.views))])
            return self._feedback_error(
                turn, f"'{action.source}' does not exist yet; the images you can zoom in are: {available}"
            )
        source = self.views[index]
        try:
            box = zoom_box_in_original(action.bbox, source.record.box, self.resize.max_aspect)
        except BoxError as error:
            return self._feedback_error(turn, f"invalid bbox_2d {list(action.bbox)} on {action.source}: {error}")
        shown = resize_for_model(crop(self.original, box), self.resize)
        record = ViewRecord(index=len(self.views), box=box, size=shown.size, source=index, relative_box=action.bbox)
        view = View(record, shown)
        action_number, observation_number = protocol.observation_label(
            len(self.trajectory.turns) - 1, record.index, self.limits.numbering
        )
        message = protocol.observation_message(view, action_number, observation_number)
        added = self._prompt_tokens([message])
        if self._context_full(self.context_tokens + added):
            return self._finish(Status.OVER_CONTEXT)
        self.views.append(view)
        self.trajectory.views.append(record)
        self._messages.append(message)
        self.context_tokens += added
        turn.feedback, turn.view, turn.label = "observation", record.index, (action_number, observation_number)
        return False

    def _feedback_error(self, turn: TurnRecord, error: str) -> bool:
        message = protocol.error_message(error)
        added = self._prompt_tokens([message])
        if self._context_full(self.context_tokens + added):
            return self._finish(Status.OVER_CONTEXT)
        self._messages.append(message)
        self.context_tokens += added
        turn.feedback, turn.error = "error", error
        return False

    def _context_full(self, tokens: int) -> bool:
        return tokens >= self.limits.max_context_tokens - self.limits.context_reserve

    def _finish(self, status: Status) -> bool:
        self.trajectory.status = status
        self.trajectory.context_tokens = self.context_tokens
        self.done = True
        return True

    def fail(self, message: str, kind: str = "policy") -> None:
        """End the episode as an error (the policy failed; see ERROR_KINDS); finished turns are kept."""
        self.trajectory.error = safe_text(message)
        self.trajectory.error_kind = kind
        self._finish(Status.ERROR)


_MAX_TOKENS = 10**12
"""Token counts at or over this are no counts (no context is this long)."""


def _count(value: Any) -> int | None:
    """A token count a server reported, or None when it is no count (a string, a float, a bool, negative, absurd)."""
    return value if type(value) is int and 0 <= value < _MAX_TOKENS else None


def _kind(action: protocol.Action) -> str:
    if isinstance(action, protocol.Zoom):
        return "zoom"
    if isinstance(action, protocol.Answer):
        return "answer"
    if isinstance(action, protocol.Malformed):
        return "malformed"
    return "none"


def replay_views(trajectory: Trajectory, original: Image.Image, resize: ResizePolicy = ResizePolicy()) -> list[Image.Image]:
    """The images a trajectory showed, recomputed from the original and the recorded boxes."""
    images = [resize_for_model(original, resize, first=True)]
    for view in trajectory.views[1:]:
        images.append(resize_for_model(crop(original, view.box), resize))
    return images
