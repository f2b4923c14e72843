"""Every string the model sees or emits: prompts, the action grammar, rendering and parsing.

Byte-exact with the released Mini-o3 checkpoint (shared/reference/mini-o3.md section 2),
typos included ("outputing", "the the", "Countinue"). Strict in what we render, tolerant
in what we parse, and never `eval` of model output.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the user's question based on the image provided. "
    "Output your thinking process within the <think> and </think> tags. Whenever you find "
    "anything unclear, you can zoom in a specific region in the given image to see more "
    'clearly by outputing <grounding>{"bbox_2d": [x0, y0, x1, y1], "source": "original_image"}'
    "</grounding>, where (x0, y0) and (x1, y1) are the top-left and bottom-right coordinates "
    "of the region that you want to zoom in, respectively (suppose the width and height of "
    "the image are 1.0), and 'source' refers to the image that you zoom in and could be "
    "either 'original_image' or 'observation_i'. Once the final answer is confirmed, put it "
    "within <answer> and </answer>."
)

DIRECT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the user's question based on the image provided. "
    "Output your thinking process within the <think> and </think> tags. Once the final answer "
    "is confirmed, put it within <answer> and </answer>."
)
"""SYSTEM_PROMPT without its zoom sentence: the no-zoom baseline's prompt (one turn, no tool offered)."""

STOP_STRING = "</grounding>"
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
ORIGINAL_SOURCE = "original_image"

OBSERVATION_HEAD = "After the above Action {action}, here is the the zoom-in image (Observation {observation}):\n"
OBSERVATION_TAIL = (
    ".\nContinue your reasoning process inside <think> and </think>. If needed, you can "
    "continue to zoom in on the original image or any of the observations, by outputting "
    "<grounding> and </grounding> as before. If the final answer is confirmed, put your "
    "final answer inside <answer> and </answer>."
)
ERROR_HEAD = "ERROR occurs during grounding. Error Information: {error}.\n"
ERROR_TAIL = (
    "Please analyze the error information obtained from the function tool and adjust your "
    "response. Countinue your reasoning process inside <think> and </think>."
)
MULTIPLE_CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
"""V* Bench's own closing line for multiple-choice questions; we use it for every MC benchmark."""
ACTION_EXAMPLE = '<grounding>{"bbox_2d": [x0, y0, x1, y1], "source": "original_image"}</grounding>'

Numbering = Literal["reference", "consistent"]
"""How observation labels are numbered.

"reference": the label is 1 + the index of the assistant turn, error turns included, as the
released checkpoint was trained (after an error turn the label and `observation_N` disagree).
"consistent": the label is the number of the crop, so "Observation N" is `observation_N`.
"""


# ---------------------------------------------------------------- rendering


def question_from_problem(problem: str) -> str:
    """Strip the Mini-o3 data files' leading `<image>` placeholder from a problem."""
    text = problem
    if text.startswith("<image>"):
        text = text[len("<image>") :]
        if text.startswith("\n"):
            text = text[1:]
    return text


def observation_label(action_index: int, crop_number: int, numbering: Numbering = "reference") -> tuple[int, int]:
    """(Action t, Observation n) shown after a zoom at assistant turn `action_index` producing crop `crop_number`."""
    if numbering == "reference":
        return action_index, action_index + 1
    return crop_number - 1, crop_number


def observation_text_parts(action: int, observation: int) -> tuple[str, str]:
    """The text before and after the crop in an observation turn."""
    return OBSERVATION_HEAD.format(action=action, observation=observation), OBSERVATION_TAIL


def error_text(error: str) -> str:
    """The user turn that reports a malformed action back to the model."""
    return ERROR_HEAD.format(error=error) + ERROR_TAIL


def text_part(text: str) -> dict[str, Any]:
    """A chat-message text content part."""
    return {"type": "text", "text": text}


def image_part(image: Any) -> dict[str, Any]:
    """A chat-message image content part holding an image object (a view, a PIL image, a path)."""
    return {"type": "image", "image": image}


def system_message() -> dict[str, Any]:
    """The system message."""
    return {"role": "system", "content": [text_part(SYSTEM_PROMPT)]}


def first_user_message(image: Any, question: str) -> dict[str, Any]:
    """The first user turn: the image, then a newline and the question."""
    return {"role": "user", "content": [image_part(image), text_part("\n" + question)]}


def assistant_message(text: str, token_ids: list[int] | None = None) -> dict[str, Any]:
    """An assistant turn holding the model's raw text and, when the policy reported them, the ids it sampled.

    A local policy continues the conversation from `token_ids` (not the text re-tokenised), so
    the next turn's prompt holds exactly the ids that were sampled and that training sees.
    """
    message: dict[str, Any] = {"role": "assistant", "content": [text_part(text)]}
    if token_ids:
        message["token_ids"] = list(token_ids)
    return message


def observation_message(image: Any, action: int, observation: int) -> dict[str, Any]:
    """The user turn that shows a zoom result."""
    head, tail = observation_text_parts(action, observation)
    return {"role": "user", "content": [text_part(head), image_part(image), text_part(tail)]}


def error_message(error: str) -> dict[str, Any]:
    """The user turn that shows a grounding error."""
    return {"role": "user", "content": [text_part(error_text(error))]}


def render_messages(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """Render chat messages as the Qwen2.5-VL chat template does, one pad token per image."""
    out = []
    for message in messages:
        body = "".join(
            IMAGE_PLACEHOLDER if part["type"] == "image" else part["text"] for part in message["content"]
        )
        out.append(f"<|im_start|>{message['role']}\n{body}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Zoom:
    """A zoom action: a box relative (0..1) to the source image, and the source's name."""

    bbox: tuple[float, float, float, float]
    source: str = ORIGINAL_SOURCE

    def source_index(self) -> int:
        """0 for the original image, N for `observation_N`."""
        return source_index(self.source)


@dataclass(frozen=True)
class Answer:
    """A final answer."""

    text: str


@dataclass(frozen=True)
class Malformed:
    """An action the model tried to write and got wrong; `error` is shown to the model."""

    error: str


@dataclass(frozen=True)
class NoAction:
    """A turn with neither a zoom nor an answer: it ends the episode without an answer."""


Action = Zoom | Answer | Malformed | NoAction


class SourceError(ValueError):
    """A `source` that names no image."""


def source_index(source: str) -> int:
    """Map `original_image` to 0 and `observation_N` (N >= 1) to N; raise SourceError otherwise."""
    name = source.strip()
    if name == ORIGINAL_SOURCE:
        return 0
    # At most 9 digits: int() of thousands of digits is slow, and past 4,300 it raises.
    match = re.fullmatch(r"observation_0*(\d{1,9})", name)
    if match and int(match.group(1)) >= 1:
        return int(match.group(1))
    raise SourceError(
        f"'source' must be 'original_image' or 'observation_N' with N >= 1, got {_clip(repr(source))}"
    )


# Every rule below runs in time linear in the reply: tags are found with str.find, and each
# pattern can fail at a position only after reading what no other position will read again
# (`_NUMBER_RE` has one way to split digits; the old `\d+\.?\d*` had n, and a reply of digits
# took seconds). tests/test_protocol.py checks this on adversarial replies of 200 KB.
GROUNDING_OPEN = "<grounding>"
"""The tag that opens an action (generation stops at STOP_STRING, which closes it)."""
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_LONGEST_NUMBER = 64
"""Longer strings are no coordinate (a float has 17 significant digits)."""
_BBOX_KEY_RE = re.compile(r"""["']?bbox(?:_2d)?["']?\s*:\s*\[""")
_SOURCE_RE = re.compile(r"""["']?source["']?\s*:\s*["']([^"']*)["']""")


def extract_answer(text: str) -> str | None:
    """The text inside the last complete `<answer>...</answer>`, stripped; None when there is none.

    The last, as the released multiple-choice reward reads it (findall, then the final match):
    a model that changes its mind answers with its final block.
    """
    # The blocks the reference's findall(r"<answer>(.*?)</answer>") finds, walked with str.find so
    # the time is linear: a block opens at the next <answer> and closes at the first </answer>
    # after it; when an <answer> has no </answer> after it, no later one has either.
    found, position = None, 0
    while True:
        start = text.find(ANSWER_OPEN, position)
        if start < 0:
            break
        end = text.find(ANSWER_CLOSE, start + len(ANSWER_OPEN))
        if end < 0:
            break
        found, position = text[start + len(ANSWER_OPEN) : end], end + len(ANSWER_CLOSE)
    return None if found is None else found.strip()


def parse_action(text: str) -> Action:
    """Parse one assistant turn into a Zoom, an Answer, a Malformed action or NoAction.

    As the reference: a turn with a `<grounding>` is an action (generation stops at
    `</grounding>`, so an `<answer>` earlier in the same turn, even inside the thought, does
    not end the episode); only a turn without one is read for `<answer>...</answer>`, and an
    unclosed `<answer>` is no answer. Of several groundings the first counts; text after the
    first `</grounding>` is ignored.
    """
    grounding_at = text.find(GROUNDING_OPEN)
    if grounding_at < 0:
        answer = extract_answer(text)
        return NoAction() if answer is None else Answer(answer)
    body = text[grounding_at + len(GROUNDING_OPEN) :]
    close = body.find(STOP_STRING)
    if close >= 0:
        body = body[:close]
    return _parse_grounding_body(body)


def _parse_grounding_body(body: str) -> Action:
    payload = body.strip()
    if not payload:
        return Malformed(f"the <grounding> tag is empty; write {ACTION_EXAMPLE}")
    fields = _loads_tolerant(payload)
    if fields is None:
        fields = _scan_fields(payload)
    if fields is None:
        return Malformed(
            f"the content of <grounding> is not valid JSON ({_clip(payload)}); write it as "
            f'{{"bbox_2d": [x0, y0, x1, y1], "source": "original_image"}}'
        )
    return _zoom_from_fields(fields)


def _loads_tolerant(payload: str) -> dict[str, Any] | None:
    start, end = payload.find("{"), payload.rfind("}")
    if start < 0 or end <= start:
        return None
    candidate = payload[start : end + 1]
    for attempt in (candidate, candidate.replace("'", '"'), re.sub(r",\s*([}\]])", r"\1", candidate.replace("'", '"'))):
        try:
            value = json.loads(attempt)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _scan_fields(payload: str) -> dict[str, Any] | None:
    key = _BBOX_KEY_RE.search(payload)
    if key is None:
        return None
    # The first key's list ends at the next "]"; when it has none, no later key's list has one.
    close = payload.find("]", key.end())
    if close < 0:
        return None
    # Five pieces at most: a fifth means too many numbers, and splitting a huge list would cost time for nothing.
    items = payload[key.end() : close].split(",", 4)
    fields: dict[str, Any] = {"bbox_2d": [item.strip().strip("'\"") for item in items]}
    source = _SOURCE_RE.search(payload)
    if source is not None:
        fields["source"] = source.group(1)
    return fields


def _zoom_from_fields(fields: dict[str, Any]) -> Action:
    raw_box = fields.get("bbox_2d", fields.get("bbox"))
    if raw_box is None:
        return Malformed('the grounding JSON has no "bbox_2d" key; write {"bbox_2d": [x0, y0, x1, y1], "source": "original_image"}')
    if not isinstance(raw_box, (list, tuple)) or len(raw_box) != 4:
        return Malformed(f'"bbox_2d" must be a list of 4 numbers [x0, y0, x1, y1], got {_clip(json.dumps(raw_box, default=str))}')
    box = []
    for item in raw_box:
        number = _as_number(item)
        if number is None:
            return Malformed(f'"bbox_2d" must hold 4 numbers between 0 and 1, got {_clip(json.dumps(raw_box, default=str))}; write each as a plain finite number such as 0.25')
        box.append(number)
    source = fields.get("source", ORIGINAL_SOURCE)
    if not isinstance(source, str):
        return Malformed(f"'source' must be a string such as 'original_image' or 'observation_1', got {_clip(json.dumps(source, default=str))}")
    try:
        source_index(source)
    except SourceError as error:
        return Malformed(str(error))
    return Zoom((box[0], box[1], box[2], box[3]), source.strip())


def _as_number(item: Any) -> float | None:
    """A finite float, or None: NaN, infinities and numbers past float's range are no coordinates."""
    if isinstance(item, bool):
        return None
    try:
        if isinstance(item, (int, float)):
            value = float(item)
        elif isinstance(item, str) and len(item) <= _LONGEST_NUMBER and _NUMBER_RE.fullmatch(item.strip()):
            value = float(item.strip())
        else:
            return None
    except OverflowError:  # an integer of hundreds of digits
        return None
    return value if math.isfinite(value) else None


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_zoom(zoom: Zoom) -> str:
    """The canonical text of a zoom action (what the exemplars and the oracle write)."""
    coords = ", ".join(_format_coordinate(value) for value in zoom.bbox)
    return f'<grounding>{{"bbox_2d": [{coords}], "source": "{zoom.source}"}}</grounding>'


def _format_coordinate(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def render_answer(answer: str) -> str:
    """The canonical text of a final answer."""
    return f"<answer>{answer}</answer>"
