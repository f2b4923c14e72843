"""ScriptedPolicy and EchoPolicy: deterministic policies that drive real episodes."""

from __future__ import annotations

import pytest
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.sample import Sample
from mini_o3.agent.env import Limits, ZoomEnv
from mini_o3.agent.policy import Generation, Policy, PolicyError, SamplingParams
from mini_o3.policies.scripted import EchoPolicy, ScriptedPolicy, cut_at_stop
from mini_o3.agent.trajectory import Status


def _env(question: str = "What colour is the square?") -> ZoomEnv:
    image = Image.new("RGB", (400, 300), (255, 255, 255))
    image.paste((200, 0, 0), (300, 200, 340, 240))
    return ZoomEnv(Sample(id="s1", image=image, question=question, answer="red"), Limits(max_turns=6))


def test_zoom_then_answer_drives_an_episode_to_its_answer():
    policy = ScriptedPolicy.zoom_then_answer(
        [(0.5, 0.5, 1.0, 1.0), (0.25, 0.25, 0.75, 0.75)], "red", sources=["original_image", "observation_1"]
    )
    assert isinstance(policy, Policy)
    env = _env()
    while not env.step(policy.generate(env.messages(), SamplingParams())):
        pass
    assert env.trajectory.status is Status.ANSWERED
    assert env.trajectory.answer == "red"
    assert [turn.kind for turn in env.trajectory.turns] == ["zoom", "zoom", "answer"]
    assert env.trajectory.views[2].source == 1
    assert env.trajectory.views[1].box == (200, 150, 399, 299)
    assert env.trajectory.views[2].box == (249, 187, 349, 261)


def test_list_script_is_indexed_by_assistant_turns_and_refuses_past_its_end():
    policy = ScriptedPolicy(["one", "two"])
    messages = [protocol.system_message()]
    assert policy.generate(messages).text == "one"
    assert policy.generate(messages + [protocol.assistant_message("one")]).text == "two"
    with pytest.raises(PolicyError, match="2 turns and turn 3"):
        policy.generate(messages + [protocol.assistant_message("a"), protocol.assistant_message("b")])
    assert policy.calls == 3


def test_turns_are_cut_after_the_stop_string_and_counted():
    policy = ScriptedPolicy(['<grounding>{"bbox_2d": [0, 0, 1, 1]}</grounding> and more'])
    generation = policy.generate([protocol.system_message()], SamplingParams())
    assert generation.text == '<grounding>{"bbox_2d": [0, 0, 1, 1]}</grounding>'
    assert generation.finish_reason == "stop"
    assert generation.prompt_tokens > 0 and generation.completion_tokens > 0
    assert cut_at_stop("a</x>b</y>c", ("</y>", "</x>")) == "a</x>"
    assert cut_at_stop("abc", ()) == "abc"


def test_function_script_sees_the_messages_and_may_return_a_generation():
    seen = []

    def script(messages):
        seen.append(messages)
        return Generation(text="<answer>x</answer>", finish_reason="length", completion_tokens=7)

    generation = ScriptedPolicy(script).generate(_env().messages())
    assert generation.finish_reason == "length" and generation.completion_tokens == 7
    assert seen[0][1]["content"][0]["type"] == "image"


def test_echo_policy_describes_views_and_pil_images_alike():
    env = _env("Where?")
    view_reply = EchoPolicy().generate(env.messages()).text
    pil_messages = [protocol.system_message(), protocol.first_user_message(env.views[0].image, "Where?")]
    assert EchoPolicy().generate(pil_messages).text == view_reply
    assert view_reply == "<think>2 messages; images: 400x300.</think><answer>Where?</answer>"


def test_a_list_script_must_hold_strings():
    with pytest.raises(ValueError, match="at least one turn"):
        ScriptedPolicy([])
