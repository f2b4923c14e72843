"""Deterministic policies that follow a script: pre-written turns, or a function of the messages.

They are real policies (thread-safe, honouring the stop string) for tests, benchmarks and the
served fakes, not mocks: a script of a zoom then an answer drives a real episode end to end.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

from mini_o3.agent import protocol
from mini_o3.agent.env import approximate_tokens, image_tokens, message_tokens
from mini_o3.agent.images import as_pil
from mini_o3.agent.policy import Generation, PolicyError, SamplingParams

Script = Sequence[str] | Callable[[list[dict[str, Any]]], "str | Generation"]


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A tokenizer-free estimate of a conversation's prompt tokens (the environment's own rule)."""
    return message_tokens(messages, approximate_tokens, lambda image: image_tokens(*as_pil(image).size))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to and including the first stop string it contains (all of it when none)."""
    cut = None
    for string in stop:
        at = text.find(string) if string else -1
        if at >= 0 and (cut is None or at + len(string) < cut):
            cut = at + len(string)
    return text if cut is None else text[:cut]


def assistant_turns(messages: list[dict[str, Any]]) -> int:
    """How many assistant turns the conversation already holds (the index of the next one)."""
    return sum(1 for message in messages if message["role"] == "assistant")


class ScriptedPolicy:
    """A policy that plays a script: turn i of every episode is `script[i]`, or `script(messages)`.

    A list script is indexed by the number of assistant turns already in the conversation, so
    one policy serves many concurrent episodes. Asking for a turn past the end of a list
    raises PolicyError. `delay_s` sleeps before each turn (a stand-in for model latency).
    """

    def __init__(self, script: Script, delay_s: float = 0.0) -> None:
        if not callable(script):
            script = list(script)
            if not script or not all(isinstance(turn, str) for turn in script):
                raise ValueError("a list script must hold at least one turn, each a string")
        self.script = script
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    @classmethod
    def zoom_then_answer(
        cls,
        boxes: Sequence[tuple[float, float, float, float]],
        answer: str,
        sources: Sequence[str] | None = None,
    ) -> "ScriptedPolicy":
        """A script that zooms into each box in turn (on `sources[i]`, default the original), then answers."""
        sources = list(sources) if sources is not None else [protocol.ORIGINAL_SOURCE] * len(boxes)
        if len(sources) != len(boxes):
            raise ValueError(f"got {len(boxes)} boxes and {len(sources)} sources; give one source per box")
        turns = [
            f"<think>Zoom {i + 1}.</think>" + protocol.render_zoom(protocol.Zoom(tuple(box), source))
            for i, (box, source) in enumerate(zip(boxes, sources))
        ]
        turns.append("<think>Found it.</think>" + protocol.render_answer(answer))
        return cls(turns)

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """The script's next turn for `messages`, cut at the first stop string."""
        started = time.perf_counter()
        with self._lock:
            self.calls += 1
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        if callable(self.script):
            produced = self.script(messages)
        else:
            index = assistant_turns(messages)
            if index >= len(self.script):
                raise PolicyError(
                    f"the script has {len(self.script)} turns and turn {index + 1} was asked for; "
                    "add turns or end the script with an answer"
                )
            produced = self.script[index]
        if isinstance(produced, Generation):
            generation = produced
        else:
            generation = Generation(text=cut_at_stop(str(produced), sampling.stop))
        if generation.prompt_tokens is None:
            generation.prompt_tokens = count_prompt_tokens(messages)
        if generation.completion_tokens is None:
            generation.completion_tokens = approximate_tokens(generation.text)
        generation.latency_s = time.perf_counter() - started
        return generation


def echo_turn(messages: list[dict[str, Any]]) -> str:
    """A turn that reports what the policy was shown and answers with the last user text."""
    sizes = []
    last_text = ""
    for message in messages:
        for part in message["content"]:
            if part["type"] == "image":
                width, height = as_pil(part["image"]).size
                sizes.append(f"{width}x{height}")
            elif message["role"] == "user":
                last_text = part["text"]
    shown = ", ".join(sizes) if sizes else "no image"
    return f"<think>{len(messages)} messages; images: {shown}.</think>" + protocol.render_answer(last_text.strip())


class EchoPolicy(ScriptedPolicy):
    """A policy that describes its input (message count, image sizes) and answers with the last user text."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(echo_turn, delay_s)
