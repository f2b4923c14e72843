"""HttpPolicy against real mini-o3 servers on loopback: images, stop strings, retries, load sharing."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.sample import Sample
from mini_o3.agent.env import Limits, ZoomEnv
from mini_o3.agent.policy import Policy, PolicyError, SamplingParams
from conftest import Recorder
from mini_o3.policies.http import HttpPolicy, _generation_from_reply, normalize_base_url
from mini_o3.policies.scripted import EchoPolicy, ScriptedPolicy
from mini_o3.serve import start_server
from mini_o3.agent.trajectory import Status

FAKE_KEY = "sk-test-0123456789abcdef-do-not-leak"
ZOOM = '<think>small</think><grounding>{"bbox_2d": [0.5, 0.5, 1.0, 1.0], "source": "original_image"}</grounding>'


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _image(width: int = 61, height: int = 47, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _env(image: Image.Image, question: str = "What colour is the small square?") -> ZoomEnv:
    return ZoomEnv(Sample(id="s", image=image, question=question, answer="red"), Limits(max_turns=4))


def test_round_trip_of_views_and_text_png_exact():
    recorder = Recorder([ZOOM, "<answer>red</answer>"])
    server, url = start_server(recorder)
    try:
        policy = HttpPolicy(url, "m", image_format="PNG")
        assert isinstance(policy, Policy)
        env = _env(_image(300, 220), 'Is it "red", blue or ünïcode?\n')
        while not env.step(policy.generate(env.messages(), SamplingParams(temperature=0.7, top_p=0.8, max_new_tokens=99, seed=5))):
            pass
    finally:
        server.stop()
    assert env.trajectory.status is Status.ANSWERED and env.trajectory.answer == "red"
    sent = env.messages()[:-1]  # what the policy was asked on the second turn
    received, sampling = recorder.calls[1]
    assert [m["role"] for m in received] == [m["role"] for m in sent]
    assert [p["type"] for p in received[1]["content"]] == ["image", "text"]  # first user turn: image first
    for got, want in zip(received, sent):
        for got_part, want_part in zip(got["content"], want["content"]):
            if want_part["type"] == "text":
                assert got_part["text"] == want_part["text"]
            else:
                assert np.array_equal(np.asarray(got_part["image"]), np.asarray(want_part["image"].image))
    assert received[2]["content"][0]["text"] == ZOOM  # the assistant turn kept its stop string
    assert sampling == SamplingParams(temperature=0.7, top_p=0.8, max_new_tokens=99, seed=5)


def test_jpeg_images_arrive_within_tolerance_and_pil_images_are_accepted(serve):
    recorder = Recorder(["<answer>x</answer>"])
    _, url = serve(recorder)
    smooth = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (80, 1))).convert("RGB")
    HttpPolicy(url, "m").generate([protocol.system_message(), protocol.first_user_message(smooth, "q")])
    got = np.asarray(recorder.calls[0][0][1]["content"][0]["image"], dtype=np.int16)
    assert got.shape == (80, 120, 3)
    assert np.abs(got - np.asarray(smooth, dtype=np.int16)).mean() < 2.0


@pytest.mark.parametrize("keep_on_server", [True, False])
def test_stop_string_is_there_whether_or_not_the_server_keeps_it(serve, keep_on_server):
    _, url = serve(ScriptedPolicy([ZOOM + " never sent"]))
    generation = HttpPolicy(url, "m", include_stop_str_in_output=keep_on_server).generate(_env(_image()).messages())
    assert generation.text == ZOOM
    assert generation.finish_reason == "stop"
    assert generation.prompt_tokens > 0 and generation.completion_tokens > 0 and generation.latency_s > 0


def test_a_server_that_rejects_include_stop_str_in_output_is_used_without_it(serve, caplog):
    _, url = serve(ScriptedPolicy([ZOOM]), strict_fields=True)
    policy = HttpPolicy(url, "m")
    assert policy.generate(_env(_image()).messages()).text == ZOOM
    assert policy.include_stop_str_in_output is False
    assert "rejects include_stop_str_in_output" in caplog.text


@pytest.mark.parametrize("status", [503, 429])
def test_retries_on_transient_statuses_then_succeeds(serve, status):
    server, url = serve(EchoPolicy(), fail_first_n=2, fail_status=status)
    generation = HttpPolicy(url, "m", backoff_s=0.01).generate(_env(_image(), "hello").messages())
    assert generation.text.endswith("<answer>hello</answer>")
    assert generation.extra["attempts"] == 3 and server.chat_requests == 3


def test_retry_after_is_honoured(serve):
    _, url = serve(EchoPolicy(), fail_first_n=1, fail_status=429, retry_after_s=0.4)
    started = time.perf_counter()
    HttpPolicy(url, "m", backoff_s=0.01).generate(_env(_image()).messages())
    assert time.perf_counter() - started >= 0.4


def test_gives_up_after_max_retries_naming_the_url_but_never_the_key(serve, monkeypatch, caplog):
    monkeypatch.setenv("MINI_O3_TEST_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)
    server, url = serve(EchoPolicy(), fail_first_n=1000, fail_status=503, api_key=FAKE_KEY)
    policy = HttpPolicy(url, "m", api_key_env="MINI_O3_TEST_KEY", max_retries=2, backoff_s=0.01)
    with pytest.raises(PolicyError) as error:
        policy.generate(_env(_image()).messages())
    message = str(error.value)
    assert url in message and "3 attempts" in message and "HTTP 503" in message
    assert server.chat_requests == 3  # the key was accepted: failures were the injected ones
    assert FAKE_KEY not in message and FAKE_KEY not in repr(policy) and FAKE_KEY not in caplog.text
    assert "503" in caplog.text  # the failure itself was logged


def test_a_wrong_key_fails_at_once_naming_the_variable_not_the_key(serve, monkeypatch):
    monkeypatch.setenv("MINI_O3_TEST_KEY", FAKE_KEY)
    server, url = serve(EchoPolicy(), api_key="the-right-key")
    with pytest.raises(PolicyError, match="MINI_O3_TEST_KEY") as error:
        HttpPolicy(url, "m", api_key_env="MINI_O3_TEST_KEY").generate(_env(_image()).messages())
    assert "HTTP 401" in str(error.value) and FAKE_KEY not in str(error.value)
    assert server.chat_requests == 0


def test_an_unexpected_error_mid_request_leaves_no_request_counted_in_flight(serve):
    _, first = serve(EchoPolicy())
    _, second = serve(EchoPolicy())
    policy = HttpPolicy([first, second], "m")
    client = policy._client

    def interrupted(*args, **kwargs):
        raise RuntimeError("interrupted mid-request")  # as a bug or a Ctrl-C would: not a transport error

    client._request = interrupted
    for _ in range(3):
        with pytest.raises(RuntimeError, match="interrupted"):
            policy.generate(_env(_image()).messages())
    assert [endpoint.in_flight for endpoint in client._endpoints] == [0, 0]
    del client._request
    replies = [policy.generate(_env(_image()).messages()).extra["endpoint"] for _ in range(4)]
    assert sorted(replies) == sorted(policy.base_urls * 2)  # both still chosen: neither looks busy


def test_an_api_key_with_a_control_character_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("MINI_O3_TEST_KEY", FAKE_KEY + "\n")
    assert HttpPolicy("http://127.0.0.1:9/v1", "m", api_key_env="MINI_O3_TEST_KEY")._client._secret == FAKE_KEY  # trailing newline trimmed
    monkeypatch.setenv("MINI_O3_TEST_KEY", FAKE_KEY[:5] + "\r\nX-Injected: 1")
    with pytest.raises(ValueError, match=r"\$MINI_O3_TEST_KEY contains a control character") as error:
        HttpPolicy("http://127.0.0.1:9/v1", "m", api_key_env="MINI_O3_TEST_KEY")
    assert FAKE_KEY[:5] not in str(error.value)


def test_other_4xx_are_not_retried(serve):
    server, url = serve(EchoPolicy(), fail_first_n=5, fail_status=400)
    with pytest.raises(PolicyError, match="refused the request: HTTP 400"):
        HttpPolicy(url, "m", backoff_s=0.01).generate(_env(_image()).messages())
    assert server.chat_requests == 1


def test_nothing_listening_fails_fast_with_a_hint():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    policy = HttpPolicy(url, "m")
    started = time.perf_counter()
    with pytest.raises(PolicyError) as error:
        policy.generate(_env(_image()).messages())
    assert time.perf_counter() - started < 1.0
    assert f"cannot reach {url}" in str(error.value) and "mini-o3 serve" in str(error.value)
    with pytest.raises(PolicyError, match="cannot list models"):
        policy.list_models()


def test_a_slow_server_times_out(serve):
    _, url = serve(EchoPolicy(), delay_s=2.0)
    started = time.perf_counter()
    with pytest.raises(PolicyError, match="no reply within timeout_s=0.2"):
        HttpPolicy(url, "m", timeout_s=0.2, max_retries=1, backoff_s=0.01).generate(_env(_image()).messages())
    assert time.perf_counter() - started < 1.5


def test_two_endpoints_share_the_load(serve):
    first, url_a = serve(EchoPolicy(), delay_s=0.05)
    second, url_b = serve(EchoPolicy(), delay_s=0.05)
    policy = HttpPolicy([url_a, url_b], "m")
    messages = _env(_image()).messages()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: policy.generate(messages), range(32)))
    assert first.chat_requests + second.chat_requests == 32
    assert min(first.chat_requests, second.chat_requests) >= 8


def test_a_dead_or_failing_endpoint_is_avoided_while_others_serve(serve):
    healthy, url_ok = serve(EchoPolicy())
    failing, url_bad = serve(EchoPolicy(), fail_first_n=10_000, fail_status=503)
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    policy = HttpPolicy([dead, url_bad, url_ok], "m", backoff_s=1.0)
    messages = _env(_image()).messages()
    results = [policy.generate(messages) for _ in range(20)]
    assert all(r.extra["endpoint"] == url_ok for r in results)
    assert healthy.chat_requests == 20 and failing.chat_requests <= 2


def test_a_restarted_server_is_used_again_over_fresh_connections():
    port = _free_port()
    server, url = start_server(EchoPolicy(), port=port)
    policy = HttpPolicy(url, "m")
    messages = _env(_image()).messages()
    policy.generate(messages)
    server.stop()
    server, _ = start_server(EchoPolicy(), port=port)
    try:
        assert policy.generate(messages).extra["attempts"] == 1  # the stale keep-alive connection is not a failure
    finally:
        server.stop()


def test_64_threads_at_once_take_about_one_delay(serve):
    _, url = serve(EchoPolicy(), delay_s=0.2)
    policy = HttpPolicy(url, "m")
    barrier = threading.Barrier(64)
    questions = [f"question {i}" for i in range(64)]
    envs = [_env(_image(40, 30), q) for q in questions]
    for env in envs:
        env.views[0].data_url(policy.image_format)  # encode up front: this measures the transport

    def one(env: ZoomEnv) -> str:
        barrier.wait()
        return policy.generate(env.messages()).text

    started = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        texts = list(pool.map(one, envs))
    elapsed = time.perf_counter() - started
    assert all(text.endswith(f"<answer>{q}</answer>") for text, q in zip(texts, questions))
    assert 0.2 <= elapsed < 0.7, f"64 concurrent requests at 0.2 s took {elapsed:.2f} s"


def test_list_models_and_wait_until_ready(serve):
    _, url = serve(EchoPolicy(), model="tiny")
    policy = HttpPolicy(url.removesuffix("/v1"), "tiny")  # a bare host gets /v1
    assert policy.base_urls == [url]
    assert policy.list_models() == ["tiny"] and policy.wait_until_ready(1) == ["tiny"]
    with pytest.raises(PolicyError, match="cannot list models"):
        HttpPolicy(f"http://127.0.0.1:{_free_port()}", "m").wait_until_ready(timeout_s=0.1, poll_s=0.05)


def test_reply_parsing_trusts_vllm_and_sglang_stop_fields():
    sampling = SamplingParams()
    stripped = ZOOM[: -len("</grounding>")]

    def reply(**choice: Any) -> dict[str, Any]:
        return {"choices": [{"message": {"content": choice.pop("text")}, "finish_reason": "stop", **choice}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 4}}

    assert _generation_from_reply(reply(text=stripped, stop_reason="</grounding>"), sampling, "u").text == ZOOM
    assert _generation_from_reply(reply(text=stripped, matched_stop="</grounding>"), sampling, "u").text == ZOOM
    assert _generation_from_reply(reply(text=stripped, stop_reason=None), sampling, "u").text == stripped  # EOS, not the stop
    assert _generation_from_reply(reply(text=stripped), sampling, "u").text == ZOOM  # no field: guessed
    generation = _generation_from_reply(reply(text=ZOOM, stop_reason="</grounding>"), sampling, "u")
    assert generation.text == ZOOM and (generation.prompt_tokens, generation.completion_tokens) == (10, 4)
    length = {"choices": [{"message": {"content": stripped}, "finish_reason": "length"}]}
    assert _generation_from_reply(length, sampling, "u").text == stripped
    with pytest.raises(PolicyError, match="without choices"):
        _generation_from_reply({"object": "x"}, sampling, "u")


def test_bad_arguments_are_refused():
    assert normalize_base_url("http://h:1/") == "http://h:1/v1"
    assert normalize_base_url("https://api.example.com/v1beta/openai/") == "https://api.example.com/v1beta/openai"
    with pytest.raises(ValueError, match="base URL"):
        HttpPolicy("localhost:8000", "m")
    with pytest.raises(ValueError, match="image_format"):
        HttpPolicy("http://h:1", "m", image_format="WEBP")
    with pytest.raises(ValueError, match="at least one"):
        HttpPolicy([], "m")


class _Proxy(ThreadingHTTPServer):
    """A forward proxy on loopback that records what it is asked: it relays plain HTTP and refuses CONNECT."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Proxy

    def log_message(self, *args: Any) -> None:
        pass

    def do_CONNECT(self) -> None:  # noqa: N802 (the stdlib's name)
        self.server.seen.append(f"CONNECT {self.path}")
        self.send_response(403, "tunnels refused here")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _relay(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        request = urllib.request.Request(self.path, data=body, method=self.command, headers={"Content-Type": "application/json"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as response:
            status, payload = response.status, response.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _relay


@pytest.fixture
def proxy():
    server = _Proxy()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_http_proxy_from_the_environment_carries_the_requests(serve, proxy, monkeypatch):
    _, url = serve(EchoPolicy())
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    policy = HttpPolicy(url, "m")
    assert policy.generate(_env(_image(), "hello").messages()).text.endswith("<answer>hello</answer>")
    assert proxy.seen == [f"POST {url}/chat/completions"]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    HttpPolicy(url, "m").generate(_env(_image(), "direct").messages())
    assert len(proxy.seen) == 1  # NO_PROXY: straight to the server


def test_https_proxy_from_the_environment_is_asked_for_a_tunnel(proxy, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    policy = HttpPolicy("https://api.example.invalid/v1", "m", max_retries=0)
    with pytest.raises(PolicyError, match="proxy"):
        policy.generate([{"role": "user", "content": "hi"}])
    assert proxy.seen == ["CONNECT api.example.invalid:443"]


@pytest.mark.parametrize("reply", [
    {"choices": "none"},
    {"choices": [None]},
    {"choices": [{"message": "a string"}]},
    {"choices": []},
    [],
])
def test_malformed_replies_are_a_policy_error(reply):
    with pytest.raises(PolicyError, match="without choices"):
        _generation_from_reply(reply, SamplingParams(), "u")


def test_malformed_usage_and_finish_reason_are_ignored():
    reply = {"choices": [{"message": {"content": "<answer>x</answer>"}, "finish_reason": 7}],
             "usage": {"prompt_tokens": "12", "completion_tokens": -1}}
    generation = _generation_from_reply(reply, SamplingParams(), "u")
    assert (generation.text, generation.finish_reason) == ("<answer>x</answer>", "stop")
    assert (generation.prompt_tokens, generation.completion_tokens) == (None, None)
    assert _generation_from_reply({**reply, "usage": "lots"}, SamplingParams(), "u").prompt_tokens is None
