"""The episode loop: one episode, many at once, failures as statuses, and the store on disk."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.loop import EpisodeConfig, run_episode, run_episodes
from mini_o3.agent.sample import Sample
from mini_o3.agent.env import Limits
from mini_o3.agent.policy import Generation, PolicyError, SamplingParams
from mini_o3.policies.scripted import ScriptedPolicy
from mini_o3.agent.store import TrajectoryStore
from mini_o3.agent.trajectory import Status

ZOOM = protocol.render_zoom(protocol.Zoom((0.25, 0.25, 0.75, 0.75)))
NESTED = protocol.render_zoom(protocol.Zoom((0.0, 0.0, 0.5, 0.5), "observation_1"))


def make_samples(tmp_path: Path, count: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        path = tmp_path / f"img_{index}.png"
        Image.fromarray(rng.integers(0, 255, (300 + index, 400, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(id=f"q/{index}", image=path, question=f"question {index}?", answer=str(index)))
    return samples


def test_run_episode_with_a_scripted_policy(tmp_path: Path) -> None:
    (sample,) = make_samples(tmp_path, 1)
    seen = []
    policy = ScriptedPolicy([f"<think>a</think>{ZOOM}", f"<think>b</think>{NESTED}", "<answer>0</answer>"])
    episode = run_episode(policy, sample, on_turn=lambda env, turn: seen.append(turn.kind))
    assert episode.trajectory.status is Status.ANSWERED and episode.trajectory.answer == "0"
    assert seen == ["zoom", "zoom", "answer"]
    assert [view.index for view in episode.views] == [0, 1, 2]
    # A box on observation_1 composes with observation_1's box in the original.
    assert episode.trajectory.views[1].box == (100, 75, 300, 225)
    assert episode.trajectory.views[2].box == (100, 75, 200, 150)


class FailingPolicy:
    """A policy whose server dies after `ok_turns` turns."""

    def __init__(self, ok_turns: int, error: Exception) -> None:
        self.ok_turns, self.error = ok_turns, error

    def generate(self, messages, sampling: SamplingParams) -> Generation:
        if protocol_turns(messages) >= self.ok_turns:
            raise self.error
        return Generation(ZOOM)


def protocol_turns(messages) -> int:
    return sum(message["role"] == "assistant" for message in messages)


@pytest.mark.parametrize("error", [PolicyError("cannot reach http://127.0.0.1:9/v1"), KeyError("bug in a policy")])
def test_policy_failures_become_error_status_keeping_turns(tmp_path: Path, error: Exception) -> None:
    (sample,) = make_samples(tmp_path, 1)
    episode = run_episode(FailingPolicy(2, error), sample)
    assert episode.trajectory.status is Status.ERROR
    assert episode.trajectory.num_turns == 2
    assert str(error).strip("'") in episode.trajectory.error


def test_a_missing_image_is_an_error_episode(tmp_path: Path) -> None:
    sample = Sample(id="gone", image=tmp_path / "gone.jpg", question="q", answer="a")
    episode = run_episode(ScriptedPolicy(["<answer>a</answer>"]), sample)
    assert episode.trajectory.status is Status.ERROR and "gone.jpg" in episode.trajectory.error


class SlowCountingPolicy:
    """Answers after one zoom, sleeping to overlap episodes, and records peak concurrency."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()

    def generate(self, messages, sampling: SamplingParams) -> Generation:
        import time

        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        time.sleep(0.02)
        with self.lock:
            self.in_flight -= 1
        question = messages[1]["content"][1]["text"].strip()
        if protocol_turns(messages) == 0:
            return Generation(ZOOM)
        return Generation(f"<answer>{question.split()[1].rstrip('?')}</answer>")


def test_run_episodes_concurrently(tmp_path: Path) -> None:
    samples = make_samples(tmp_path, 12)
    policy = SlowCountingPolicy()
    jobs = [(sample, run) for sample in samples for run in range(2)]
    episodes = list(run_episodes(policy, jobs, concurrency=6))
    assert len(episodes) == 24
    assert {(e.trajectory.sample_id, e.run) for e in episodes} == {(s.id, r) for s, r in jobs}
    assert all(e.trajectory.answer == e.trajectory.ground_truth for e in episodes)
    assert 2 <= policy.peak <= 6


def test_stop_event_stops_taking_jobs(tmp_path: Path) -> None:
    samples = make_samples(tmp_path, 5)
    stop = threading.Event()
    stop.set()
    assert list(run_episodes(ScriptedPolicy(["<answer>x</answer>"]), [(s, 0) for s in samples], stop=stop)) == []


def test_store_saves_views_and_resume_keys(tmp_path: Path) -> None:
    samples = make_samples(tmp_path, 2)
    store = TrajectoryStore(tmp_path / "run")
    policy = ScriptedPolicy([ZOOM, "<answer>1</answer>"])
    config = EpisodeConfig(limits=Limits(max_turns=4))
    for episode in run_episodes(policy, [(samples[0], 0), (samples[1], 3)], config):
        store.add(episode)
    loaded = {t.sample_id: t for t in store.load()}
    assert store.finished_keys() == {("q/0", 0), ("q/1", 3)}
    view = loaded["q/1"].views[1]
    assert view.file and (store.root / view.file).is_file()
    assert Image.open(store.root / view.file).size == tuple(view.size)


class BindFailsFor:
    """A per-episode policy whose bind() raises for one sample (a bug in a user's policy)."""

    def __init__(self, bad_id: str) -> None:
        self.bad_id = bad_id

    def bind(self, sample: Sample, run: int = 0):
        if sample.id == self.bad_id:
            raise ValueError("no plan for this sample")
        return ScriptedPolicy(["<answer>1</answer>"])


def test_a_failing_bind_or_bad_policy_output_is_an_error_episode_not_a_crash(tmp_path: Path) -> None:
    samples = make_samples(tmp_path, 4)
    episodes = list(run_episodes(BindFailsFor("q/2"), [(s, 0) for s in samples], concurrency=2))
    statuses = {e.trajectory.sample_id: e.trajectory.status for e in episodes}
    assert statuses == {"q/0": Status.ANSWERED, "q/1": Status.ANSWERED, "q/2": Status.ERROR, "q/3": Status.ANSWERED}
    assert next(e for e in episodes if e.trajectory.sample_id == "q/2").trajectory.meta["run"] == 0

    class ReturnsText:
        def generate(self, messages, sampling):
            return "<answer>1</answer>"  # not a Generation

    episode = run_episode(ReturnsText(), samples[0])
    assert episode.trajectory.status is Status.ERROR and "AttributeError" in episode.trajectory.error


def test_turns_never_ask_for_more_tokens_than_the_context_has_left(tmp_path: Path) -> None:
    (sample,) = make_samples(tmp_path, 1)
    asked = []

    class Recording:
        def generate(self, messages, sampling):
            asked.append(sampling.max_new_tokens)
            return Generation(ZOOM, prompt_tokens=2_500 + 500 * len(asked), completion_tokens=10)

    config = EpisodeConfig(limits=Limits(max_turns=8, max_context_tokens=6_000, context_reserve=500), sampling=SamplingParams(max_new_tokens=4_096))
    episode = run_episode(Recording(), sample, config)
    assert asked[0] == 4_096  # the first prompt is small
    assert all(tokens <= 6_000 - 2_500 for tokens in asked[1:])
    assert episode.trajectory.status in (Status.OVER_CONTEXT, Status.OVER_TURN)


def test_closing_the_stream_early_does_not_wait_for_every_episode(tmp_path: Path) -> None:
    import time

    samples = make_samples(tmp_path, 3)
    calls = []

    class Slow:
        def generate(self, messages, sampling):
            calls.append(1)
            time.sleep(0.05 if messages[1]["content"][1]["text"].endswith("0?") else 0.3)
            return Generation(ZOOM) if protocol_turns(messages) < 20 else Generation("<answer>x</answer>")

    jobs = [(s, run) for s in samples for run in range(4)]
    config = EpisodeConfig(limits=Limits(max_turns=30))
    start = time.perf_counter()
    stream = run_episodes(Slow(), jobs, config, concurrency=4)
    first = next(stream)
    stream.close()
    assert first.trajectory.sample_id == "q/0"
    assert time.perf_counter() - start < 3.0  # 12 jobs x 21 turns of 0.3 s would take a minute
    made = len(calls)
    time.sleep(0.7)
    assert len(calls) <= made + 4  # episodes in flight stop after their current turn


def test_safe_names_are_distinct_for_distinct_ids() -> None:
    from mini_o3.agent.store import safe_name

    names = {safe_name(text) for text in ["a/b", "a_b", "a:b", "a b", "x" * 300, "x" * 301]}
    assert len(names) == 6
    assert safe_name("plain-id_1.jpg") == "plain-id_1.jpg"
    assert all(len(name) <= 120 and "/" not in name for name in names)


# ---------------------------------------------------------------- hostile text (issue 13)


def test_lone_surrogates_in_the_question_and_the_replies_are_made_safe_and_saved(tmp_path: Path) -> None:
    (sample,) = make_samples(tmp_path, 1)
    sample.question, sample.answer = "what does \udc80 say?", "\ud800"
    policy = ScriptedPolicy(["<think>\udcff</think>" + ZOOM, "<answer>x\udc80</answer>"])
    episode = run_episode(policy, sample)
    trajectory = episode.trajectory
    assert trajectory.status is Status.ANSWERED, trajectory.error
    assert trajectory.answer == "x\ufffd" and trajectory.question == "what does \ufffd say?"
    assert trajectory.turns[0].text.startswith("<think>\ufffd</think>")
    with TrajectoryStore(tmp_path / "run") as store:
        store.add(episode)
    (loaded,) = store.load()
    assert loaded.status is Status.ANSWERED and loaded.answer == "x\ufffd"


class OddGeneration:
    """A policy that returns what a careless server might: odd finish reasons and token counts."""

    def __init__(self, **fields) -> None:
        self.fields = fields

    def generate(self, messages, sampling: SamplingParams) -> Generation:
        return Generation(**{"text": "<answer>a</answer>", **self.fields})


@pytest.mark.parametrize("fields", [
    {"finish_reason": "\udc80"},
    {"finish_reason": None},
    {"prompt_tokens": "12", "completion_tokens": 3},
    {"prompt_tokens": float("nan"), "completion_tokens": float("inf")},
    {"prompt_tokens": True, "completion_tokens": -4},
    {"prompt_tokens": 10 ** 400, "completion_tokens": 1},
])
def test_whatever_a_generation_carries_the_episode_ends_as_the_model_wrote_and_is_saved(tmp_path: Path, fields: dict) -> None:
    (sample,) = make_samples(tmp_path, 1)
    episode = run_episode(OddGeneration(**fields), sample)
    assert episode.trajectory.status is Status.ANSWERED, episode.trajectory.error
    with TrajectoryStore(tmp_path / "run") as store:
        store.add(episode)
    (loaded,) = store.load()
    assert loaded.status is Status.ANSWERED
    turn = loaded.turns[0]
    assert isinstance(turn.finish_reason, str)
    assert turn.prompt_tokens is None or (type(turn.prompt_tokens) is int and 0 <= turn.prompt_tokens < 10 ** 12)


def test_text_that_is_not_a_string_is_an_error_naming_the_policy(tmp_path: Path) -> None:
    (sample,) = make_samples(tmp_path, 1)
    episode = run_episode(OddGeneration(text=5), sample)
    assert episode.trajectory.status is Status.ERROR and "not a string" in episode.trajectory.error


def test_a_policy_error_quoting_a_server_with_surrogates_is_saved(tmp_path: Path) -> None:
    (sample,) = make_samples(tmp_path, 1)
    episode = run_episode(FailingPolicy(1, PolicyError("HTTP 400: bad \udc80 byte")), sample)
    assert episode.trajectory.error.endswith("bad \ufffd byte") and episode.trajectory.error_kind == "policy"
    with TrajectoryStore(tmp_path / "run") as store:
        store.add(episode)
    assert store.load()[0].error == episode.trajectory.error


def test_an_unreadable_image_is_an_image_error_rerunning_cannot_fix(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("not an image")
    episode = run_episode(ScriptedPolicy(["<answer>a</answer>"]), Sample(id="t", image=tmp_path / "text.jpg", question="q", answer="a"))
    assert episode.trajectory.status is Status.ERROR and episode.trajectory.error_kind == "image"


def test_an_episode_that_cannot_be_saved_as_it_ran_is_saved_as_an_error(tmp_path: Path) -> None:
    (sample,) = make_samples(tmp_path, 2)[:1]
    episode = run_episode(ScriptedPolicy([ZOOM, "<answer>0</answer>"]), sample)
    # What no boundary cleaned: a policy's own extra data with a lone surrogate, a NaN and an object.
    episode.trajectory.meta.update(note="\udc80", score=float("nan"), handle=threading.Lock())
    episode.trajectory.turns[0].logprobs = [float("-inf")]
    with TrajectoryStore(tmp_path / "run") as store:
        saved = store.add(episode)
        store.add(run_episode(ScriptedPolicy(["<answer>1</answer>"]), make_samples(tmp_path, 2)[1]))
    assert saved.status is Status.ERROR and saved.error_kind == "save" and "cannot save" in saved.error
    first, second = store.load()
    assert (first.sample_id, first.status, first.error_kind) == ("q/0", Status.ERROR, "save")
    assert first.num_turns == 2 and first.meta["note"] == "\ufffd" and first.meta["score"] is None
    assert second.status is Status.ANSWERED
    import json

    for line in store.path.read_text(encoding="utf-8").splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))


def test_a_non_finite_number_alone_makes_the_episode_a_saved_error_in_strict_json(tmp_path: Path) -> None:
    import json

    (sample,) = make_samples(tmp_path, 1)
    episode = run_episode(ScriptedPolicy(["<answer>0</answer>"]), sample)
    episode.trajectory.turns[0].logprobs = [-0.5, float("-inf")]  # a broken model's log-probability
    with TrajectoryStore(tmp_path / "run") as store:
        saved = store.add(episode)
    assert saved.status is Status.ERROR and saved.error_kind == "save" and "(it had ended answered)" in saved.error
    line = store.path.read_text(encoding="utf-8")
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert record["turns"][0]["logprobs"] == [-0.5, None]


class GatedPolicy:
    """Answers at once, except that questions in `gated` wait until a question in `opens` has been asked."""

    def __init__(self, gated: set[str], opens: set[str]) -> None:
        self.gated, self.opens = gated, opens
        self.opened = threading.Event()

    def generate(self, messages, sampling: SamplingParams) -> Generation:
        question = messages[1]["content"][1]["text"].strip()
        if question in self.opens:
            self.opened.set()
        if question in self.gated and not self.opened.wait(timeout=20):
            raise PolicyError("the follow-up job never started")
        return Generation("<answer>0</answer>")


def test_follow_up_jobs_start_while_earlier_episodes_still_run(tmp_path: Path) -> None:
    samples = make_samples(tmp_path, 3)
    # Question 1 waits for question 2, which only the follow-up of question 0 asks: a loop that
    # ran follow-ups after every first job finished would wait 20 s and fail question 1.
    policy = GatedPolicy(gated={samples[1].question}, opens={samples[2].question})
    seen = []

    def follow_up(episode):
        seen.append(episode.run)
        return [(samples[2], 7)] if episode.run == 0 else []

    episodes = list(run_episodes(policy, [(samples[0], 0), (samples[1], 1)], concurrency=4, follow_up=follow_up))
    assert sorted(e.run for e in episodes) == [0, 1, 7] and sorted(seen) == [0, 1, 7]
    assert all(e.trajectory.status is Status.ANSWERED for e in episodes)
