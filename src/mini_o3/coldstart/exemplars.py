"""In-context exemplars: worked multi-turn searches shown to a generator model before each question.

An exemplar is a question about an image and the assistant turns that solve it, in the protocol
(`<think>...</think>` then a zoom or the answer). On disk, one JSON file per exemplar beside its
image (the built-in ones live in mini_o3/assets/exemplars):

    {"id": "ex02_trial_and_error", "patterns": ["trial_and_error", "depth_first"], "notes": "...",
     "image": "ex02_trial_and_error.jpg", "image_size": [1800, 1800],
     "question": "<question as the model sees it>", "answer": "<ground truth>", "options": {},
     "target_box": [x0, y0, x1, y1], "scene": {how the image was generated}, "turns": ["<think>...", ...]}

Crops are never stored: replaying the turns through a fresh ZoomEnv recomputes every
observation, so an exemplar always matches the environment and the resize policy in use.

`ExemplarPolicy` places k exemplars in the prompt as earlier turns of the same chat, after the
system prompt: each exemplar's first user turn opens with EXEMPLAR_INTRO, its assistant turns
and observation turns (with their images) follow, and the real question's first user turn
opens with EXEMPLAR_SEPARATOR. Only the wrapped policy sees them; the environment, and so the
saved trajectory, holds the plain protocol conversation.

Patterns are read off a trajectory by `classify_patterns`: depth_first (a zoom into an
observation), trial_and_error (a zoom that goes back to the original or an earlier observation
instead of the newest one), goal_maintenance (thoughts after the first restate what is sought,
in at least half the turns between the first and the last), direct (no zoom).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from mini_o3.agent import protocol
from mini_o3.agent.loop import EpisodeConfig
from mini_o3.agent.sample import Sample
from mini_o3.agent.env import ZoomEnv
from mini_o3.agent.policy import Generation, Policy, SamplingParams
from mini_o3.eval.scoring import score_answer
from mini_o3.agent.trajectory import Status, Trajectory

EXEMPLAR_INTRO = "Here is a solved example of searching a high-resolution image by zooming in step by step.\n"
"""Opens each exemplar's first user turn in an in-context prompt."""
EXEMPLAR_SEPARATOR = "That was an example. Now solve a new task in the same way, with the same output format.\n"
"""Opens the real question's first user turn when exemplars come before it."""
_GOAL_RE = re.compile(
    r"\b(?:looking for|searching for|search for|still need|need to find|have to find|must find|the goal|remember|"
    r"the target (?:is|must|should)|what i need|what i'm after|what i am after|i'm after|the question (?:is|asks)|sought)\b",
    re.IGNORECASE,
)
"""Phrases that restate what is sought (goal maintenance), as the exemplars and the oracle write them."""
_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass
class Exemplar:
    """A worked multi-turn example: a question about an image and the assistant turns that solve it."""

    id: str
    sample: Sample
    turns: list[str]
    """The assistant texts, in the protocol (each `<think>...</think>` then an action)."""
    patterns: list[str] = field(default_factory=list)
    """What it shows: depth_first, trial_and_error, goal_maintenance."""
    target_box: tuple[float, float, float, float] | None = None
    """The target in original pixels, for checks."""
    _messages: dict[tuple[Any, ...], list[dict[str, Any]]] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def replay(self, config: EpisodeConfig = EpisodeConfig()) -> ZoomEnv:
        """Run the turns through a fresh ZoomEnv (every crop recomputed); the finished environment."""
        env = ZoomEnv(self.sample, config.limits, config.resize, pixel_limit=config.pixel_limit)
        for text in self.turns:
            if env.done:
                break
            env.step(Generation(text))
        return env

    def messages(self, config: EpisodeConfig = EpisodeConfig()) -> list[dict[str, Any]]:
        """The exemplar's conversation without the system prompt, images as views (cached per config)."""
        key = (config.limits.max_turns, config.limits.numbering, config.resize)
        with self._lock:
            if key not in self._messages:
                self._messages[key] = self.replay(config).messages()[1:]
            return self._messages[key]

    @classmethod
    def from_file(cls, path: str | Path) -> "Exemplar":
        """Read an exemplar JSON file (its image path is relative to the file)."""
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable exemplar JSON file ({error})") from None
        missing = [key for key in ("id", "image", "question", "answer", "turns") if key not in record]
        if missing:
            raise ValueError(f"{path}: exemplar is missing {', '.join(missing)}")
        options = dict(record.get("options") or {})
        box = record.get("target_box")
        sample = Sample(
            id=f"exemplar/{record['id']}",
            image=path.parent / record["image"],
            question=record["question"],
            answer=str(record["answer"]),
            options=options,
            source="mini_o3_exemplar",
            boxes=[tuple(box)] if box else [],
        )
        return cls(record["id"], sample, list(record["turns"]), list(record.get("patterns", [])), tuple(box) if box else None)

    @classmethod
    def from_trajectory(cls, trajectory: Trajectory, sample: Sample) -> "Exemplar":
        """An accepted trajectory as an exemplar for later rounds."""
        run = int(trajectory.meta.get("run", 0))
        return cls(
            f"{trajectory.sample_id}__r{run}",
            sample,
            [turn.text for turn in trajectory.turns],
            classify_patterns(trajectory),
        )


def builtin_exemplar_dir() -> Path:
    """The folder of the exemplars that ship with mini-o3."""
    return Path(str(resources.files("mini_o3") / "assets" / "exemplars"))


def load_exemplars(directory: str | Path | None = None) -> list[Exemplar]:
    """Every `*.json` exemplar in `directory` (default: the built-in ones), sorted by file name."""
    folder = Path(directory) if directory is not None else builtin_exemplar_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"exemplar folder not found: {folder}")
    exemplars = [Exemplar.from_file(path) for path in sorted(folder.glob("*.json"))]
    if not exemplars:
        raise ValueError(f"no exemplar *.json files in {folder}")
    return exemplars


def check_exemplar(exemplar: Exemplar, config: EpisodeConfig = EpisodeConfig()) -> list[str]:
    """What is wrong with an exemplar when replayed (empty when it is good)."""
    env = exemplar.replay(config)
    trajectory = env.trajectory
    problems = []
    if len(trajectory.turns) != len(exemplar.turns):
        problems.append(f"the episode ended after {len(trajectory.turns)} of {len(exemplar.turns)} turns")
    problems += [f"turn {number}: {reason}" for number, reason in format_problems(trajectory, require_think=True)]
    if trajectory.status is not Status.ANSWERED:
        problems.append(f"ends as {trajectory.status.value}, not answered")
    elif not score_answer(trajectory.answer, exemplar.sample.answer, exemplar.sample.options or None).correct:
        problems.append(f"answers {trajectory.answer!r}, the ground truth is {exemplar.sample.answer!r}")
    if exemplar.target_box is not None and trajectory.num_zooms:
        x0, y0, x1, y1 = exemplar.target_box
        x1, y1 = min(x1, trajectory.image_size[0] - 1), min(y1, trajectory.image_size[1] - 1)
        if not any(v.box[0] <= x0 and v.box[1] <= y0 and v.box[2] >= x1 and v.box[3] >= y1 for v in trajectory.views[1:]):
            problems.append(f"no zoom holds the target {exemplar.target_box}")
    found = set(classify_patterns(trajectory))
    problems += [f"claims pattern {name} but does not show it" for name in exemplar.patterns if name not in found]
    return problems


class ExemplarPolicy:
    """Wraps a policy: prepends k exemplar conversations to every prompt.

    Bound per episode (like the oracle): the exemplars are drawn once per (sample, run) from
    the pool by `seed`, never the sample's own; the inner policy sees
    [system, exemplar 1 turns..., exemplar k turns..., the real conversation], the first
    real user turn opening with EXEMPLAR_SEPARATOR. The environment keeps the plain
    conversation. `prompt_tokens` of the inner policy's reply are dropped (they count the
    exemplars; the environment estimates the real context itself). Per-turn sampling seeds
    come from wrapping this in `mini_o3.policies.seeded.SeededPolicy` (outside, so that the
    exemplars' assistant turns do not count as turns).
    """

    def __init__(
        self,
        inner: Policy,
        exemplars: Sequence[Exemplar],
        per_prompt: int = 2,
        seed: int | None = 0,
        episode: EpisodeConfig = EpisodeConfig(),
    ) -> None:
        self.inner = inner
        self.exemplars = list(exemplars)
        self.per_prompt = per_prompt
        self.seed = seed
        self.episode = episode

    def bind(self, sample: Sample, run: int = 0) -> "_BoundExemplarPolicy":
        """The wrapper for run `run` of `sample`."""
        inner = self.inner.bind(sample, run=run) if hasattr(self.inner, "bind") else self.inner
        pool = [exemplar for exemplar in self.exemplars if exemplar.sample.id != sample.id]
        chosen = _draw(pool, self.per_prompt, f"{self.seed}:{sample.id}:{run}")
        prefix: list[dict[str, Any]] = []
        for exemplar in chosen:
            messages = [dict(message) for message in exemplar.messages(self.episode)]
            messages[0] = {"role": "user", "content": [protocol.text_part(EXEMPLAR_INTRO)] + list(messages[0]["content"])}
            prefix += messages
        return _BoundExemplarPolicy(inner, prefix, [exemplar.id for exemplar in chosen])

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """Unbound use: no exemplars chosen yet, so bind to a placeholder sample first."""
        return self.bind(Sample(id="", image="", question="", answer="")).generate(messages, sampling)

    def __getattr__(self, name: str) -> Any:  # count_tokens and the like come from the inner policy
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class _BoundExemplarPolicy:
    def __init__(self, inner: Policy, prefix: list[dict[str, Any]], ids: list[str]) -> None:
        self.inner = inner
        self.prefix = prefix
        self.exemplar_ids = ids

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        prompt = list(messages)
        if self.prefix and len(prompt) >= 2:
            first = prompt[1]
            prompt = [prompt[0], *self.prefix, {"role": first["role"], "content": [protocol.text_part(EXEMPLAR_SEPARATOR)] + list(first["content"])}, *prompt[2:]]
        generation = self.inner.generate(prompt, sampling)
        if self.prefix:
            generation.prompt_tokens = None
        return generation

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _draw(pool: list[Exemplar], count: int, key: str) -> list[Exemplar]:
    ranked = sorted(pool, key=lambda exemplar: hashlib.blake2b(f"{key}\x00{exemplar.id}".encode(), digest_size=8).digest())
    return ranked[: min(count, len(ranked))]


# ---------------------------------------------------------------- patterns and format


def classify_patterns(trajectory: Trajectory) -> list[str]:
    """The search patterns a trajectory shows: direct, depth_first, trial_and_error, goal_maintenance."""
    if trajectory.num_zooms == 0:
        return ["direct"]
    found = []
    views = trajectory.views
    if any(view.source not in (None, 0) for view in views[1:]):
        found.append("depth_first")
    if any(view.source is not None and view.source != view.index - 1 for view in views[2:]):
        found.append("trial_and_error")
    # Goal maintenance: later thoughts restate what is sought, in at least half the middle turns.
    restated = sum(1 for turn in trajectory.turns[1:] if _GOAL_RE.search(_thought_text(turn.text)))
    if restated >= max(1, (trajectory.num_turns - 2) // 2):
        found.append("goal_maintenance")
    return found


def _thought_text(text: str) -> str:
    match = _THINK_RE.search(text)
    return match.group(0) if match else ""


def format_problems(trajectory: Trajectory, require_think: bool = True) -> list[tuple[int, str]]:
    """(turn number, what is wrong) for every turn that breaks the protocol."""
    problems = []
    for number, turn in enumerate(trajectory.turns, 1):
        if turn.kind == "malformed":
            problems.append((number, "malformed action"))
        if turn.feedback == "error":
            problems.append((number, f"error turn: {turn.error}"))
        if turn.finish_reason == "length":
            problems.append((number, "cut by the token limit"))
        if require_think:
            thought = _THINK_RE.search(turn.text)
            action_at = min([at for at in (turn.text.find("<grounding>"), turn.text.find("<answer>")) if at >= 0] or [len(turn.text)])
            if thought is None or thought.start() > action_at or not thought.group(0)[7:-8].strip():
                problems.append((number, "no <think>...</think> before the action"))
    return problems


__all__ = [
    "EXEMPLAR_INTRO",
    "EXEMPLAR_SEPARATOR",
    "Exemplar",
    "ExemplarPolicy",
    "builtin_exemplar_dir",
    "check_exemplar",
    "classify_patterns",
    "format_problems",
    "load_exemplars",
]
