"""The protocol card: every setting that moves a score, recorded with every run.

The same model scores several points apart on V* and HR-Bench under different prompts, pixel
limits, K, temperatures, turn budgets, scorers and option orders; a published number means
something only beside its card. `protocol_card` builds it when a run starts (config.json keeps
it), `summarize_run` copies it into metrics.json with the scoring actually used, the console
prints it at both ends of a run and the report shows it first.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from mini_o3.agent import protocol
from mini_o3.agent.sample import Sample
from mini_o3.eval.scoring import RULES_VERSION

DATA_SUFFIXES = (".json", ".jsonl", ".tsv", ".parquet", ".csv")
"""In a dataset folder, the files whose bytes the data hash covers (images are left out)."""

PROMPTS = {"zoom": protocol.SYSTEM_PROMPT, "direct": protocol.DIRECT_SYSTEM_PROMPT}
"""The system prompt of each prompt mode (see mini_o3.eval.baseline)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def data_hash(path: Path | None) -> dict[str, Any]:
    """The SHA-256 of the data file, or of a folder's data files (names and bytes, images left out)."""
    if path is None or not path.exists():
        return {"sha256": None, "covers": "nothing (no data path)"}
    if path.is_file():
        return {"sha256": sha256_file(path), "covers": path.name}
    files = sorted(item for item in path.rglob("*") if item.is_file() and item.suffix.lower() in DATA_SUFFIXES)
    digest = hashlib.sha256()
    for item in files:
        digest.update(item.relative_to(path).as_posix().encode("utf-8") + b"\0" + sha256_file(item).encode("ascii") + b"\n")
    return {"sha256": digest.hexdigest(), "covers": f"{len(files)} data files under the folder (not the images)"}


def questions_hash(samples: list[Sample]) -> str:
    """The SHA-256 of the questions evaluated (ids, texts, truths, options, in order): equal hashes, same questions."""
    payload = [[sample.id, sample.question, sample.answer, sample.options] for sample in samples]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def option_order(samples: list[Sample]) -> dict[str, Any]:
    """How the options were ordered, and where the right letter falls (a benchmark whose answer is always "A" rewards a bias)."""
    letters = Counter(sample.answer for sample in samples if sample.options)
    rotated = sum(1 for sample in samples if sample.meta.get("cycle_category") is not None)
    return {
        "order": "as in the data file (mini-o3 shuffles nothing)",
        "right_letter": dict(sorted(letters.items())),
        "rotations": "HR-Bench's four option rotations (cycle_category 0-3), each scored as its own question" if rotated else None,
        "multiple_choice_questions": sum(letters.values()),
        "open_questions": sum(1 for sample in samples if not sample.options),
    }


def describe_policy(policy: Any) -> str:
    """A one-line description of a policy for config.json and the report (its repr when it has one)."""
    if type(policy).__repr__ is not object.__repr__:
        return repr(policy)
    return f"{type(policy).__module__}.{type(policy).__qualname__}"


def model_card(policy: Any) -> dict[str, Any]:
    """What is known about the model behind a policy: its description, and for local models the checkpoint, type, dtype and image limits."""
    card: dict[str, Any] = {"policy": describe_policy(policy)}
    inner = policy
    while hasattr(inner, "inner") and inner is not getattr(inner, "inner"):
        inner = inner.inner
    model = getattr(inner, "model", None)
    config = getattr(model, "config", None)
    if config is not None:
        card.update(
            checkpoint=getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None),
            model_type=getattr(config, "model_type", None),
            dtype=str(getattr(model, "dtype", "")) or None,
            device=str(getattr(inner, "device", "")) or None,
        )
    elif isinstance(model, str):
        card.update(model=model, endpoints=list(getattr(inner, "base_urls", []) or []))
    processor = getattr(inner, "image_processor", None)
    if processor is not None:
        # transformers 5 keeps Qwen's pixel limits in `size` (shortest_edge / longest_edge count pixels, not edges).
        size = getattr(processor, "size", None)
        card["processor_pixels"] = {
            "min": getattr(processor, "min_pixels", None) or getattr(size, "shortest_edge", None),
            "max": getattr(processor, "max_pixels", None) or getattr(size, "longest_edge", None),
        }
    settings = getattr(inner, "card", None)
    if callable(settings):
        card.update(settings())
    return card


def protocol_card(config: dict[str, Any], policy: Any, dataset: dict[str, Any], samples: list[Sample]) -> dict[str, Any]:
    """The card of a run: `config` is EvalConfig.to_dict(), `dataset` what the loader reported (spec, kind, path, skipped)."""
    prompt = config.get("prompt", "zoom")
    system = PROMPTS[prompt]
    path = Path(dataset["path"]) if dataset.get("path") else None
    return {
        "model": model_card(policy),
        "prompt": {
            "mode": prompt,
            "system_prompt_sha256": hashlib.sha256(system.encode("utf-8")).hexdigest(),
            "system_prompt": system,
            "zoom_tool": prompt == "zoom",
            "observation_numbering": config["numbering"],
            "question": "the data's question text as shipped (multiple choice: options listed, then the V* answer instruction)",
        },
        "images": {"max_pixels": config["max_pixels"], "min_pixels": config["min_pixels"], "refuse_originals_over": config["pixel_limit"]},
        "sampling": {"K": config["samples"], "temperature": config["temperature"], "top_p": config["top_p"],
                     "max_new_tokens_per_turn": config["max_new_tokens"], "seed": config["seed"]},
        "budget": {"max_turns": config["max_turns"], "max_images": config["max_images"], "context_tokens": config["max_context_tokens"],
                   "context_reserve": config["context_reserve"]},
        "scoring": scoring_card(config.get("judge"), config.get("judge_mode", "rescue")),
        "data": {
            "spec": config["data"], "kind": dataset.get("kind"), "path": str(path) if path else None, **data_hash(path),
            "questions": len(samples), "questions_sha256": questions_hash(samples), "skipped_records": dataset.get("skipped", 0),
            "limit": config.get("limit"),
        },
        "options": option_order(samples),
    }


def scoring_card(judge: dict[str, Any] | None, judge_mode: str) -> dict[str, Any]:
    """How answers were scored: the rules' version, and the judge (model, endpoint, mode) when there was one."""
    rules = f"mini_o3.eval.scoring rules v{RULES_VERSION} (docs/scoring.md); last <answer> block of the final turn"
    if not judge:
        return {"rules": rules, "judge": None}
    from mini_o3.eval.judge import RUBRIC_VERSION

    return {"rules": rules, "judge": {"model": judge.get("model"), "base_url": judge.get("base_url"), "mode": judge_mode,
                                      "rubric_version": RUBRIC_VERSION}}


def card_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """The card as (name, value) rows for the console and the report (the system prompt by mode and hash, not in full)."""
    if not card or "model" not in card:
        return []
    model, prompt, images, sampling, budget = card["model"], card["prompt"], card["images"], card["sampling"], card["budget"]
    scoring, data, options = card["scoring"], card["data"], card["options"]
    judge = scoring.get("judge")
    rows = [
        ("model", model.get("policy", "?")),
        ("model settings", ", ".join(f"{key} {value}" for key, value in model.items() if key != "policy" and value not in (None, [], {})) or "-"),
        ("prompt", f"{prompt['mode']} ({'the released zoom prompt' if prompt['zoom_tool'] else 'no zoom tool offered'}), "
                   f"system prompt sha256 {prompt['system_prompt_sha256'][:12]}, numbering {prompt['observation_numbering']}"),
        ("pixels", f"shown at most {images['max_pixels']:,} and at least {images['min_pixels']:,}; originals over {images['refuse_originals_over']:,} refused"),
        ("K, temperature", f"K={sampling['K']}, temperature {sampling['temperature']}, top_p {sampling['top_p']}, seed {sampling['seed']}"),
        ("turns, tokens", f"max {budget['max_turns']} turns, {sampling['max_new_tokens_per_turn']:,} tokens a turn, context {budget['context_tokens']:,}"
                          + (f", at most {budget['max_images']} images" if budget.get("max_images") else "")),
        ("scoring", scoring["rules"] + (f"; judge {judge['model']} ({judge['mode']}) at {judge['base_url']}" if judge else "; no judge")),
        ("data", f"{data['kind']}:{data['path']} ({data['questions']} questions"
                 + (f", limit {data['limit']}" if data.get("limit") is not None else "") + (f", {data['skipped_records']} skipped" if data.get("skipped_records") else "") + ")"),
        ("data sha256", f"{(data.get('sha256') or '-')[:16]} over {data.get('covers')}; questions {data['questions_sha256'][:16]}"),
        ("option order", options["order"] + (f"; right letter {options['right_letter']}" if options.get("right_letter") else "")
                         + (f"; {options['rotations']}" if options.get("rotations") else "")),
    ]
    return rows
