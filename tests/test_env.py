"""The zoom environment: every status, the limits, numbering, and exact replay from JSONL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.sample import Sample
from mini_o3.agent.env import Limits, ZoomEnv, image_tokens, replay_views
from mini_o3.agent.policy import Generation
from mini_o3.agent.trajectory import Status, Trajectory, read_jsonl, write_jsonl


@pytest.fixture()
def sample(tmp_path: Path) -> Sample:
    rng = np.random.default_rng(1)
    path = tmp_path / "scene.png"
    Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(path)
    return Sample(id="s1", image=path, question="What is written on the sign?", answer="stop")


def zoom(x0: float, y0: float, x1: float, y1: float, source: str = "original_image") -> Generation:
    return Generation(f"<think>look</think>{protocol.render_zoom(protocol.Zoom((x0, y0, x1, y1), source))}")


ANSWER = Generation("<think>found it</think><answer>stop</answer>")


def test_answered_with_nested_zooms(sample: Sample) -> None:
    env = ZoomEnv(sample)
    assert env.views[0].record.box == (0, 0, 800, 600)
    assert env.step(zoom(0.5, 0.5, 1.0, 1.0)) is False
    assert env.step(zoom(0.0, 0.0, 0.5, 0.5, "observation_1")) is False
    assert env.step(ANSWER) is True
    trajectory = env.trajectory
    assert trajectory.status is Status.ANSWERED and trajectory.answer == "stop"
    # 0.5*800=400, 1.0*800 clamps to 799: observation 1 is 399x299 px; its top-left half.
    assert [view.box for view in trajectory.views] == [(0, 0, 800, 600), (400, 300, 799, 599), (400, 300, 599, 449)]
    assert [turn.kind for turn in trajectory.turns] == ["zoom", "zoom", "answer"]
    assert trajectory.turns[1].label == (1, 2)
    # Crops are shown at least at min_pixels (40,000) even when cut small.
    assert trajectory.views[2].size[0] * trajectory.views[2].size[1] >= 40_000


def test_no_answer(sample: Sample) -> None:
    env = ZoomEnv(sample)
    assert env.step(Generation("<think>I am not sure.</think>")) is True
    assert env.trajectory.status is Status.NO_ANSWER and not env.trajectory.status.truncated


def test_over_turn_on_a_zoom_at_the_last_turn(sample: Sample) -> None:
    env = ZoomEnv(sample, Limits(max_turns=2))
    assert env.step(zoom(0, 0, 0.5, 0.5)) is False
    assert env.step(zoom(0, 0, 0.5, 0.5, "observation_1")) is True
    assert env.trajectory.status is Status.OVER_TURN and env.trajectory.status.truncated
    assert len(env.trajectory.views) == 2  # the last zoom was not executed


def test_answer_on_the_last_turn_is_answered(sample: Sample) -> None:
    env = ZoomEnv(sample, Limits(max_turns=2))
    env.step(zoom(0, 0, 0.5, 0.5))
    assert env.step(ANSWER) and env.trajectory.status is Status.ANSWERED


def test_malformed_action_on_the_last_turn_is_over_turn(sample: Sample) -> None:
    env = ZoomEnv(sample, Limits(max_turns=1))
    assert env.step(Generation("<grounding>{oops</grounding>"))
    assert env.trajectory.status is Status.OVER_TURN


def test_over_turn_when_the_image_budget_is_spent(sample: Sample) -> None:
    env = ZoomEnv(sample, Limits(max_turns=10, max_images=2))
    env.step(zoom(0, 0, 0.5, 0.5))
    assert env.step(zoom(0, 0, 0.5, 0.5)) is True
    assert env.trajectory.status is Status.OVER_TURN


def test_error_turns_and_reference_numbering(sample: Sample) -> None:
    env = ZoomEnv(sample)
    env.step(zoom(0, 0, 0.5, 0.5))  # turn 0 -> Observation 1
    env.step(zoom(0.5, 0.5, 0.5, 0.9))  # turn 1: zero-width box -> error turn
    env.step(zoom(0, 0, 0.5, 0.5, "observation_5"))  # turn 2: no such observation -> error turn
    env.step(zoom(0.5, 0.5, 1, 1))  # turn 3 -> the second crop, labelled Observation 4
    turns = env.trajectory.turns
    assert [turn.feedback for turn in turns] == ["observation", "error", "error", "observation"]
    assert "0x" in turns[1].error and "observation_5' does not exist" in turns[2].error
    assert turns[3].label == (3, 4) and turns[3].view == 2
    last = env.messages()[-1]["content"][0]["text"]
    assert last == "After the above Action 3, here is the the zoom-in image (Observation 4):\n"
    error_turn = env.messages()[5]["content"][0]["text"]
    assert error_turn.startswith("ERROR occurs during grounding. Error Information: invalid bbox_2d [0.5, 0.5, 0.5, 0.9]")


def test_consistent_numbering(sample: Sample) -> None:
    env = ZoomEnv(sample, Limits(numbering="consistent"))
    env.step(zoom(0, 0, 0.5, 0.5))
    env.step(Generation("<grounding>nonsense</grounding>"))
    env.step(zoom(0.5, 0.5, 1, 1))
    assert env.trajectory.turns[2].label == (1, 2)


def test_over_context_before_the_observation(sample: Sample) -> None:
    env = ZoomEnv(sample, Limits(max_context_tokens=4_000, context_reserve=2_000), count_tokens=lambda text: len(text))
    start = env.context_tokens
    assert start < 2_000
    long_thought = Generation("<think>" + "x" * (2_000 - start) + "</think>" + protocol.render_zoom(protocol.Zoom((0, 0, 0.5, 0.5))))
    assert env.step(long_thought) is True
    assert env.trajectory.status is Status.OVER_CONTEXT and len(env.trajectory.views) == 1


def test_over_context_after_adding_the_observation(sample: Sample) -> None:
    # The reported usage puts the context just under the threshold; the crop's tokens cross it.
    env = ZoomEnv(sample, Limits(max_context_tokens=4_000, context_reserve=2_000))
    generation = replace(zoom(0, 0, 1, 1), prompt_tokens=1_900, completion_tokens=50)
    assert env.step(generation) is True
    assert env.trajectory.status is Status.OVER_CONTEXT
    assert len(env.trajectory.views) == 1 and len(env.messages()) == 3  # observation dropped


def test_over_context_boundary_is_inclusive(sample: Sample) -> None:
    # Reaching exactly max - reserve ends the episode, before (2,000) or after adding the
    # 5-token error turn (1,995); one token less (1,994) goes on.
    for tokens, done in ((2_000, True), (1_995, True), (1_994, False)):
        env = ZoomEnv(sample, Limits(max_context_tokens=4_000, context_reserve=2_000), count_tokens=lambda text: 0)
        assert env.step(replace(Generation("<grounding>{bad}</grounding>"), prompt_tokens=tokens - 10, completion_tokens=10)) is done
        assert (env.trajectory.status is Status.OVER_CONTEXT) is done
        assert len(env.messages()) == (3 if done else 4)


def test_over_context_on_an_error_turn(sample: Sample) -> None:
    # The error message itself pushes the context over: the error turn is dropped.
    env = ZoomEnv(sample, Limits(max_context_tokens=4_000, context_reserve=2_000), count_tokens=len)
    assert env.step(replace(Generation("<grounding>{bad}</grounding>"), prompt_tokens=1_900, completion_tokens=10)) is True
    assert env.trajectory.status is Status.OVER_CONTEXT and env.trajectory.turns[-1].feedback is None


def test_context_counts_image_tokens(sample: Sample) -> None:
    env = ZoomEnv(sample, count_tokens=lambda text: 0)
    shown = env.views[0].image.size
    assert env.context_tokens == 2 * 5 + image_tokens(*shown)
    assert image_tokens(280, 560) == 10 * 20 + 2


def test_error_status_for_a_missing_image(tmp_path: Path) -> None:
    from mini_o3.agent.images import ImageLoadError

    with pytest.raises(ImageLoadError, match="missing.jpg"):
        ZoomEnv(Sample(id="x", image=tmp_path / "missing.jpg", question="q", answer="a"))


def test_fail_keeps_finished_turns(sample: Sample) -> None:
    env = ZoomEnv(sample)
    env.step(zoom(0, 0, 0.5, 0.5))
    env.fail("server died")
    assert env.trajectory.status is Status.ERROR and env.trajectory.num_turns == 1 and env.done
    with pytest.raises(RuntimeError):
        env.step(ANSWER)


def test_jsonl_round_trip_re_renders_the_exact_conversation(sample: Sample, tmp_path: Path) -> None:
    env = ZoomEnv(sample)
    for generation in [zoom(0.1, 0.1, 0.6, 0.6), Generation("<grounding>{bad}</grounding>"), zoom(0.2, 0.2, 0.8, 0.8, "observation_1"), ANSWER]:
        env.step(generation)
    live = protocol.render_messages(env.messages(), add_generation_prompt=False)
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [env.trajectory])
    (loaded,) = list(read_jsonl(path))
    assert isinstance(loaded, Trajectory)
    assert loaded.rendered() == live
    assert loaded == env.trajectory
    original = Image.open(sample.image).convert("RGB")
    for replayed, view in zip(replay_views(loaded, original), env.views):
        assert np.array_equal(np.asarray(replayed), np.asarray(view.image))


def test_torn_last_line_is_skipped(sample: Sample, tmp_path: Path) -> None:
    env = ZoomEnv(sample)
    env.step(ANSWER)
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [env.trajectory, env.trajectory])
    path.write_text(path.read_text()[:-40])
    assert len(list(read_jsonl(path))) == 1
