"""Graded side by side: our rules and three published scorers on tests/fixtures/graded_answers.jsonl.

    PYTHONPATH=src .venv/bin/python bench/scorer_agreement.py

The published scorers are re-expressed here from what their code does (read, not copied), only
to measure them; nothing in mini_o3 uses them:
- lmms-eval V* (EvolvingLMMs-Lab/lmms-eval, lmms_eval/tasks/vstar_bench/utils.py:44-72): a cascade
  of letter patterns over the upper-cased answer, the first hit wins, then "exactly one letter
  A-D anywhere", then "the first character".
- lmms-eval HR-Bench rule pass (lmms_eval/tasks/hrbench/hrbench_evals.py:42-95): punctuation to
  spaces, the answer split into words; exactly one option letter among them is that option;
  else exactly one option text as a case-folded substring. Anything else goes to a GPT
  extractor, which is not run here ("unresolved": not credited).
- Released Mini-o3 multiple-choice reward (Mini-o3/Mini-o3@8654dbf,
  verl/utils/reward_score/general_qa_tool_mc.py:194-234): the last <answer> block of the final
  turn; right when it equals the truth letter, or starts "(X)" or "X." with X the truth.
The HR-Bench and V* rules apply to multiple-choice lines only; the Mini-o3 rule to all.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from mini_o3.agent.protocol import extract_answer
from mini_o3.eval.scoring import score_answer

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "graded_answers.jsonl"
LETTERS = "ABCD"


def vstar_lmms_eval(answer: str, truth: str, options: dict[str, str]) -> bool:
    """lmms-eval's V* letter cascade."""
    text = answer.strip().upper()
    cascade = (
        r"^([A-D])\s*[.)\]]*",
        r"(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+([A-D])",
        r"\(([A-D])\)",
        r"([A-D])\s*(?:\.|\)|])",
        r"(?:^|\s)([A-D])(?:\s|$)",
    )
    letter = None
    for pattern in cascade:
        found = re.search(pattern, text)
        if found:
            letter = found.group(1)
            break
    if letter is None:
        singles = re.findall(r"[A-D]", text)
        letter = singles[0] if len(singles) == 1 else (text[0] if text and text[0] in LETTERS else None)
    return letter == truth


def hrbench_lmms_eval(answer: str, truth: str, options: dict[str, str]) -> bool:
    """lmms-eval's HR-Bench rule pass (an unresolved answer would go to GPT; here it is not credited)."""
    spaced = answer
    for char in ".()[],:;!*#{}":
        spaced = spaced.replace(char, " ")
    words = spaced.split()
    letters = options or {letter: "" for letter in LETTERS}
    named = [letter for letter in letters if letter in words]
    if len(named) == 1:
        return named[0] == truth
    if not named and "Z" in words:
        return False
    texts = [letter for letter, text in letters.items() if text and _option_text(text).lower() in answer.lower()]
    return len(texts) == 1 and texts[0] == truth


def _option_text(text: str) -> str:
    return re.sub(r"^\([A-Z]\)\s*", "", text)


def mini_o3_released(answer: str, truth: str, options: dict[str, str]) -> bool:
    """The released Mini-o3 multiple-choice rule on an already extracted answer."""
    text = answer.strip()
    if text == truth.strip():
        return True
    for pattern in (r"^\(([A-Z])\).*$", r"^([A-Z])\..*$"):
        found = re.match(pattern, text, re.DOTALL)
        if found and found.group(1) == truth.strip():
            return True
    return False


def ours(answer: str | None, truth: str, options: dict[str, str]) -> bool:
    """mini_o3.eval.scoring."""
    return score_answer(answer, truth, options or None).correct


def main() -> None:
    """Print the agreement table."""
    lines = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    scorers = {
        "mini-o3 rules (ours)": (ours, False),
        "released Mini-o3 MC rule": (mini_o3_released, False),
        "lmms-eval V* cascade": (vstar_lmms_eval, True),
        "lmms-eval HR-Bench rules": (hrbench_lmms_eval, True),
    }
    print(f"{len(lines)} graded answers from {FIXTURE.name}; {sum(line['grader'] for line in lines)} right by the grader\n")
    print(f"{'scorer':28} {'lines':>6} {'agree':>7} {'free credit':>12} {'missed':>7}")
    for name, (scorer, choice_only) in scorers.items():
        scored = agree = free = missed = 0
        for line in lines:
            multiple_choice = bool(line["options"]) or re.fullmatch(r"[A-Z]", line["truth"]) is not None
            if choice_only and not multiple_choice:
                continue
            if "raw" in line:
                # Ours and the released rule read the last <answer> block; lmms-eval sees the whole reply.
                answer = extract_answer(line["raw"]) if scorer in (ours, mini_o3_released) else line["raw"]
                if answer is None:
                    answer = "" if scorer is not ours else None
            else:
                answer = line["prediction"]
            verdict = scorer(answer, line["truth"], line["options"])
            scored += 1
            agree += verdict == line["grader"]
            free += verdict and not line["grader"]
            missed += line["grader"] and not verdict
        print(f"{name:28} {scored:6d} {100 * agree / scored:6.1f}% {free:12d} {missed:7d}")


if __name__ == "__main__":
    sys.exit(main())
