"""The episode loop: one episode, or many at once, for every job (search, eval, collect, RL)."""

from __future__ import annotations

import queue
import sys
import threading
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from PIL import Image

from mini_o3.agent.sample import Sample
from mini_o3.agent.env import INFERENCE_LIMITS, Limits, TokenCounter, View, ZoomEnv
from mini_o3.agent.images import DEFAULT_IMAGE_PIXEL_LIMIT, ImageLoadError, ResizePolicy, open_image
from mini_o3.agent.policy import Policy, PolicyError, SamplingParams
from mini_o3.agent.trajectory import Status, Trajectory, TurnRecord
from mini_o3.jsonl import json_safe, safe_text


@dataclass(frozen=True)
class EpisodeConfig:
    """Everything that shapes an episode besides the policy and the sample."""

    limits: Limits = INFERENCE_LIMITS
    """Turn, image and context budgets."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """How each turn is sampled."""
    resize: ResizePolicy = field(default_factory=ResizePolicy)
    """How the original and the crops are sized for the model."""
    pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT
    """Refuse originals larger than this many pixels."""

    @classmethod
    def from_settings(
        cls,
        max_turns: int,
        max_images: int | None = None,
        max_context_tokens: int = 32_768,
        context_reserve: int = 2_000,
        numbering: str = "reference",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 8192,
        max_pixels: int = 2_000_000,
        min_pixels: int = 40_000,
        pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT,
    ) -> "EpisodeConfig":
        """The config from the flat settings that job configs (eval, collect, RL) carry."""
        return cls(
            limits=Limits(
                max_turns=max_turns,
                max_images=max_images,
                max_context_tokens=max_context_tokens,
                context_reserve=context_reserve,
                numbering=numbering,  # type: ignore[arg-type]
            ),
            sampling=SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens),
            resize=ResizePolicy(max_pixels=max_pixels, min_pixels=min_pixels),
            pixel_limit=pixel_limit,
        )


@dataclass
class Episode:
    """A finished episode: its trajectory and the images it showed (view i is `observation_i`)."""

    trajectory: Trajectory
    views: list[View]
    run: int = 0
    """Which of K sampled runs of the same sample this is."""


TurnCallback = Callable[[ZoomEnv, TurnRecord], None]

MANY_THREADS = 256
"""From this many episodes in flight, threads waiting for the GIL wake every 50 ms, not every 5."""
_SWITCH_INTERVAL_S = 0.05
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


def _slow_gil_switching(on: bool) -> None:
    # Each thread waiting for the GIL wakes every switch interval; 2,048 waiters at Python's 5 ms
    # made a futex storm (system CPU above user CPU, the client at 0.3-0.8 of its throughput) in
    # 3 of 4 runs of bench/bench_scale.py; at 50 ms it met its targets. First caller in sets it,
    # last one out restores it.
    global _switch_users, _switch_saved
    with _switch_lock:
        if on:
            if _switch_users == 0:
                _switch_saved = sys.getswitchinterval()
                sys.setswitchinterval(max(_switch_saved, _SWITCH_INTERVAL_S))
            _switch_users += 1
        else:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


class SharedOriginals:
    """Decoded originals shared by the episodes in flight: the K runs of a question decode its file once.

    At 2,048 episodes in flight a 3072x3072 original is 28 MB decoded, 70% of an episode's
    memory (bench/bench_scale.py); the runs of one question only read it (crop, resize). An
    image is kept while an episode holds it and dropped with the last one.
    """

    def __init__(self, pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT) -> None:
        self.pixel_limit = pixel_limit
        self._images: weakref.WeakValueDictionary[str, Image.Image] = weakref.WeakValueDictionary()
        self._gates: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, sample: Sample) -> Image.Image | None:
        """The sample's decoded original, shared; None for an in-memory image (the caller opens it)."""
        if not isinstance(sample.image, (str, Path)):
            return None
        key = str(sample.image)
        with self._lock:
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:  # one decode per file, however many runs ask at once
            image = self._images.get(key)
            if image is None:
                image = open_image(sample.image, self.pixel_limit)
                self._images[key] = image
            return image


def run_episode(
    policy: Policy,
    sample: Sample,
    config: EpisodeConfig = EpisodeConfig(),
    count_tokens: TokenCounter | None = None,
    on_turn: TurnCallback | None = None,
    run: int = 0,
    cancel: threading.Event | None = None,
    originals: SharedOriginals | None = None,
) -> Episode:
    """Run one episode to its end; failures become an `error` status, never an exception.

    A policy with a `bind(sample, run) -> Policy` method (the oracle, which reads the ground
    truth; wrappers that seed per episode) is bound to the episode first. Each turn may
    generate at most what is left of the context window. Setting `cancel` ends the episode
    as an error after the turn in progress. `originals` shares decoded images between episodes.
    """
    try:
        if hasattr(policy, "bind"):
            policy = policy.bind(sample, run=run)
        counter = count_tokens or getattr(policy, "count_tokens", None)
        env = ZoomEnv(
            sample, config.limits, config.resize, counter, config.pixel_limit,
            original=originals.get(sample) if originals is not None else None,
            count_image_tokens=getattr(policy, "image_tokens", None),
        )
    except ImageLoadError as error:
        return Episode(_failed_trajectory(sample, str(error), run, "image"), [], run)
    except (ValueError, PolicyError) as error:
        return Episode(_failed_trajectory(sample, str(error), run), [], run)
    except Exception as error:  # a policy bug must not take down a thousand-episode run
        return Episode(_failed_trajectory(sample, f"{type(error).__name__}: {error}", run), [], run)
    while not env.done:
        if cancel is not None and cancel.is_set():
            env.fail("cancelled", "cancelled")
            break
        room = config.limits.max_context_tokens - env.context_tokens
        sampling = config.sampling
        if room < sampling.max_new_tokens:
            # A server refuses a request whose prompt plus max_tokens exceeds its window.
            sampling = replace(sampling, max_new_tokens=max(1, room))
        try:
            generation = policy.generate(env.messages(), sampling)
            env.step(generation)
            if on_turn is not None:
                on_turn(env, env.trajectory.turns[-1])
        except PolicyError as error:
            env.fail(str(error))
        except Exception as error:  # a policy bug must not take down a thousand-episode run
            env.fail(f"{type(error).__name__}: {error}")
    env.trajectory.meta["run"] = run
    return Episode(env.trajectory, env.views, run)


def _failed_trajectory(sample: Sample, message: str, run: int, kind: str = "policy") -> Trajectory:
    return Trajectory(
        sample_id=sample.id,
        question=safe_text(sample.question),
        image=str(sample.image) if isinstance(sample.image, (str, Path)) else sample.image_name(),
        image_size=(0, 0),
        ground_truth=safe_text(sample.answer),
        options=json_safe(dict(sample.options)),
        source=safe_text(sample.source),
        split=safe_text(sample.split),
        category=safe_text(sample.category),
        status=Status.ERROR,
        error=safe_text(message),
        error_kind=kind,
        meta={"run": run},
    )


def run_episodes(
    policy: Policy,
    jobs: Iterable[tuple[Sample, int]],
    config: EpisodeConfig = EpisodeConfig(),
    concurrency: int = 8,
    count_tokens: TokenCounter | None = None,
    stop: threading.Event | None = None,
    follow_up: Callable[[Episode], Iterable[tuple[Sample, int]]] | None = None,
) -> Iterator[Episode]:
    """Run (sample, run) jobs with up to `concurrency` episodes in flight; yield each as it finishes.

    Each episode runs in its own thread and calls the policy one turn at a time: HTTP policies
    overlap requests, and batching policies gather the concurrent calls into one generate.
    Jobs are pulled lazily, so a long job list costs no memory up front. Episodes of the same
    image share its decoded original. `follow_up`, when given, sees each finished episode
    before it is yielded; the jobs it returns start next, ahead of the rest of `jobs` (RL's
    dynamic sampling replaces a rejected group the moment it finishes).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    # Finished episodes arrive on a queue: concurrent.futures.wait scans and hooks every pending
    # future on each call, milliseconds of GIL time per finished episode at 2,048 in flight.
    finished: queue.SimpleQueue[Future[Episode]] = queue.SimpleQueue()
    in_flight = 0
    job_iter = iter(jobs)
    exhausted = False
    follow_ups: deque[tuple[Sample, int]] = deque()
    cancel = threading.Event()
    originals = SharedOriginals(config.pixel_limit)

    def refill() -> None:
        nonlocal exhausted, in_flight
        while (follow_ups or not exhausted) and in_flight < concurrency and not (stop and stop.is_set()):
            if follow_ups:
                sample, run = follow_ups.popleft()
            else:
                try:
                    sample, run = next(job_iter)
                except StopIteration:
                    exhausted = True
                    return
            future = pool.submit(run_episode, policy, sample, config, count_tokens, None, run, cancel, originals)
            in_flight += 1
            future.add_done_callback(finished.put)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="episode")
    many = concurrency >= MANY_THREADS
    if many:
        _slow_gil_switching(True)
    try:
        refill()
        while in_flight:
            future = finished.get()
            in_flight -= 1
            episode = future.result()
            if follow_up is not None:
                follow_ups.extend(follow_up(episode))
            # Start a replacement before the caller handles the finished one, so slots never idle.
            refill()
            yield episode
    finally:
        # A consumer that stops early (Ctrl-C, a closed generator) must not wait for every
        # episode in flight: they end after their current turn.
        cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        if many:
            _slow_gil_switching(False)
