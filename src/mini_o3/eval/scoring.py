"""Rule-based answer matching: option letters and texts for multiple choice, normalised text and numbers for open answers.

The rules follow shared/reference/benchmarks.md ("Scoring rules"); docs/scoring.md says where
they differ from lmms-eval and the released Mini-o3 rule, and why. The policy is deliberately
conservative: a missed match can be rescued by the optional LLM judge (mini_o3.eval.judge), but a
false match is invisible in the numbers. tests/fixtures/graded_answers.jsonl holds hundreds of
graded answers; the rules credit none that the grader marks wrong. What counts:

Multiple choice (`options` given, ground truth a letter or an option's text):
- the right letter alone: "B", "b", "(B)", "[B]", "B.", "B)", "B:", "B。", after an optional
  lead-in ("Answer:", "The answer is", "Option", "I choose", "答案是", "Die Antwort ist", ...)
  or before a closing verdict ("B is correct"), and inside markdown bold, quotes or `\\boxed{}`;
- the right letter marked as a label, followed by text that agrees with it: "(B) cotton",
  "B. cotton", "B) cotton", "B: The gloves look like cotton". A letter followed only by a space is
  not a label: "A red car" is read as text, never as letter A. The text after the label must not
  name another option (its label: "A. red\\nB. blue", "A) red B) blue", "A or B"; or its text:
  "A. red, maybe blue"), must not be another option's text ("B. rubber"), and must not negate
  ("A. it is not red"): a model that repeats the option list, hedges, or argues against its own
  label gets no credit;
- the right option's text, compared with the open-answer rules below: "cotton" is B. A text that
  matches a different option is wrong. An exact (or number) match outranks a plural one, so with
  options "car" and "cars" each answer names exactly one; a text that matches several options at
  the same rank names none.
Nothing else counts: no letter is searched for inside a sentence ("I think it is B because
..."), and an answer naming two options is wrong.

Open answers: equal after normalisation, which
- folds case, accents (NFKD) and Unicode compatibility forms, and reads the minus sign U+2212
  (and other dashes before a number) as "-", so "−3" is minus three, never three;
- treats punctuation as a separator, keeping signs and decimal points of numbers, dropping
  thousands separators ("1,000" == "1000") and reading "%" as the word "percent";
- drops the articles "a", "an", "the" before another word (a final "A" as in "plan A" stays);
- reads number words from zero to ninety-nine as digits ("three" == "3", "twenty-one" == "21")
  and compares numbers by value ("3.0" == "3", "+3" == "3"; no units or tolerance);
- as a last, separately reported step, folds a plain plural: one trailing "s" on a word of four or
  more letters ("cars" == "car"; "glasses" != "glass" and "boxes" != "box", which stay misses).
A prediction's lead-in ("The answer is ...", "Answer: ...") is dropped. There is no substring,
synonym or partial credit: "a red car" does not match "red", and "yes, it is" does not match
"yes". Hundreds, ordinals ("first" vs "1st") and units ("3 m" vs "300 cm") are not folded.

A ground truth that is a single letter with no options (V* questions whose options live only
in the question text) is scored by the letter rules with any letter allowed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from mini_o3.agent.trajectory import Trajectory

RULES_VERSION = "2"
"""Shown on every run's protocol card; bump it when a rule changes what scores (1: before issue 15's free-credit fixes)."""

MATCH_KINDS = ("letter", "option_text", "exact", "number", "plural", "none")
"""What `Score.matched_by` can say; "judge" is added by mini_o3.eval.judge."""


@dataclass(frozen=True)
class Score:
    """The verdict on one prediction, with what was read from it and why it scored."""

    correct: bool
    extracted: str | None
    """The answer as read: an option letter for multiple choice, the normalised text otherwise."""
    matched_by: str
    """letter, option_text, exact, number, plural, judge, or none (nothing matched)."""
    reason: str
    """One sentence a person can check."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Score":
        """Rebuild a score written by `to_dict`."""
        return cls(**record)


# ---------------------------------------------------------------- normalisation

_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_SMALL_NUMBERS = {word: value for value, word in enumerate(_UNITS)}
_TENS_NUMBERS = {word: 20 + 10 * index for index, word in enumerate(_TENS)}
_ARTICLES = frozenset({"a", "an", "the"})

# A number (its sign only at the start of a word), or a run of letters. Everything else separates.
_TOKEN_RE = re.compile(r"(?:(?<![^\s(\[])[-+])?(?:\d+(?:\.\d+)?|\.\d+)|[^\W\d_]+")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMERIC_RE = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)")
# NFKC leaves these alone; without this "−3" (U+2212) would lose its sign and read as 3.
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\u2796": "-", "\ufe63": "-", "\uff0d": "-"})


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.translate(_MINUS_SIGNS))
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


def _raw_tokens(text: str) -> list[str]:
    text = _THOUSANDS_RE.sub("", _fold(text)).replace("%", " percent ")
    return _TOKEN_RE.findall(text)


def _drop_articles(tokens: list[str]) -> list[str]:
    # An article only before another word: "plan a" keeps its "a", and "A" alone stays "a".
    return [token for index, token in enumerate(tokens) if not (token in _ARTICLES and index + 1 < len(tokens))]


def _canonical_number(token: str) -> str:
    try:
        value = Decimal(token)
    except InvalidOperation:
        return token
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _fold_numbers(tokens: list[str]) -> list[str]:
    out: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in _TENS_NUMBERS:
            value = _TENS_NUMBERS[token]
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is not None and 1 <= _SMALL_NUMBERS.get(following, 0) <= 9:
                value += _SMALL_NUMBERS[following]
                index += 1
            out.append(str(value))
        elif token in _SMALL_NUMBERS:
            out.append(str(_SMALL_NUMBERS[token]))
        elif _NUMERIC_RE.fullmatch(token):
            out.append(_canonical_number(token))
        else:
            out.append(token)
        index += 1
    return out


def _fold_plural(token: str) -> str:
    if len(token) >= 4 and token.isalpha() and token.endswith("s"):
        return token[:-1]
    return token


def normalize_answer(text: str) -> str:
    """The normalised form open answers are compared in (case, punctuation, articles, numbers; no plural folding)."""
    return " ".join(_fold_numbers(_drop_articles(_raw_tokens(text))))


def _match_open(predicted: str, truth: str) -> str | None:
    """How two open answers match: "exact", "number", "plural", or None."""
    predicted_tokens = _drop_articles(_raw_tokens(predicted))
    truth_tokens = _drop_articles(_raw_tokens(truth))
    if not predicted_tokens or not truth_tokens:
        return None
    if predicted_tokens == truth_tokens:
        return "exact"
    predicted_tokens, truth_tokens = _fold_numbers(predicted_tokens), _fold_numbers(truth_tokens)
    if predicted_tokens == truth_tokens:
        return "number"
    if [_fold_plural(t) for t in predicted_tokens] == [_fold_plural(t) for t in truth_tokens]:
        return "plural"
    return None


# ---------------------------------------------------------------- reading a prediction

_WRAPPERS_RE = re.compile(r"\A(?:\*\*|__|`|\"|'|“|‘)+(.*?)(?:\*\*|__|`|\"|'|”|’)+\Z", re.DOTALL)
_BOXED_RE = re.compile(r"\A\\boxed\{(.*)\}\Z", re.DOTALL)
_OPEN_LEAD_RE = re.compile(r"\A(?:the\s+)?(?:final\s+|correct\s+)?answer\b(?:\s+is\b)?\s*[:：]?\s*", re.IGNORECASE)
_CHOICE_LEAD_RE = re.compile(
    r"\A(?:"
    r"(?:(?:so|thus|therefore|hence),?\s+)?(?:the\s+|my\s+)?(?:final\s+|correct\s+|right\s+|best\s+)?"
    r"(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be)\b)?(?:\s+option\b)?"
    r"|i\s+(?:would\s+|will\s+|'d\s+)?(?:choose|pick|select|go\s+with)(?:\s+option\b)?"
    r"|(?:正确)?答案(?:是|为|應為|应为)?|选项|选择|选|答えは"
    r"|die\s+(?:richtige\s+)?antwort\s+(?:ist|lautet)|antwort"
    r"|la\s+(?:bonne\s+)?r[ée]ponse\s+est|r[ée]ponse"
    r"|la\s+respuesta\s+(?:correcta\s+)?es|respuesta"
    r")\s*[:：]?\s*",
    re.IGNORECASE,
)
# "B is correct", "(B) is the right answer": a verdict after the letter, dropped before reading it.
_CLOSING_VERDICT_RE = re.compile(
    r"\s+is\s+(?:the\s+)?(?:correct|right|best|final)(?:\s+(?:answer|option|choice|one))?\s*[.!。]?\Z"
    r"|\s+is\s+the\s+answer\s*[.!。]?\Z",
    re.IGNORECASE,
)
_BARE_LETTER_RE = re.compile(r"[(\[]?([A-Za-z])[)\]]?\s*[.:。]?")
_LABELLED_LETTER_RE = re.compile(r"(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])\)|([A-Z])[.:])\s*(\S.*)", re.DOTALL)
_OPTION_PREFIX_RE = re.compile(r"\A[(\[]?([A-Za-z])[)\].:]\s*")
# Another option named inside the text after a label: "(b)", "[b]", or a capital letter standing
# alone ("B.", "B)", "or B", "Final answer: B"). "A" before a lower-case word is the article.
_INNER_LABEL_RE = re.compile(
    r"[(\[]([A-Za-z])[)\]]"
    r"|(?<![\w'’])(?!A\s+[a-z])([A-Z])(?![\w'’-])"
)
_NEGATION_RE = re.compile(
    r"\b(?:not|no|never|neither|nor|none|nothing|cannot|unlikely|wrong|incorrect|false|rather\s+than|instead\s+of|except)\b"
    r"|n't\b|n’t\b",
    re.IGNORECASE,
)


def _unwrap(text: str) -> str:
    text = text.strip()
    while True:
        match = _WRAPPERS_RE.fullmatch(text) or _BOXED_RE.fullmatch(text)
        if match is None or not match.group(1).strip():
            return text
        text = match.group(1).strip()


def _drop_lead(text: str, lead: re.Pattern[str]) -> str:
    rest = _unwrap(lead.sub("", text, count=1))
    return rest if rest else text


def _drop_closing_verdict(text: str) -> str:
    """"B is correct" -> "B" (only when what is left is a bare letter)."""
    rest = _unwrap(_CLOSING_VERDICT_RE.sub("", text, count=1))
    return rest if _BARE_LETTER_RE.fullmatch(rest) else text


def _read_letter(text: str) -> tuple[str, str | None] | None:
    """(letter, text after it) when `text` is an option letter in an answer form, else None."""
    bare = _BARE_LETTER_RE.fullmatch(text)
    if bare is not None:
        return bare.group(1).upper(), None
    labelled = _LABELLED_LETTER_RE.fullmatch(text)
    if labelled is not None:
        letter = next(group for group in labelled.groups()[:4] if group)
        return letter.upper(), labelled.group(5).strip()
    return None


def _option_texts(options: dict[str, str]) -> dict[str, str]:
    """Options keyed by upper-case letter, with a repeated "(A) " label dropped from the text."""
    texts = {}
    for key, text in options.items():
        letter = key.strip().strip("()[].").upper()
        label = _OPTION_PREFIX_RE.match(text.strip())
        if label is not None and label.group(1).upper() == letter and text.strip()[label.end() :]:
            text = text.strip()[label.end() :]
        texts[letter] = text
    return texts


def _matching_options(text: str, texts: dict[str, str]) -> list[str]:
    """The options `text` matches at the strictest rank any matches at (exact or number first, plural last)."""
    how = {letter: _match_open(text, option) for letter, option in texts.items()}
    for rank in (("exact", "number"), ("plural",)):
        found = [letter for letter, matched in how.items() if matched in rank]
        if found:
            return found
    return []


def _contains_phrase(text: str, phrase: str) -> bool:
    """Whether the normalised words of `phrase` occur, in order and adjacent, among those of `text`."""
    words, wanted = normalize_answer(text).split(), normalize_answer(phrase).split()
    if not wanted:
        return False
    return any(words[start : start + len(wanted)] == wanted for start in range(len(words) - len(wanted) + 1))


def _label_text_problem(letter: str, rest: str, texts: dict[str, str]) -> str | None:
    """Why the text after option label `letter` does not agree with it, or None when it does."""
    own = texts.get(letter, "")
    # The option's own text may hold what would look like a label or a negation ("Vitamin C.", "not visible").
    remainder = re.sub(rf"(?<!\w){re.escape(own.strip())}(?!\w)", " ", rest, flags=re.IGNORECASE) if own.strip() else rest
    named = {next(group for group in found if group).upper() for found in _INNER_LABEL_RE.findall(remainder)}
    others = sorted((named & set(texts)) - {letter})
    if others:
        return f"the answer names more than one option ({letter}, {others[0]})"
    matching = _matching_options(rest, texts)
    if matching and letter not in matching:
        return f"the label says {letter} but the text {rest!r} is option {matching[0]}'s"
    mentioned = [
        other for other, text in texts.items()
        if other != letter and text.strip() and not _contains_phrase(own, text) and _contains_phrase(rest, text)
    ]
    if mentioned and letter not in matching:
        return f"the text after label {letter} also names option {mentioned[0]} ({texts[mentioned[0]]!r})"
    negation = _NEGATION_RE.search(remainder)
    if negation is not None and letter not in matching:
        return f"the text after label {letter} negates or hedges ({negation.group(0)!r})"
    return None


# ---------------------------------------------------------------- scoring


def score_answer(predicted: str | None, ground_truth: str, options: dict[str, str] | None = None) -> Score:
    """Score an extracted answer against the ground truth (a letter when `options` are given)."""
    if predicted is None:
        return Score(False, None, "none", "the episode gave no answer")
    if not predicted.strip():
        return Score(False, "", "none", "the answer is empty")
    predicted = unicodedata.normalize("NFKC", predicted)
    if options:
        return _score_choice(predicted, ground_truth, _option_texts(options))
    truth_letter = _BARE_LETTER_RE.fullmatch(ground_truth.strip())
    if truth_letter is not None:
        return _score_letter_only(predicted, truth_letter.group(1).upper())
    return _score_open(predicted, ground_truth)


def score_trajectory(trajectory: Trajectory) -> Score:
    """Score a finished trajectory's answer against its own ground truth and options."""
    return score_answer(trajectory.answer, trajectory.ground_truth, trajectory.options or None)


def _right_letter(ground_truth: str, texts: dict[str, str]) -> str:
    truth = ground_truth.strip()
    letter = _BARE_LETTER_RE.fullmatch(truth)
    if letter is not None and letter.group(1).upper() in texts:
        return letter.group(1).upper()
    matches = _matching_options(truth, texts)
    if len(matches) == 1:
        return matches[0]
    raise ValueError(
        f"ground truth {ground_truth!r} is neither an option letter ({', '.join(texts)}) nor exactly one "
        f"option's text; fix the sample's answer or options"
    )


def _score_choice(predicted: str, ground_truth: str, texts: dict[str, str]) -> Score:
    right = _right_letter(ground_truth, texts)
    cleaned = _drop_closing_verdict(_drop_lead(_unwrap(predicted), _CHOICE_LEAD_RE))
    read = _read_letter(cleaned)
    if read is not None and read[0] in texts:
        letter, rest = read
        if rest is None:
            return _letter_verdict(letter, right)
        problem = _label_text_problem(letter, rest, texts)
        if problem is not None:
            return Score(False, letter, "letter", problem)
        return _letter_verdict(letter, right)
    for candidate in dict.fromkeys((cleaned, _unwrap(predicted))):
        matches = _matching_options(candidate, texts)
        if len(matches) > 1:
            return Score(False, None, "option_text", f"the text matches several options ({', '.join(matches)}) equally well")
        if right in matches:
            return Score(True, right, "option_text", f"the text matches option {right}, the right one")
        if matches:
            return Score(False, matches[0], "option_text", f"the text matches option {matches[0]}, not {right}")
    if read is not None and read[1] is None:
        return Score(False, read[0], "letter", f"{read[0]} is not one of the options ({', '.join(texts)})")
    return Score(False, normalize_answer(cleaned), "none", "neither an option letter nor an option's text")


def _letter_verdict(letter: str, right: str) -> Score:
    if letter == right:
        return Score(True, letter, "letter", f"option letter {letter} is the right one")
    return Score(False, letter, "letter", f"option letter {letter}, the right one is {right}")


def _score_letter_only(predicted: str, right: str) -> Score:
    cleaned = _drop_closing_verdict(_drop_lead(_unwrap(predicted), _CHOICE_LEAD_RE))
    read = _read_letter(cleaned)
    if read is None:
        return Score(False, normalize_answer(cleaned), "none", f"not an option letter (the right one is {right})")
    letter, rest = read
    if rest is not None:
        # No option texts to check against: any other label, or a negation, makes the answer unclear.
        problem = _label_text_problem(letter, rest, {other: "" for other in "ABCDEFGH"} | {letter: ""})
        if problem is not None:
            return Score(False, letter, "letter", problem)
    return _letter_verdict(letter, right)


def _score_open(predicted: str, ground_truth: str) -> Score:
    cleaned = _drop_lead(_unwrap(predicted), _OPEN_LEAD_RE)
    extracted = normalize_answer(cleaned)
    how = _match_open(cleaned, ground_truth)
    if how is None:
        return Score(False, extracted, "none", f"{extracted!r} differs from {normalize_answer(ground_truth)!r}")
    reasons = {
        "exact": "equal after normalising case, punctuation and articles",
        "number": "equal once numbers and number words are compared by value",
        "plural": "equal up to a plural 's'",
    }
    return Score(True, extracted, how, reasons[how])
