"""The LLM judge against a real tiny HTTP judge server on loopback: verdicts, cache, retries, key handling."""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from mini_o3.eval.judge import (
    JudgeConfig,
    JudgeError,
    LLMJudge,
    Verdict,
    VerdictCache,
    cache_key,
    judge_messages,
    parse_judge_score,
)


class JudgeServer(ThreadingHTTPServer):
    """A chat-completions endpoint that says "Score: 1" when the prediction line equals the reference line."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), JudgeHandler)
        self.requests: list[dict[str, Any]] = []
        self.scripted: deque[tuple[int, dict[str, str], str]] = deque()
        """(status, headers, body) replies sent before the default behaviour."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class JudgeHandler(BaseHTTPRequestHandler):
    server: JudgeServer

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body, "authorization": self.headers.get("Authorization")})
        if self.server.scripted:
            status, headers, text = self.server.scripted.popleft()
        else:
            lines = body["messages"][-1]["content"].splitlines()
            reference = next(line for line in lines if line.startswith("Reference answer: "))[18:]
            predicted = next(line for line in lines if line.startswith("Predicted answer: "))[18:]
            score = int(reference.casefold() == predicted.casefold())
            status, headers = 200, {}
            text = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"Same meaning.\nScore: {score}"}}]})
        payload = text.encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[JudgeServer]:
    judge_server = JudgeServer()
    thread = threading.Thread(target=judge_server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield judge_server
    judge_server.shutdown()
    judge_server.server_close()


def config(server: JudgeServer, tmp_path: Path, **overrides: Any) -> JudgeConfig:
    values = {"base_url": server.url, "model": "judge-mini", "cache_path": tmp_path / "judge.jsonl",
              "backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0, "api_key_env": "MINI_O3_TEST_JUDGE_KEY"}
    return JudgeConfig(**{**values, **overrides})


def test_verdicts_come_from_the_server(server: JudgeServer, tmp_path: Path) -> None:
    with LLMJudge(config(server, tmp_path)) as judge:
        right = judge.judge("What colour is the sign?", "red", "Red")
        wrong = judge.judge("What colour is the sign?", "red", "blue")
    assert (right.correct, right.score, right.cached) == (True, 1, False)
    assert (wrong.correct, wrong.score) == (False, 0)
    assert right.raw.endswith("Score: 1")
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "judge-mini"
    assert request["body"]["temperature"] == 0.0
    assert request["body"]["messages"] == judge_messages("What colour is the sign?", "red", "Red")


def test_the_cache_prevents_a_second_call_even_after_a_restart(server: JudgeServer, tmp_path: Path) -> None:
    with LLMJudge(config(server, tmp_path)) as judge:
        first = judge.judge("How many cars?", "3", "3")
        again = judge.judge("How many cars?", "3", "3")
    assert len(server.requests) == 1
    assert (first.cached, again.cached) == (False, True)
    assert again.correct and again.raw == first.raw
    with LLMJudge(config(server, tmp_path)) as reopened:
        assert reopened.judge("How many cars?", "3", "3").cached
        assert reopened.requests_sent == 0
        reopened.judge("How many cars?", "3", "4")
    assert len(server.requests) == 2
    assert len(VerdictCache(tmp_path / "judge.jsonl")) == 2


def test_a_different_model_is_a_different_cache_entry(server: JudgeServer, tmp_path: Path) -> None:
    with LLMJudge(config(server, tmp_path)) as judge:
        judge.judge("q", "a", "a")
    with LLMJudge(config(server, tmp_path, model="other-judge")) as judge:
        assert not judge.judge("q", "a", "a").cached
    assert len(server.requests) == 2
    assert cache_key("m", "q", "a", "b") != cache_key("m", "q", "a b", "")


def test_no_prediction_is_wrong_without_a_request(server: JudgeServer, tmp_path: Path) -> None:
    with LLMJudge(config(server, tmp_path)) as judge:
        assert judge.judge("q", "red", None) == Verdict(False, 0, "", False)
        assert not judge.judge("q", "red", "  ").correct
    assert server.requests == []


def test_retries_on_429_and_5xx_then_succeeds(server: JudgeServer, tmp_path: Path) -> None:
    server.scripted.extend([(429, {"Retry-After": "0"}, "{}"), (503, {}, "busy"), (500, {}, "oops")])
    with LLMJudge(config(server, tmp_path)) as judge:
        verdict = judge.judge("q", "red", "red")
        assert verdict.correct
        assert judge.requests_sent == 4
    assert len(server.requests) == 4


def test_gives_up_after_the_retries_and_caches_nothing(server: JudgeServer, tmp_path: Path) -> None:
    server.scripted.extend([(503, {}, "busy")] * 3)
    with LLMJudge(config(server, tmp_path, max_retries=2)) as judge:
        with pytest.raises(JudgeError, match="gave up after 3 attempts; last error from .*: HTTP 503: busy"):
            judge.judge("q", "red", "red")
    assert len(server.requests) == 3
    assert not (tmp_path / "judge.jsonl").exists()


def test_a_client_error_is_not_retried(server: JudgeServer, tmp_path: Path) -> None:
    server.scripted.append((401, {}, '{"error": "bad key"}'))
    with LLMJudge(config(server, tmp_path)) as judge:
        with pytest.raises(JudgeError, match="HTTP 401"):
            judge.judge("q", "red", "red")
    assert len(server.requests) == 1


def test_nothing_listening_fails_at_once_with_a_hint(tmp_path: Path) -> None:
    dead = JudgeServer()
    url = dead.url
    dead.server_close()
    judge = LLMJudge(JudgeConfig(base_url=url, model="m", cache_path=None, max_retries=3, backoff_s=0.01, timeout_s=1.0))
    with pytest.raises(JudgeError, match=r"cannot reach .* \(connection refused\): is the server running"):
        judge.judge("q", "red", "red")
    assert judge.requests_sent == 1  # a port nobody listens on is not a transient failure
    judge.close()


def test_a_reply_without_a_score_is_an_error_and_is_not_cached(server: JudgeServer, tmp_path: Path) -> None:
    reply = json.dumps({"choices": [{"message": {"content": "I cannot tell."}}]})
    server.scripted.append((200, {}, reply))
    with LLMJudge(config(server, tmp_path)) as judge:
        with pytest.raises(JudgeError, match="without a score"):
            judge.judge("q", "red", "red")
        assert judge.judge("q", "red", "red").correct
    assert len(server.requests) == 2


def test_the_api_key_is_sent_but_never_logged_or_cached(
    server: JudgeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-very-secret-123"
    monkeypatch.setenv("MINI_O3_TEST_JUDGE_KEY", secret)
    server.scripted.append((401, {}, '{"error": "no"}'))
    caplog.set_level(logging.DEBUG)
    with LLMJudge(config(server, tmp_path)) as judge:
        with pytest.raises(JudgeError) as failure:
            judge.judge("q", "red", "red")
        judge.judge("q", "red", "red")
        assert secret not in repr(judge.config) and secret not in repr(vars(judge))
    assert server.requests[-1]["authorization"] == f"Bearer {secret}"
    assert secret not in str(failure.value)
    assert secret not in caplog.text
    assert secret not in (tmp_path / "judge.jsonl").read_text()


def test_without_a_key_no_authorization_header_is_sent(server: JudgeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINI_O3_TEST_JUDGE_KEY", raising=False)
    with LLMJudge(config(server, tmp_path)) as judge:
        judge.judge("q", "red", "red")
    assert server.requests[0]["authorization"] is None


def test_a_torn_last_cache_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "judge.jsonl"
    good = {"key": "k1", "score": 1, "raw": "Score: 1"}
    path.write_text(json.dumps(good) + "\n" + '{"key": "k2", "sco')
    assert VerdictCache(path).get("k1") == good
    assert VerdictCache(path).get("k2") is None
    path.write_text('{"key": "k2", "sco\n' + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match="judge.jsonl:1"):
        VerdictCache(path)


def test_the_cache_survives_a_crash_mid_write_and_two_reruns(server: JudgeServer, tmp_path: Path) -> None:
    path = tmp_path / "judge.jsonl"
    questions = [("How many cars?", "3", "3"), ("What colour?", "red", "blue"), ("Which side?", "left", "left")]
    for rerun, (question, truth, prediction) in enumerate(questions):
        with LLMJudge(config(server, tmp_path)) as judge:
            assert all(judge.judge(*asked).cached for asked in questions[:rerun])  # every whole verdict is kept
            judge.judge(question, truth, prediction)
        assert len(server.requests) == rerun + 1
        text = path.read_text()
        path.write_text(text + text.splitlines(keepends=True)[-1][:25])  # killed while appending a line
    with LLMJudge(config(server, tmp_path)) as judge:
        assert all(judge.judge(*asked).cached for asked in questions) and judge.requests_sent == 0
    assert len(VerdictCache(path)) == 3


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Score: 1", 1),
        ("Score: 0", 0),
        ("score:1", 1),
        ("**Score:** 0", 0),
        ("The prediction names the same colour.\n\nScore: 1", 1),
        ("Rubric says Score: 0 or 1. Here: Score: 1", 1),
        ("<think>Score: 0 would be wrong</think>Score: 1", 1),
        ("1", 1),
        ("0.", 0),
        ("Score: 0.5", None),
        ("Score: 10", None),
        ("I am not sure.", None),
        ("", None),
    ],
)
def test_parse_judge_score(reply: str, score: int | None) -> None:
    assert parse_judge_score(reply) == score


def test_the_base_url_is_checked_and_completed(tmp_path: Path) -> None:
    with LLMJudge(JudgeConfig(base_url="http://127.0.0.1:9", model="m")) as judge:
        assert judge.url == "http://127.0.0.1:9/v1/chat/completions"
    with pytest.raises(ValueError, match="base URL"):
        LLMJudge(JudgeConfig(base_url="127.0.0.1:9", model="m"))


def test_a_verdict_becomes_a_score() -> None:
    score = Verdict(True, 1, "Score: 1", False).as_score("Red")
    assert (score.correct, score.extracted, score.matched_by) == (True, "Red", "judge")
