"""An optional LLM judge: asks any OpenAI-compatible chat endpoint whether a prediction means the ground truth.

The rubric plays the role of the paper's GPT-4o judge (question, ground truth and prediction
in, "Score: 0 or 1" out) in our own wording. Every verdict is cached on disk in a JSONL file
keyed by a hash of the rubric version, model, question, ground truth and prediction, so
rescoring a run never calls the judge twice for the same answer. The HTTP is the policy's
(`mini_o3.policies.chat_client`, on httpx): transient failures (429, 5xx, timeouts, dropped
connections) are retried with exponential backoff or the server's Retry-After; the API key is
read from an environment variable when the judge is made, and redacted from every error and
log line; verdicts and the cache never hold it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mini_o3.eval.scoring import Score
from mini_o3.jsonl import JsonlAppender, JsonlError, iter_numbered
from mini_o3.policies.chat_client import ChatClient, ChatRequestError

RUBRIC_VERSION = "1"
"""Part of every cache key: change it when the rubric's wording changes."""

JUDGE_SYSTEM_PROMPT = (
    "You check answers to questions about images. You do not see the image: decide only "
    "whether the predicted answer says the same thing as the reference answer."
)

JUDGE_USER_TEMPLATE = """Question: {question}

Reference answer: {ground_truth}

Predicted answer: {prediction}

The prediction is correct when it gives the same answer as the reference: the same option, object, \
colour, text, number or position, even if it is worded differently, abbreviated, or has extra words \
that do not change its meaning. It is wrong when it gives a different answer, hedges between several \
answers, or leaves out part of what the reference requires.

Reply with one line only: "Score: 1" if the prediction is correct, "Score: 0" if it is not."""


_SCORE_RE = re.compile(r"score\s*\**\s*[:=]?\s*\**\s*([01])(?![\d.])", re.IGNORECASE)
_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)


class JudgeError(RuntimeError):
    """The judge gave no verdict: the endpoint failed after retries, refused the request, or replied without a score."""


@dataclass
class JudgeConfig:
    """Where and how to ask the judge."""

    base_url: str
    """The OpenAI-compatible API root, e.g. "http://127.0.0.1:8000/v1" (a bare host gets /v1, as for policies)."""
    model: str
    """The judge model's name as the endpoint knows it."""
    api_key_env: str = "MINI_O3_JUDGE_API_KEY"
    """The environment variable holding the API key; unset sends no Authorization header (local servers)."""
    cache_path: str | Path | None = None
    """The JSONL verdict cache; None keeps verdicts in memory only."""
    timeout_s: float = 60.0
    """Per-request timeout."""
    max_retries: int = 5
    """Retries after the first attempt for 429, 5xx, timeouts and connection errors."""
    backoff_s: float = 1.0
    """The first retry's delay; doubles each retry, with jitter."""
    max_backoff_s: float = 30.0
    """The longest delay between two attempts (a server's Retry-After included)."""
    max_tokens: int = 256
    """The judge's reply length (room for a short explanation before the score)."""
    temperature: float = 0.0
    """Greedy by default, so a verdict is repeatable."""


@dataclass(frozen=True)
class Verdict:
    """The judge's decision on one prediction."""

    correct: bool
    score: int
    """1 or 0, as the judge wrote it."""
    raw: str
    """The judge's whole reply (empty when no call was needed)."""
    cached: bool
    """True when the verdict came from the cache, without a request."""

    def as_score(self, extracted: str | None) -> Score:
        """This verdict as a `mini_o3.eval.scoring.Score`, so results hold one kind of score."""
        return Score(self.correct, extracted, "judge", f"the LLM judge replied {self.raw.strip()[-80:]!r}")


def judge_messages(question: str, ground_truth: str, prediction: str) -> list[dict[str, str]]:
    """The chat messages sent to the judge."""
    user = JUDGE_USER_TEMPLATE.format(question=question.strip(), ground_truth=ground_truth.strip(), prediction=prediction.strip())
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_judge_score(text: str) -> int | None:
    """The score in a judge's reply (the last "Score: 0/1", or a bare 0/1), or None when there is none."""
    visible = _THINK_RE.sub(" ", text)
    found = _SCORE_RE.findall(visible)
    if found:
        return int(found[-1])
    bare = visible.strip().strip(".*`\"'")
    return int(bare) if bare in ("0", "1") else None


def cache_key(model: str, question: str, ground_truth: str, prediction: str) -> str:
    """The cache key of one verdict: a SHA-256 over the rubric version and the four inputs."""
    payload = json.dumps([RUBRIC_VERSION, model, question, ground_truth, prediction], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VerdictCache:
    """Verdicts by key, loaded from and appended to a JSONL file; safe to share between threads.

    A crash mid-append leaves a torn last line: loading skips it (that verdict is asked
    again) and the next append cuts it first, so the file stays readable across reruns.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._appender = JsonlAppender(self.path) if self.path is not None else None
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        hint = "delete the line or the file"
        try:
            for number, record in iter_numbered(path):
                if not isinstance(record.get("key"), str):
                    raise ValueError(f"{path}:{number}: not a judge cache record (no 'key'); {hint}")
                self._records[record["key"]] = record
        except JsonlError as error:
            raise ValueError(f"{error}; {hint}") from error

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record for `key`, or None."""
        with self._lock:
            return self._records.get(key)

    def put(self, record: dict[str, Any]) -> None:
        """Store a record (it must carry "key") and append it to the file."""
        with self._lock:
            self._records[record["key"]] = record
            if self._appender is not None:
                self._appender.append(record)

    def close(self) -> None:
        """Close the file (a later put opens it again)."""
        if self._appender is not None:
            self._appender.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


class LLMJudge:
    """Judge predictions through an OpenAI-compatible endpoint, with a disk cache and retries."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self._client = ChatClient(
            config.base_url, api_key_env=config.api_key_env, timeout_s=config.timeout_s, max_retries=config.max_retries,
            backoff_s=config.backoff_s, max_backoff_s=config.max_backoff_s,
        )
        self.url = self._client.base_urls[0] + "/chat/completions"
        self.cache = VerdictCache(config.cache_path)

    @property
    def requests_sent(self) -> int:
        """HTTP requests made by this judge, retries included."""
        return self._client.requests_sent

    def judge(self, question: str, ground_truth: str, prediction: str | None) -> Verdict:
        """The verdict on `prediction`; None or an empty prediction is wrong without a request."""
        if prediction is None or not prediction.strip():
            return Verdict(False, 0, "", False)
        key = cache_key(self.config.model, question, ground_truth, prediction)
        cached = self.cache.get(key)
        if cached is not None:
            return Verdict(cached["score"] == 1, cached["score"], cached["raw"], True)
        reply = self._complete(judge_messages(question, ground_truth, prediction))
        score = parse_judge_score(reply)
        if score is None:
            raise JudgeError(self._client.redact(f"the judge {self.config.model!r} replied without a score: {reply.strip()[:200]!r}"))
        self.cache.put(
            {"key": key, "model": self.config.model, "question": question, "ground_truth": ground_truth,
             "prediction": prediction, "score": score, "raw": reply}
        )
        return Verdict(score == 1, score, reply, False)

    def _complete(self, messages: list[dict[str, str]]) -> str:
        body = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens}
        try:
            reply = self._client.post("/chat/completions", json.dumps(body).encode("utf-8"))
        except ChatRequestError as error:
            hint = f" (check the judge model name and the key in ${self.config.api_key_env})" if error.refused else ""
            raise JudgeError(f"the judge at {self.url}: {error}{hint}") from None
        try:
            content = reply.payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as error:
            raise JudgeError(self._client.redact(
                f"the judge at {self.url} sent a reply that is not a chat completion ({error!r}): {json.dumps(reply.payload)[:200]}"
            )) from None
        if not isinstance(content, str):
            raise JudgeError(self._client.redact(f"the judge at {self.url} sent no text content: {json.dumps(reply.payload)[:200]}"))
        return self._client.redact(content)

    def close(self) -> None:
        """Close the idle connections and the cache file."""
        self._client.close()
        self.cache.close()

    def __enter__(self) -> "LLMJudge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
