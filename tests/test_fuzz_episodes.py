"""10,000 generated hostile model replies through the real episode loop and the real store (issue 13).

A seeded generator writes what a broken, adversarial or merely unlucky model could send:
unclosed and nested tags, several actions in one turn, groundings whose numbers are huge,
non-finite or not numbers, sources that name nothing, unicode of every kind including lone
surrogates and NUL, and now and then a very long reply. A scripted policy plays them through
`run_episodes` (threads, as every job runs) and `TrajectoryStore` saves each episode. Nothing may
escape, no episode may end in `error` (that is how the loop reports an exception inside an
episode), and every episode must be on disk as strict JSON that reads back to what ran.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mini_o3.agent.env import Limits
from mini_o3.agent.images import ResizePolicy
from mini_o3.agent.loop import EpisodeConfig, run_episodes
from mini_o3.agent.policy import Generation, SamplingParams
from mini_o3.agent.sample import Sample
from mini_o3.agent.store import TrajectoryStore
from mini_o3.agent.trajectory import Status, read_jsonl
from mini_o3.jsonl import safe_text

REPLIES = 10_000
SEED = 20261204

NUMBERS = [
    "0", "0.25", "1", "0.5", "-0.2", "1.5", "1e-3", ".3", "7", "-0", "1e2", "0.999999999999999999999",
    "9" * 400, "-" + "9" * 400, "1e308", "-1e308", "1.7976931348623157e308", "1e999", "NaN", "Infinity", "-Infinity",
    '"0.4"', '"1e999"', '"nan"', '"top"', "true", "null", "[0.1]", "{}", '"\\udc80"', "0x10", "1_000",
]
SOURCES = [
    "original_image", "observation_1", "observation_2", "observation_0", "observation_-1", "observation_" + "9" * 30,
    "observation_" + "7" * 5000, " observation_1 ", "image_1", "", "\\udc80", "\\ud83d\\ude00", "observation_١",
]
UNICODE = [
    "é", "中文", "😀", "\u200b", "\u202e", "e\u0301", "\ufeff", "\x00", "\x07", "\n", "\t", "\r\n", "\ud800", "\udfff",
    "\udc80\udc81", "\ud83d", "\ude00", "<", ">", "&", '"', "'", "\\", "{", "}", "[", "]", ",", ":",
]
TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<grounding>", "</grounding>", "<answer", "</grounding", "<<grounding>>"]


def words(rng: random.Random, count: int) -> str:
    """Prose salted with unicode of every kind, lone surrogates included."""
    pieces = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.55:
            pieces.append(rng.choice(["the", "sign", "red", "zoom", "left", "I", "see", "answer", "bbox_2d", "source", "0.3"]))
        elif roll < 0.9:
            pieces.append(rng.choice(UNICODE))
        else:
            pieces.append(rng.choice(TAGS))
    return " ".join(pieces)


def grounding_body(rng: random.Random) -> str:
    """The inside of a <grounding>: the intended JSON, a near miss, or something else."""
    numbers = [rng.choice(NUMBERS) if rng.random() < 0.4 else f"{rng.uniform(-0.2, 1.2):.3f}" for _ in range(rng.choice([4, 4, 4, 3, 5, 0, 8]))]
    source = rng.choice(SOURCES)
    form = rng.randrange(10)
    if form >= 8:  # what a working model writes, so that episodes go deep into observations
        x0, y0 = rng.uniform(0, 0.6), rng.uniform(0, 0.6)
        box = [x0, y0, x0 + rng.uniform(0.2, 0.4), y0 + rng.uniform(0.2, 0.4)]
        named = rng.choice(["original_image", "original_image", "observation_1"])
        return f'{{"bbox_2d": [{", ".join(f"{v:.2f}" for v in box)}], "source": "{named}"}}'
    if form == 0:
        return f'{{"bbox_2d": [{", ".join(numbers)}], "source": "{source}"}}'
    if form == 1:  # single quotes, a trailing comma, no quotes on keys: the tolerant scan's cases
        return f"{{'bbox_2d': [{', '.join(numbers)}], 'source': '{source}',}}"
    if form == 2:
        return f"bbox_2d: [{', '.join(numbers)}], source: {source}"
    if form == 3:  # nested and repeated keys
        return f'{{"bbox_2d": {{"bbox_2d": [{", ".join(numbers)}]}}, "source": ["{source}"], "bbox": [{", ".join(numbers)}]}}'
    if form == 4:
        return "[" * rng.randrange(1, 3000) + "]" * rng.randrange(0, 3)
    if form == 5:
        return f'{{"bbox_2d": [{", ".join(numbers)}], "source": "{source}"' + words(rng, rng.randrange(0, 6))  # unclosed
    if form == 6:
        return words(rng, rng.randrange(0, 12))
    return f'```json\n{{"bbox_2d": [{", ".join(numbers)}]}}\n```'


def hostile_reply(rng: random.Random) -> str:
    """One assistant turn: thoughts, zero to several actions, stray tags, sometimes very long."""
    parts = []
    if rng.random() < 0.8:
        parts.append("<think>" + words(rng, rng.randrange(0, 20)) + ("</think>" if rng.random() < 0.8 else ""))
    if rng.random() < 0.1:
        parts.append("<think><think>" + words(rng, 3) + "</think>")  # nested
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):  # several actions in one turn
        kind = rng.random()
        if kind < 0.6:
            close = rng.choice(["</grounding>", "</grounding>", "</grounding>", "", "</grounding", "<grounding>"])
            parts.append("<grounding>" + grounding_body(rng) + close)
        elif kind < 0.9:
            parts.append("<answer>" + words(rng, rng.randrange(0, 5)) + rng.choice(["</answer>", "</answer>", "", "<answer>"]))
        else:
            parts.append(rng.choice(TAGS) * rng.randrange(1, 50))
    if rng.random() < 0.01:  # a very long reply: a runaway generation, or a repeated tag
        parts.append(rng.choice(["<answer>", "<grounding>bbox:[", "1", "\udc80", "é", "{"]) * rng.randrange(20_000, 120_000))
    rng.shuffle(parts)
    return "".join(parts)


class HostilePolicy:
    """Plays generated replies: turn t of episode n is the same whatever thread asks, so every run is the same."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.lock = threading.Lock()
        self.given = 0

    def generate(self, messages: list, sampling: SamplingParams) -> Generation:
        episode = messages[1]["content"][-1]["text"].split(":", 1)[0].strip()
        turn = sum(1 for message in messages if message["role"] == "assistant")
        rng = random.Random(f"{self.seed}/{episode}/{turn}")
        with self.lock:
            self.given += 1
        return Generation(hostile_reply(rng), finish_reason=rng.choice(["stop", "length", "\udc80", ""]))


@pytest.mark.slow
def test_ten_thousand_hostile_replies_never_break_an_episode_or_a_save(tmp_path: Path) -> None:
    play(tmp_path, REPLIES, SEED)


def test_a_thousand_hostile_replies_never_break_an_episode_or_a_save(tmp_path: Path) -> None:
    play(tmp_path, REPLIES // 10, SEED + 1)  # the same check at a tenth of the size, in the fast suite


def play(tmp_path: Path, replies: int, seed: int) -> None:
    """Play at least `replies` hostile replies through run_episodes and the store, and check what was saved."""
    image = tmp_path / "photo.png"
    Image.effect_noise((96, 64), 60).convert("RGB").save(image)
    config = EpisodeConfig(limits=Limits(max_turns=6), resize=ResizePolicy(max_pixels=12_000, min_pixels=784))
    policy = HostilePolicy(seed)
    scale = replies / REPLIES

    def jobs():
        number = 0
        while policy.given < replies:  # read lazily: stop once the replies asked for have been played
            question = f"episode {number}: what does the sign say? " + words(random.Random(number), 4)
            yield Sample(id=f"fuzz-{number}", image=image, question=question, answer="red\udc80"), 0
            number += 1

    statuses: Counter = Counter()
    kinds: Counter = Counter()
    feedback: Counter = Counter()
    ran = {}
    with TrajectoryStore(tmp_path / "run") as store:
        for episode in run_episodes(policy, jobs(), config, concurrency=2):
            saved = store.add(episode)
            statuses[saved.status] += 1
            kinds.update(turn.kind for turn in saved.turns)
            feedback.update(turn.feedback for turn in saved.turns)
            ran[saved.sample_id] = [turn.text for turn in saved.turns]

    assert policy.given >= replies
    assert statuses[Status.ERROR] == 0, [t.error for t in read_jsonl(store.path) if t.status is Status.ERROR][:3]
    # The generator reaches every branch: each action kind, both kinds of feedback, every ending.
    assert min(kinds[kind] for kind in ("zoom", "answer", "malformed", "none")) >= 200 * scale, kinds
    assert feedback["observation"] >= 500 * scale and feedback["error"] >= 1000 * scale, feedback
    assert {Status.ANSWERED, Status.NO_ANSWER, Status.OVER_TURN} <= set(statuses), statuses

    lines = store.path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(ran) == sum(statuses.values())
    for line in lines[:-1]:
        json.loads(line.decode("utf-8"), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    loaded = list(read_jsonl(store.path))
    assert {t.sample_id: [turn.text for turn in t.turns] for t in loaded} == ran
    assert sum(len(texts) for texts in ran.values()) == policy.given  # every reply given was saved
    assert all(text == safe_text(text) for texts in ran.values() for text in texts)
