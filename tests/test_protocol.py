"""Every prompt string byte for byte, and the parser on realistic and malformed model output."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_o3.agent import protocol
from mini_o3.agent.protocol import Answer, Malformed, NoAction, Zoom, parse_action

REFERENCE_SYSTEM = (
    "You are a helpful assistant. Answer the user's question based on the image provided. Output your thinking "
    "process within the <think> and </think> tags. Whenever you find anything unclear, you can zoom in a specific "
    'region in the given image to see more clearly by outputing <grounding>{"bbox_2d": [x0, y0, x1, y1], '
    '"source": "original_image"}</grounding>, where (x0, y0) and (x1, y1) are the top-left and bottom-right '
    "coordinates of the region that you want to zoom in, respectively (suppose the width and height of the image "
    "are 1.0), and 'source' refers to the image that you zoom in and could be either 'original_image' or "
    "'observation_i'. Once the final answer is confirmed, put it within <answer> and </answer>."
)


def test_system_prompt_is_the_reference_string() -> None:
    assert protocol.SYSTEM_PROMPT == REFERENCE_SYSTEM
    assert "\n" not in protocol.SYSTEM_PROMPT
    assert "outputing" in protocol.SYSTEM_PROMPT
    # Pin the bytes too (checked against shared/reference/mini-o3.md), so an edit to the fixture
    # above cannot silently follow an edit to the code.
    digest = hashlib.sha256(protocol.SYSTEM_PROMPT.encode()).hexdigest()
    assert digest == "1f02ab1e7ee85e5526049e4185ed54be590a89fd0633c66cf7d2f9b053169350"
    assert len(protocol.SYSTEM_PROMPT.encode()) == 716


def test_first_prompt_renders_like_the_qwen_template() -> None:
    messages = [protocol.system_message(), protocol.first_user_message("IMG", "What colour is the kite?")]
    assert protocol.render_messages(messages) == (
        f"<|im_start|>system\n{REFERENCE_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\nWhat colour is the kite?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert messages[1]["content"] == [{"type": "image", "image": "IMG"}, {"type": "text", "text": "\nWhat colour is the kite?"}]


def test_observation_turn_bytes() -> None:
    message = protocol.observation_message("CROP", 0, 1)
    assert message["content"][0]["text"] == "After the above Action 0, here is the the zoom-in image (Observation 1):\n"
    assert message["content"][2]["text"] == (
        ".\nContinue your reasoning process inside <think> and </think>. If needed, you can continue to zoom in on "
        "the original image or any of the observations, by outputting <grounding> and </grounding> as before. If the "
        "final answer is confirmed, put your final answer inside <answer> and </answer>."
    )
    rendered = protocol.render_messages([protocol.assistant_message("A</grounding>"), message])
    assert rendered == (
        "<|im_start|>assistant\nA</grounding><|im_end|>\n<|im_start|>user\n"
        "After the above Action 0, here is the the zoom-in image (Observation 1):\n"
        "<|vision_start|><|image_pad|><|vision_end|>.\nContinue your reasoning process inside <think> and </think>. "
        "If needed, you can continue to zoom in on the original image or any of the observations, by outputting "
        "<grounding> and </grounding> as before. If the final answer is confirmed, put your final answer inside "
        "<answer> and </answer>.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_error_turn_bytes() -> None:
    assert protocol.error_text("bad box") == (
        "ERROR occurs during grounding. Error Information: bad box.\n"
        "Please analyze the error information obtained from the function tool and adjust your response. "
        "Countinue your reasoning process inside <think> and </think>."
    )


def test_observation_numbering_modes() -> None:
    # Reference: the label counts assistant turns, error turns included.
    assert protocol.observation_label(2, 2, "reference") == (2, 3)
    assert protocol.observation_label(2, 2, "consistent") == (1, 2)


def test_question_from_problem() -> None:
    assert protocol.question_from_problem("<image>\nWhat is it?") == "What is it?"
    assert protocol.question_from_problem("What is it?") == "What is it?"


def test_render_zoom_round_trips() -> None:
    zoom = Zoom((0.1, 0.25, 0.5, 1.0), "observation_2")
    text = protocol.render_zoom(zoom)
    assert text == '<grounding>{"bbox_2d": [0.1, 0.25, 0.5, 1], "source": "observation_2"}</grounding>'
    assert parse_action(text) == zoom


def Z(x0: float, y0: float, x1: float, y1: float, source: str = "original_image") -> Zoom:
    return Zoom((x0, y0, x1, y1), source)


PARSE_CASES = [
    # --- well formed, as the released checkpoint writes them
    ('<think>The sign is small.</think> <grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "original_image"}</grounding>', Z(0.1, 0.2, 0.3, 0.4)),
    ('<think>ok</think><grounding>{"bbox_2d": [0.5, 0.5, 1.0, 1.0], "source": "observation_1"}</grounding>', Z(0.5, 0.5, 1, 1, "observation_1")),
    ("<think>I see it.</think><answer>red</answer>", Answer("red")),
    ("<think>Done.</think>\n<answer> B </answer>", Answer("B")),
    # --- tolerated variations
    ('<grounding>{ "source" : "original_image" , "bbox_2d" : [ 0.1 , 0.2 , 0.3 , 0.4 ] }</grounding>', Z(0.1, 0.2, 0.3, 0.4)),
    ("<grounding>{'bbox_2d': [0.1, 0.2, 0.3, 0.4], 'source': 'original_image'}</grounding>", Z(0.1, 0.2, 0.3, 0.4)),
    ('<grounding>{"bbox_2d": ["0.1", "0.2", "0.3", "0.4"], "source": "original_image"}</grounding>', Z(0.1, 0.2, 0.3, 0.4)),
    ('<grounding>{"bbox_2d": [0, 0, 1, 1], "source": "original_image"}</grounding> and then I will look', Z(0, 0, 1, 1)),
    ('<think>x</think><grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "original_image"}', Z(0.1, 0.2, 0.3, 0.4)),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "observation_3"}</grounding><grounding>{"bbox_2d": [0, 0, 1, 1], "source": "original_image"}</grounding>', Z(0.1, 0.2, 0.3, 0.4, "observation_3")),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4],}</grounding>', Z(0.1, 0.2, 0.3, 0.4)),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4]}</grounding>', Z(0.1, 0.2, 0.3, 0.4)),
    ('<grounding>\n{"bbox_2d": [1e-1, 2E-1, .3, 0.4], "source": "original_image"}\n</grounding>', Z(0.1, 0.2, 0.3, 0.4)),
    ('<grounding>{"bbox": [0.1, 0.2, 0.3, 0.4], "source": "original_image"}</grounding>', Z(0.1, 0.2, 0.3, 0.4)),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": " observation_2 "}</grounding>', Z(0.1, 0.2, 0.3, 0.4, "observation_2")),
    ('<grounding>```json\n{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "original_image"}\n```</grounding>', Z(0.1, 0.2, 0.3, 0.4)),
    ('<grounding>bbox_2d: [0.1, 0.2, 0.3, 0.4], source: "observation_1"</grounding>', Z(0.1, 0.2, 0.3, 0.4, "observation_1")),
    # A grounding makes the turn an action even after an answer tag (the reference stops at </grounding>).
    ("<answer>red</answer><grounding>{\"bbox_2d\": [0, 0, 1, 1]}</grounding>", Z(0, 0, 1, 1)),
    ('<think>use <answer>X</answer> format</think><grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4]}</grounding>', Z(0.1, 0.2, 0.3, 0.4)),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4]}</grounding><answer>red</answer>', Z(0.1, 0.2, 0.3, 0.4)),
    # An unclosed answer is no answer, as the reference's regex reads it.
    ("<think>The text reads STOP.</think><answer>STOP", NoAction()),
    ("<answer>\n(C) green\n</answer> trailing words", Answer("(C) green")),
    ('<grounding>{"bbox_2d": [-0.2, 0.0, 1.5, 1.0], "source": "original_image"}</grounding>', Z(-0.2, 0, 1.5, 1)),
    # --- no action at all
    ("<think>I cannot tell.</think>", NoAction()),
    ("", NoAction()),
    ("The answer is red.", NoAction()),
    ("<answer></answer>", Answer("")),
    ("<answer>", NoAction()),
]

MALFORMED_CASES = [
    ("<grounding></grounding>", "empty"),
    ("<grounding>zoom into the top left</grounding>", "not valid JSON"),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3], "source": "original_image"}</grounding>', "4 numbers"),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, "top"], "source": "original_image"}</grounding>', "4 numbers"),
    ('<grounding>{"bbox_2d": "0.1,0.2,0.3,0.4", "source": "original_image"}</grounding>', "list of 4 numbers"),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "observation_0"}</grounding>', "observation_N"),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "image_1"}</grounding>', "observation_N"),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": 1}</grounding>', "must be a string"),
    ('<grounding>{"source": "original_image"}</grounding>', "no \"bbox_2d\""),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, true], "source": "original_image"}</grounding>', "4 numbers"),
    ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, NaN], "source": "original_image"}</grounding>', "4 numbers"),
    ('<grounding>{"bbox_2d": [[0.1, 0.2], [0.3, 0.4]], "source": "original_image"}</grounding>', "list of 4 numbers"),
    ("<grounding>{</grounding>", "not valid JSON"),
]


@pytest.mark.parametrize("text,expected", PARSE_CASES)
def test_parse_realistic_outputs(text: str, expected: protocol.Action) -> None:
    assert parse_action(text) == expected


@pytest.mark.parametrize("text,fragment", MALFORMED_CASES)
def test_parse_malformed_outputs_explain_the_fix(text: str, fragment: str) -> None:
    result = parse_action(text)
    assert isinstance(result, Malformed), result
    assert fragment in result.error
    # The message is shown inside the reference error turn, which appends its own period.
    assert not result.error.endswith(".")


def test_there_are_at_least_thirty_cases() -> None:
    assert len(PARSE_CASES) + len(MALFORMED_CASES) >= 30


def test_source_index() -> None:
    assert protocol.source_index("original_image") == 0
    assert protocol.source_index("observation_12") == 12
    with pytest.raises(protocol.SourceError):
        protocol.source_index("observation_-1")


def test_extract_answer() -> None:
    assert protocol.extract_answer("<think>a</think><answer> 42 </answer>") == "42"
    assert protocol.extract_answer("no answer") is None


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_any_string_parses_to_an_action(text: str) -> None:
    result = parse_action(text)
    assert isinstance(result, (Zoom, Answer, Malformed, NoAction))
    if isinstance(result, Malformed):
        assert result.error


grounding_bodies = st.one_of(
    st.text(),
    st.builds(lambda items, src: '{"bbox_2d": [' + ", ".join(items) + '], "source": "' + src + '"}',
              st.lists(st.one_of(st.floats(allow_nan=True).map(str), st.text(max_size=4)), max_size=6), st.text(max_size=20)),
    st.recursive(st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=5)),
                 lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)).map(repr),
)


@settings(max_examples=400, deadline=None)
@given(grounding_bodies, st.text(max_size=30))
def test_any_grounding_body_parses_or_explains(body: str, tail: str) -> None:
    result = parse_action(f"<think>t</think><grounding>{body}</grounding>{tail}")
    assert isinstance(result, (Zoom, Malformed, Answer))
    if isinstance(result, Zoom):
        assert len(result.bbox) == 4 and all(isinstance(v, float) for v in result.bbox)
        assert protocol.source_index(result.source) >= 0


# ---------------------------------------------------------------- hostile replies (issue 13)

HUGE = "9" * 400


@pytest.mark.parametrize("value", [HUGE, "-" + HUGE, "1e308", "-1e308", "1e999", "NaN", "Infinity", "-Infinity", f'"{HUGE}"', '"1e999"'])
def test_a_coordinate_that_is_no_finite_number_is_the_models_malformed_action(value: str) -> None:
    for text in (
        f'<grounding>{{"bbox_2d": [0, 0, {value}, 1], "source": "original_image"}}</grounding>',
        f"<grounding>bbox_2d: [0, 0, {value}, 1]</grounding>",  # the tolerant scan, not JSON
    ):
        result = parse_action(text)
        if isinstance(result, Zoom):  # 1e308 is a float: the box maths must refuse it (tests/test_images.py)
            assert value.lstrip("-") == "1e308"
            continue
        assert isinstance(result, Malformed), (text, result)
        assert "finite" in result.error and len(result.error) < 400


def test_a_source_with_thousands_of_digits_is_malformed_not_a_crash() -> None:
    result = parse_action('<grounding>{"bbox_2d": [0, 0, 1, 1], "source": "observation_' + "7" * 5000 + '"}</grounding>')
    assert isinstance(result, Malformed) and len(result.error) < 400


# Each family is the worst case of one rule of the parser; `unit * n` must parse in time linear in n.
ADVERSARIAL_UNITS = [
    "<answer>",
    "<answer></answe",
    "<grounding>bbox:[",
    "<grounding>bbox_2d: [1",
    "1",
    "1.",
    "1e",
    ", ",
    "{",
    "[",
    "source:'",
    "'source': \"",
    "<think>",
    "\udc80",
]


def _parse_seconds(text: str) -> float:
    import time

    best = float("inf")
    for _ in range(3):  # the least of three: other processes share these cores
        started = time.perf_counter()
        parse_action(text)
        best = min(best, time.perf_counter() - started)
    return best


# The repeated text alone, and inside each place of a grounding, so it reaches every branch of the parser.
WRAPPERS = [
    "{}",
    "<grounding>{}",
    "<grounding>bbox_2d: [{}",
    "<grounding>bbox_2d: [{}]",
    '<grounding>bbox_2d: [1, 1, 1, {}], source: "',
    "<grounding>bbox_2d: [1, 1, 1, {}x]",
    '<grounding>{{"bbox_2d": [0, 0, 1, 1], "source": "{}"}}',
    "<answer>{}",
]


@pytest.mark.parametrize("unit", ADVERSARIAL_UNITS)
def test_parsing_time_is_linear_in_the_size_of_the_reply(unit: str) -> None:
    for wrapper in WRAPPERS:
        small = wrapper.format(unit * (4_000 // len(unit)))
        large = wrapper.format(unit * (32_000 // len(unit)))
        # 8x the text: linear is 8x the time, quadratic 64x. 0.05 s absorbs timer noise at the small end.
        assert _parse_seconds(large) < 20 * _parse_seconds(small) + 0.05, (wrapper, unit)


def test_a_megabyte_of_hostile_reply_parses_in_well_under_a_second() -> None:
    import time

    # Was 24 s for 240 KB of "<answer>" (issue 13); now at most 0.15 s a megabyte on 2 idle cores. The
    # bound leaves room for a loaded machine (a retry takes the least of three) and is still far below
    # what any quadratic rule would take on a megabyte (minutes).
    for unit in ADVERSARIAL_UNITS:
        for wrapper in WRAPPERS:
            text = wrapper.format(unit * (1_000_000 // len(unit)))
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                parse_action(text)
                best = min(best, time.perf_counter() - started)
                if best < 1.0:
                    break
            assert best < 1.0, (wrapper, unit)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["<answer>", "</answer>", "<grounding>", "</grounding>", "{", "}", "[", "]", ",", " ",
                                 "1", ".", "e", "-", "bbox_2d", ":", '"', "'", "source", "observation_", "\udc80", "x"]),
                min_size=1, max_size=12))
def test_any_repeated_fragment_parses_in_linear_time(pieces: list[str]) -> None:
    unit = "".join(pieces)
    for wrapper in WRAPPERS:
        small = wrapper.format(unit * (4_000 // len(unit) + 1))
        large = wrapper.format(unit * (32_000 // len(unit) + 1))
        assert _parse_seconds(large) < 20 * _parse_seconds(small) + 0.05, (wrapper, unit)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<answer>", "</answer>", "<answer", "answer>", " x ", "\n", "<", "/", "é"]), max_size=20))
def test_extract_answer_reads_what_the_reference_findall_reads(pieces: list[str]) -> None:
    import re

    text = "".join(pieces)
    found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)  # the released reward's rule, quadratic on hostile text
    assert protocol.extract_answer(text) == (found[-1].strip() if found else None)
