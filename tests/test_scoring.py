"""Rule-based scoring: realistic predictions for multiple choice and open answers, hits and near misses."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mini_o3.agent.protocol import extract_answer
from mini_o3.eval.scoring import Score, normalize_answer, score_answer, score_trajectory
from mini_o3.agent.trajectory import Status, Trajectory

FIXTURES = Path(__file__).parent / "fixtures"
GRADED = FIXTURES / "graded_answers.jsonl"

GLOVE = {"A": "rubber", "B": "cotton", "C": "kevlar", "D": "leather"}
CARS = {"A": "blue car", "B": "red car", "C": "green truck", "D": "3"}
SIDES = {"A": "left", "B": "right"}
LETTERS = {"A": "K", "B": "X"}
MME = {"A": "(A) 12", "B": "(B) 15", "C": "(C) 20", "D": "(D) 25", "E": "(E) The image does not feature the answer"}

# (prediction, ground truth, options, correct, matched_by)
CHOICE_CASES = [
    ("B", "B", GLOVE, True, "letter"),
    ("b", "B", GLOVE, True, "letter"),
    ("(B)", "B", GLOVE, True, "letter"),
    ("[B]", "B", GLOVE, True, "letter"),
    ("B.", "B", GLOVE, True, "letter"),
    ("B)", "B", GLOVE, True, "letter"),
    ("(B).", "B", GLOVE, True, "letter"),
    (" B \n", "B", GLOVE, True, "letter"),
    ("**B**", "B", GLOVE, True, "letter"),
    ("\\boxed{B}", "B", GLOVE, True, "letter"),
    ("Option B", "B", GLOVE, True, "letter"),
    ("Answer: B", "B", GLOVE, True, "letter"),
    ("The answer is (B).", "B", GLOVE, True, "letter"),
    ("The correct option is B", "B", GLOVE, True, "letter"),
    ("(B) cotton", "B", GLOVE, True, "letter"),
    ("B. cotton", "B", GLOVE, True, "letter"),
    ("B: Cotton.", "B", GLOVE, True, "letter"),
    ("(B) cotton gloves", "B", GLOVE, True, "letter"),
    ("cotton", "B", GLOVE, True, "option_text"),
    ("Cotton.", "B", GLOVE, True, "option_text"),
    ("The answer is cotton", "B", GLOVE, True, "option_text"),
    ("A", "B", GLOVE, False, "letter"),
    ("(A) rubber", "B", GLOVE, False, "letter"),
    ("rubber", "B", GLOVE, False, "option_text"),
    ("(B) rubber", "B", GLOVE, False, "letter"),
    ("(A) rubber or (B) cotton", "A", GLOVE, False, "letter"),
    ("(B) cotton or (A) rubber", "B", GLOVE, False, "letter"),
    ("E", "B", GLOVE, False, "letter"),
    ("A and B", "B", GLOVE, False, "none"),
    ("I think it is B because the texture looks soft", "B", GLOVE, False, "none"),
    ("cotton gloves", "B", GLOVE, False, "none"),
    ("A red car", "B", CARS, True, "option_text"),
    ("A red car", "A", CARS, False, "option_text"),
    ("A blue car", "A", CARS, True, "option_text"),
    ("three", "D", CARS, True, "option_text"),
    ("3.0", "D", CARS, True, "option_text"),
    ("red car", "red car", CARS, True, "option_text"),
    ("B", "red car", CARS, True, "letter"),
    ("left", "A", SIDES, True, "option_text"),
    ("The object is on the left side", "A", SIDES, False, "none"),
    ("(C) 20", "C", MME, True, "letter"),
    ("20", "C", MME, True, "option_text"),
    ("15", "C", MME, False, "option_text"),
    ("The image does not feature the answer", "E", MME, True, "option_text"),
    ("B", "(B)", GLOVE, True, "letter"),
    ("Ｂ", "B", GLOVE, True, "letter"),
    ("X", "B", LETTERS, True, "option_text"),
    ("(B) X", "B", LETTERS, True, "letter"),
    ("Q", "B", LETTERS, False, "letter"),
    ("Cotton (B)", "B", GLOVE, False, "none"),
    ("B. The gloves look like cotton", "B", GLOVE, True, "letter"),
    ("Final answer: (C)", "B", GLOVE, False, "letter"),
]

# (prediction, ground truth, correct, matched_by)
OPEN_CASES = [
    ("red", "red", True, "exact"),
    ("Red.", "red", True, "exact"),
    ("RED", "Red", True, "exact"),
    ("The red one", "red one", True, "exact"),
    ("the cat", "Cat", True, "exact"),
    ("An apple", "apple", True, "exact"),
    ("The answer is blue.", "blue", True, "exact"),
    ("Answer: stop", "STOP", True, "exact"),
    ("café", "Cafe", True, "exact"),
    ("3", "three", True, "number"),
    ("Three", "3", True, "number"),
    ("3.0", "3", True, "number"),
    ("3.50", "3.5", True, "number"),
    ("+7", "7", True, "number"),
    ("twenty-one", "21", True, "number"),
    ("1,000", "1000", True, "exact"),
    ("three cars", "3 cars", True, "number"),
    ("0", "zero", True, "number"),
    ("cars", "car", True, "plural"),
    ("two cats", "2 cat", True, "plural"),
    ("50%", "50 percent", True, "exact"),
    ("50", "50%", False, "none"),
    ("-3", "3", False, "none"),
    ("3.1", "3", False, "none"),
    ("4", "three", False, "none"),
    ("glasses", "glass", False, "none"),
    ("bus", "bu", False, "none"),
    ("boxes", "box", False, "none"),
    ("a red car", "red", False, "none"),
    ("Yes, it is.", "yes", False, "none"),
    ("no", "yes", False, "none"),
    ("not red", "red", False, "none"),
    ("plan A", "plan", False, "none"),
    ("the", "a", False, "none"),
    ("31", "thirty", False, "none"),
    ("one hundred", "100", False, "none"),
    ("STOP", "The sign says STOP", False, "none"),
]

# The ground truth is a bare letter and the options live only in the question text (V*'s JSONL).
LETTER_ONLY_CASES = [
    ("A", "A", True, "letter"),
    ("(a)", "A", True, "letter"),
    ("The answer is (A) rubber", "A", True, "letter"),
    ("B", "A", False, "letter"),
    ("A red glove", "A", False, "none"),
]


@pytest.mark.parametrize(("predicted", "truth", "options", "correct", "matched_by"), CHOICE_CASES)
def test_multiple_choice(predicted: str, truth: str, options: dict[str, str], correct: bool, matched_by: str) -> None:
    score = score_answer(predicted, truth, options)
    assert (score.correct, score.matched_by) == (correct, matched_by), score


@pytest.mark.parametrize(("predicted", "truth", "correct", "matched_by"), OPEN_CASES)
def test_open_answers(predicted: str, truth: str, correct: bool, matched_by: str) -> None:
    score = score_answer(predicted, truth, None)
    assert (score.correct, score.matched_by) == (correct, matched_by), score


@pytest.mark.parametrize(("predicted", "truth", "correct", "matched_by"), LETTER_ONLY_CASES)
def test_letter_only_ground_truth(predicted: str, truth: str, correct: bool, matched_by: str) -> None:
    score = score_answer(predicted, truth, {})
    assert (score.correct, score.matched_by) == (correct, matched_by), score


def test_no_answer_and_empty_answer_are_wrong() -> None:
    assert score_answer(None, "B", GLOVE) == Score(False, None, "none", "the episode gave no answer")
    assert score_answer("   ", "red", None).correct is False
    assert score_answer("", "B", GLOVE).extracted == ""


def test_extracted_is_the_letter_or_the_normalised_text() -> None:
    assert score_answer("(B) cotton", "B", GLOVE).extracted == "B"
    assert score_answer("Cotton.", "B", GLOVE).extracted == "B"
    assert score_answer("rubber", "B", GLOVE).extracted == "A"
    assert score_answer("The Red  Car!", "red car", None).extracted == "red car"
    assert score_answer("Twenty-one apples", "21 apples", None).extracted == "21 apples"


def test_reasons_say_what_happened() -> None:
    assert "right one is B" in score_answer("A", "B", GLOVE).reason
    assert "option C" in score_answer("(B) kevlar", "B", GLOVE).reason
    assert "not one of the options" in score_answer("F", "B", GLOVE).reason


def test_bad_ground_truth_names_the_fix() -> None:
    with pytest.raises(ValueError, match="neither an option letter"):
        score_answer("A", "F", GLOVE)
    with pytest.raises(ValueError, match="'silk'"):
        score_answer("A", "silk", GLOVE)


def test_normalize_answer() -> None:
    assert normalize_answer("The  Twenty-Five RED cars!") == "25 red cars"
    assert normalize_answer("1,250.50 km") == "1250.5 km"
    assert normalize_answer("A") == "a"
    assert normalize_answer("Plan A.") == "plan a"
    assert normalize_answer("-0.0") == "0"
    assert normalize_answer("2-3 people, -4 degrees") == "2 3 people -4 degrees"


def test_score_round_trips_through_a_dict() -> None:
    score = score_answer("three", "3", None)
    assert Score.from_dict(score.to_dict()) == score


def test_score_trajectory_uses_the_recorded_answer_and_options() -> None:
    trajectory = Trajectory(
        sample_id="v0", question="q", image="x.jpg", image_size=(10, 10), ground_truth="B",
        options=dict(GLOVE), status=Status.ANSWERED, answer="(B)",
    )
    assert score_trajectory(trajectory).correct
    trajectory.answer = None
    assert not score_trajectory(trajectory).correct


def test_there_are_enough_realistic_cases() -> None:
    assert len(CHOICE_CASES) + len(OPEN_CASES) + len(LETTER_ONLY_CASES) >= 40


# ---------------------------------------------------------------- the graded fixture


def graded_answers() -> list[dict[str, Any]]:
    return [json.loads(line) for line in GRADED.read_text(encoding="utf-8").splitlines()]


def rule_verdict(line: dict[str, Any]) -> Score:
    """Our rules on one graded line (a "raw" line is a whole final turn: its answer block is found first)."""
    answer = extract_answer(line["raw"]) if "raw" in line else line["prediction"]
    return score_answer(answer, line["truth"], line["options"] or None)


def test_the_graded_fixture_is_large_and_covers_every_class() -> None:
    lines = graded_answers()
    classes = Counter(line["class"] for line in lines)
    assert len(lines) >= 300
    for kind in ("letter_form", "label_and_text", "option_list", "second_choice", "negation", "plural_options", "minus_sign",
                 "option_text", "refusal", "not_english", "number", "open", "label_only", "last_answer_block"):
        assert classes[kind] >= 5, (kind, classes[kind])
    assert {line["benchmark"] for line in lines} == {"vstar", "hrbench", "mme", "visualprobe"}
    assert len({line["id"] for line in lines}) == len(lines)


def test_no_answer_the_grader_marks_wrong_is_credited() -> None:
    free = [(line["id"], line["class"], line.get("prediction", line.get("raw"))) for line in graded_answers()
            if not line["grader"] and rule_verdict(line).correct]
    assert free == []


def test_every_answer_the_grader_accepts_is_credited_unless_left_to_the_judge() -> None:
    lines = graded_answers()
    missed = [(line["id"], line.get("prediction")) for line in lines
              if line["grader"] and not line.get("judge_only") and not rule_verdict(line).correct]
    assert missed == []
    # What the rules leave to the judge they must not credit either (so the fixture says what they do).
    assert not any(rule_verdict(line).correct for line in lines if line.get("judge_only"))
    agreement = sum(rule_verdict(line).correct == line["grader"] for line in lines) / len(lines)
    assert agreement >= 0.9


def test_the_fixture_file_is_what_its_builder_writes() -> None:
    spec = importlib.util.spec_from_file_location("build_graded_answers", FIXTURES / "build_graded_answers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    assert [json.loads(json.dumps(line, ensure_ascii=False)) for line in module.LINES] == graded_answers()


@pytest.mark.parametrize(
    ("predicted", "truth", "options"),
    [
        ("A. red\nB. blue\nC. green\nD. yellow", "A", {"A": "red", "B": "blue", "C": "green", "D": "yellow"}),
        ("A) red B) blue", "A", {"A": "red", "B": "blue"}),
        ("A. red or B. blue", "A", {"A": "red", "B": "blue"}),
        ("A. it is not red", "A", {"A": "red", "B": "blue"}),
        ("cars", "A", {"A": "car", "B": "cars"}),
        ("car", "B", {"A": "car", "B": "cars"}),
        ("\u22123", "B", {"A": "-3", "B": "3"}),
        ("A. red\nB. blue", "A", {}),
    ],
)
def test_the_free_credit_classes_of_issue_15_score_wrong(predicted: str, truth: str, options: dict[str, str]) -> None:
    assert not score_answer(predicted, truth, options).correct


def test_options_that_differ_by_a_plural_each_take_their_own_answer() -> None:
    options = {"A": "car", "B": "cars", "C": "bicycle"}
    assert score_answer("cars", "B", options).correct and score_answer("car", "A", options).correct
    assert score_answer("bicycles", "C", options).matched_by == "option_text"
    same = {"A": "car", "B": "Car"}
    assert score_answer("car", "A", same).reason.startswith("the text matches several options")


def test_the_minus_sign_keeps_its_sign() -> None:
    assert normalize_answer("\u22123 \u00b0C") == "-3 c"
    assert score_answer("\u22122", "-2", None).correct
    assert not score_answer("\u22122", "2", None).correct


def test_the_last_answer_block_of_the_final_turn_counts() -> None:
    assert extract_answer("<answer>A</answer> no, wait: <answer>B</answer>") == "B"
    assert extract_answer("<think>maybe <answer>A</answer></think><answer> C </answer> <answer>unclosed") == "C"
    assert extract_answer("<answer>unclosed") is None


# ---------------------------------------------------------------- properties over generated answers

from hypothesis import given, settings, strategies as st  # noqa: E402

WORDS = ["red", "blue", "green", "yellow", "white", "black", "car", "cars", "truck", "dog", "cat", "left", "right", "2", "3", "12",
         "−4", "rubber", "cotton", "leather", "wooden", "metal", "stop sign", "red car", "small boat", "the tower"]
LABELS = ["{L}. {T}", "({L}) {T}", "{L}) {T}", "{L}: {T}", "[{L}] {T}", "**{L}. {T}**"]
SEPARATORS = ["\n", " ", ", ", "; ", " or ", " and ", "\n\n", " / "]


@st.composite
def choice_questions(draw: Any) -> tuple[dict[str, str], str]:
    texts = draw(st.lists(st.sampled_from(WORDS), min_size=2, max_size=5, unique=True))
    options = {"ABCDE"[index]: text for index, text in enumerate(texts)}
    return options, draw(st.sampled_from(sorted(options)))


@settings(max_examples=150, deadline=None)
@given(choice_questions(), st.data())
def test_an_answer_naming_two_or_more_options_is_never_credited(question: tuple[dict[str, str], str], data: Any) -> None:
    options, truth = question
    letters = data.draw(st.lists(st.sampled_from(sorted(options)), min_size=2, max_size=len(options), unique=True))
    label = data.draw(st.sampled_from(LABELS))
    separator = data.draw(st.sampled_from(SEPARATORS))
    answer = separator.join(label.format(L=letter, T=options[letter]) for letter in letters)
    lead = data.draw(st.sampled_from(["", "Answer: ", "The answer is ", "I choose "]))
    assert not score_answer(lead + answer, truth, options).correct, (lead + answer, truth, options)


@settings(max_examples=100, deadline=None)
@given(choice_questions(), st.data())
def test_the_right_option_named_alone_is_credited(question: tuple[dict[str, str], str], data: Any) -> None:
    options, truth = question
    form = data.draw(st.sampled_from(LABELS + ["{L}", "({L})", "{L}.", "Answer: {L}", "The answer is ({L}).", "{T}", "The answer is {T}."]))
    answer = form.format(L=truth, T=options[truth])
    assert score_answer(answer, truth, options).correct, (answer, truth, options)


@settings(max_examples=100, deadline=None)
@given(choice_questions(), st.data())
def test_the_right_label_with_a_negation_is_not_credited(question: tuple[dict[str, str], str], data: Any) -> None:
    options, truth = question
    form = data.draw(st.sampled_from(["{L}. not {T}", "{L}. It is not {T}.", "({L}) {T} is wrong", "{L}: no, {T} is incorrect", "{L}. isn't {T}"]))
    answer = form.format(L=truth, T=options[truth])
    assert not score_answer(answer, truth, options).correct, (answer, truth, options)
