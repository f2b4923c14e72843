"""The API key never leaves the client, whatever a hostile server echoes back: on every error path.

The server here echoes the request's Authorization header (the key) into each kind of reply a
client handles: a 200 without `choices`, a 200 carrying an error, a body that is not JSON, a
refusal, a server error, the turn's text, the thought. Each test checks the exception, the log
and, end to end, the run folder (trajectories.jsonl, index.html, everything else) and the console.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from mini_o3.agent.policy import PolicyError
from mini_o3.eval.judge import JudgeConfig, JudgeError, LLMJudge
from mini_o3.eval.runner import EvalConfig, run_eval
from mini_o3.policies.http import HttpPolicy

KEY = "sk-live-9f8e7d6c5b4a3f2e1d0c-secret"
KEY_ENV = "MINI_O3_TEST_REDACTION_KEY"


class EchoingServer(ThreadingHTTPServer):
    """Answers every request in `mode`, each answer echoing the Authorization header it got."""

    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reply(self, authorization: str) -> tuple[int, bytes]:
        echo = f"you sent Authorization: {authorization}"
        chat = {"choices": [{"message": {"role": "assistant", "content": "<answer>red</answer>"}, "finish_reason": "stop"}]}
        replies = {
            "no_choices": (200, {"object": "echo", "request_headers": {"Authorization": authorization}}),
            "error_200": (200, {"error": {"message": echo}}),
            "not_json": (200, echo),
            "refused": (400, {"error": {"message": echo}}),
            "unauthorized": (401, {"detail": echo}),
            "server_error": (503, {"error": {"message": echo}}),
            "in_content": (200, {"choices": [{"message": {"role": "assistant", "content": f"<answer>{echo}</answer>"}, "finish_reason": "stop"}]}),
            "in_reasoning": (200, {"choices": [{"message": {"role": "assistant", "content": "<answer>red</answer>", "reasoning_content": echo}, "finish_reason": "stop"}]}),
            "ok": (200, chat),
        }
        status, payload = replies[self.mode]
        return status, (payload if isinstance(payload, str) else json.dumps(payload)).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EchoingServer

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, data = self.server.reply(self.headers.get("Authorization", ""))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echoing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv(KEY_ENV, KEY)
    servers = []

    def start(mode: str) -> EchoingServer:
        server = EchoingServer(mode)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _policy(server: EchoingServer) -> HttpPolicy:
    return HttpPolicy(server.url, "m", api_key_env=KEY_ENV, max_retries=1, backoff_s=0.01, max_backoff_s=0.02)


@pytest.mark.parametrize("mode, words", [
    ("no_choices", "without choices"),
    ("error_200", "answered 200 with an error"),
    ("not_json", "not JSON"),
    ("refused", "refused the request: HTTP 400"),
    ("unauthorized", "HTTP 401"),
    ("server_error", "gave up after 2 attempts"),
])
def test_every_policy_error_is_redacted(echoing, caplog, mode, words):
    caplog.set_level(logging.DEBUG)
    server = echoing(mode)
    with pytest.raises(PolicyError, match=words) as error:
        _policy(server).generate([{"role": "user", "content": "hi"}])
    assert "***" in str(error.value)  # the echo arrived, masked
    assert KEY not in str(error.value) and KEY not in caplog.text


@pytest.mark.parametrize("mode", ["in_content", "in_reasoning"])
def test_the_key_is_masked_in_the_turn_text_too(echoing, mode):
    text = _policy(echoing(mode)).generate([{"role": "user", "content": "hi"}]).text
    assert "***" in text and KEY not in text


def test_listing_models_is_redacted(echoing):
    with pytest.raises(PolicyError) as error:
        _policy(echoing("server_error")).list_models()
    assert "***" in str(error.value) and KEY not in str(error.value)


@pytest.mark.parametrize("mode", ["no_choices", "refused", "server_error", "in_content", "not_json"])
def test_every_judge_error_and_verdict_is_redacted(echoing, caplog, tmp_path, mode):
    caplog.set_level(logging.DEBUG)
    config = JudgeConfig(base_url=echoing(mode).url, model="j", api_key_env=KEY_ENV, cache_path=tmp_path / "cache.jsonl",
                         max_retries=1, backoff_s=0.01, max_backoff_s=0.02)
    with LLMJudge(config) as judge:
        with pytest.raises(JudgeError) as error:
            judge.judge("q", "red", "red")
    assert KEY not in str(error.value) and KEY not in caplog.text
    assert not (tmp_path / "cache.jsonl").exists() or KEY not in (tmp_path / "cache.jsonl").read_text()


@pytest.mark.parametrize("mode", ["no_choices", "refused", "server_error", "in_content", "in_reasoning"])
def test_an_evaluation_writes_the_key_nowhere(echoing, caplog, tmp_path, mode):
    caplog.set_level(logging.DEBUG)
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    (tmp_path / "data.json").write_text(json.dumps([{"id": "q0", "image": "img.png", "question": "What colour?", "answer": "red"}]))
    out = tmp_path / "run"
    console = io.StringIO()
    config = EvalConfig(data=f"json:{tmp_path / 'data.json'}", out=out, samples=2, max_turns=2, concurrency=2, progress=False,
                        max_pixels=64 * 64, min_pixels=28 * 28)
    run_eval(config, _policy(echoing(mode)), console=Console(file=console, width=200))
    files = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.name == "trajectories.jsonl" for path in files) and any(path.name == "index.html" for path in files)
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in console.getvalue() and KEY not in caplog.text
    written = (out / "trajectories.jsonl").read_text()
    assert "***" in written  # the echo was recorded, masked
