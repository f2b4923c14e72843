"""The OpenAI-compatible server, spoken to with plain HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.images import data_url
from mini_o3.agent.policy import Generation, PolicyError, SamplingParams
from mini_o3.policies.scripted import EchoPolicy, ScriptedPolicy
from conftest import Recorder
from mini_o3.serve import decode_data_url, messages_from_openai, server_api_key, start_server


def _request(url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None):
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    connection.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    try:
        return response.status, json.loads(payload), response
    except ValueError:
        return response.status, payload, response


def _image(width: int = 37, height: int = 23) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _chat(image: Image.Image, **fields: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(image, "PNG")}},
                {"type": "text", "text": "\nWhat is it?"},
            ]},
        ],
        **fields,
    }


def test_health_and_models(serve):
    _, url = serve(EchoPolicy(), model="tiny-vl")
    assert _request(url, "GET", "/health")[:2] == (200, {"status": "ok"})
    status, reply, _ = _request(url, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in reply["data"]] == ["tiny-vl"]
    assert url.endswith("/v1")


def test_chat_decodes_messages_into_protocol_form_with_pil_images(serve):
    policy = Recorder()
    _, url = serve(policy)
    image = _image()
    status, reply, _ = _request(url, "POST", "/v1/chat/completions", _chat(image, temperature=0.5, top_p=0.9, max_tokens=77, seed=3, stop=["</grounding>"]))
    assert status == 200
    assert reply["object"] == "chat.completion" and reply["model"] == "m"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "<think>ok</think><answer>yes</answer>"}
    assert reply["choices"][0]["finish_reason"] == "stop"
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    messages, sampling = policy.calls[0]
    assert messages[0] == {"role": "system", "content": [protocol.text_part("sys")]}
    first = messages[1]["content"]
    assert [part["type"] for part in first] == ["image", "text"] and first[1]["text"] == "\nWhat is it?"
    assert isinstance(first[0]["image"], Image.Image)
    assert np.array_equal(np.asarray(first[0]["image"]), np.asarray(image))
    assert sampling == SamplingParams(temperature=0.5, top_p=0.9, max_new_tokens=77, stop=("</grounding>",), seed=3)


def test_stop_string_is_left_out_unless_asked_for(serve):
    turn = '<think>look</think><grounding>{"bbox_2d": [0, 0, 0.5, 0.5], "source": "original_image"}</grounding>'
    _, url = serve(ScriptedPolicy([turn + " trailing"]))
    body = _chat(_image(), stop=["</grounding>"])
    assert _request(url, "POST", "/v1/chat/completions", body)[1]["choices"][0]["message"]["content"] == turn[: -len("</grounding>")]
    kept = _request(url, "POST", "/v1/chat/completions", {**body, "include_stop_str_in_output": True})
    assert kept[1]["choices"][0]["message"]["content"] == turn


def test_injected_failures_then_success_with_retry_after(serve):
    server, url = serve(EchoPolicy(), fail_first_n=2, fail_status=429, retry_after_s=1.5)
    for _ in range(2):
        status, reply, response = _request(url, "POST", "/v1/chat/completions", _chat(_image()))
        assert status == 429 and response.getheader("Retry-After") == "1.5"
        assert "injected" in reply["error"]["message"]
    assert _request(url, "POST", "/v1/chat/completions", _chat(_image()))[0] == 200
    assert server.chat_requests == 3 and server.injected_failures == 2


def test_delay_is_the_least_time_a_chat_request_takes(serve):
    _, url = serve(EchoPolicy(), delay_s=0.3)
    started = time.perf_counter()
    assert _request(url, "POST", "/v1/chat/completions", _chat(_image()))[0] == 200
    assert 0.3 <= time.perf_counter() - started < 1.5


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "not valid JSON"),
        ({"messages": []}, 400, "non-empty list"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]}, 400, "fetches nothing"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400, "cannot decode"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "'text' or 'image_url'"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, 400, "streaming"),
    ],
)
def test_bad_requests_get_a_clear_400(serve, body, status, words):
    _, url = serve(EchoPolicy())
    got, reply, _ = _request(url, "POST", "/v1/chat/completions", body)
    assert got == status and words in reply["error"]["message"]


def test_unknown_routes_are_404(serve):
    _, url = serve(EchoPolicy())
    assert _request(url, "GET", "/v2/nothing")[0] == 404
    assert _request(url, "POST", "/v1/completions", {"prompt": "x"})[0] == 404


def test_strict_fields_rejects_vllm_extras_like_the_openai_api(serve):
    _, url = serve(EchoPolicy(), strict_fields=True)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "include_stop_str_in_output": True}
    status, reply, _ = _request(url, "POST", "/v1/chat/completions", body)
    assert status == 400 and "include_stop_str_in_output" in reply["error"]["message"]


def test_api_key_is_required_when_set(serve):
    _, url = serve(EchoPolicy(), api_key="sekret")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    status, reply, _ = _request(url, "POST", "/v1/chat/completions", body)
    assert status == 401 and "sekret" not in json.dumps(reply)
    assert _request(url, "POST", "/v1/chat/completions", body, {"Authorization": "Bearer sekret"})[0] == 200
    assert _request(url, "GET", "/v1/models")[0] == 401
    for wrong in ("Bearer sekre", "Bearer sekret2", "bearer sekret", "Bearer s\u00e9kret"):  # the last is not ASCII
        assert _request(url, "GET", "/v1/models", headers={"Authorization": wrong})[0] == 401


def test_a_failing_policy_answers_500_and_the_server_keeps_serving(serve):
    def script(messages):
        if messages[-1]["content"][0]["text"] == "boom":
            raise PolicyError("checkpoint missing")
        if messages[-1]["content"][0]["text"] == "bug":
            raise KeyError("oops")
        return "<answer>fine</answer>"

    _, url = serve(ScriptedPolicy(script))
    status, reply, _ = _request(url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "boom"}]})
    assert status == 500 and "checkpoint missing" in reply["error"]["message"]
    status, reply, _ = _request(url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "bug"}]})
    assert status == 500 and "KeyError" in reply["error"]["message"]
    assert _request(url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "ok"}]})[0] == 200


def test_keep_alive_and_stop_closes_connections_and_frees_the_port():
    server, url = start_server(EchoPolicy())
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    for _ in range(3):  # one connection, several requests
        connection.request("GET", "/health")
        assert connection.getresponse().read() == b'{"status": "ok"}'
    server.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        connection.request("GET", "/health")
        connection.getresponse().read()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((parts.hostname, parts.port), timeout=2)


def test_decode_helpers_round_trip_pixels():
    image = _image(5, 4)
    assert np.array_equal(np.asarray(decode_data_url(data_url(image, "PNG"))), np.asarray(image))
    messages = messages_from_openai([{"role": "user", "content": "plain"}, {"role": "assistant", "content": None}])
    assert messages == [{"role": "user", "content": [protocol.text_part("plain")]}, {"role": "assistant", "content": []}]


def test_unknown_server_options_are_refused():
    with pytest.raises(TypeError, match="delay_sec"):
        start_server(EchoPolicy(), delay_sec=1)


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_completion_tokens": -3}, "max_tokens"),
        ({"seed": "x"}, "seed"),
        ({"stop": ["</grounding>", ""]}, "stop"),
        ({"n": 2}, "n"),
    ],
)
def test_invalid_sampling_values_get_400_naming_the_field_as_vllm_does(serve, fields, param):
    _, url = serve(EchoPolicy())
    status, reply, _ = _request(url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], **fields})
    assert status == 400, reply
    assert reply["error"]["param"] == param and reply["error"]["code"] == 400


def test_non_finite_numbers_get_400_not_500(serve):
    _, url = serve(EchoPolicy())
    body = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'  # Python's json reads NaN
    status, reply, _ = _request(url, "POST", "/v1/chat/completions", body)
    assert status == 400 and reply["error"]["param"] == "temperature"


def test_an_unknown_model_gets_404_and_the_served_one_is_listed(serve):
    _, url = serve(EchoPolicy(), model="tiny-vl")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    status, reply, _ = _request(url, "POST", "/v1/chat/completions", body)
    assert status == 404 and reply["error"]["param"] == "model" and "gpt-4o" in reply["error"]["message"]
    assert _request(url, "POST", "/v1/chat/completions", {**body, "model": "tiny-vl"})[0] == 200
    assert _request(url, "POST", "/v1/chat/completions", {"messages": body["messages"]})[0] == 200  # no name: the served one
    assert [m["id"] for m in _request(url, "GET", "/v1/models")[1]["data"]] == ["tiny-vl"]


def _raw(url: str, data: bytes) -> tuple[int, dict]:
    """Send raw bytes, read one response; (status, JSON body)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed without a status line and headers: {received!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"PUT /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /v1/models HTTP/7.0\r\nHost: x\r\n\r\n", 505),
        (b"garbage\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n", 411),
        (b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ],
)
def test_every_route_and_method_answers_errors_as_json(serve, request_bytes, status):
    _, url = serve(EchoPolicy())
    got, reply = _raw(url, request_bytes)
    assert got == status
    assert reply["error"]["code"] == status and reply["error"]["message"]


def test_a_named_key_variable_that_is_unset_refuses_to_serve(monkeypatch):
    monkeypatch.delenv("MINI_O3_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$MINI_O3_UNSET_KEY is not set.*--no-auth"):
        server_api_key("MINI_O3_UNSET_KEY", no_auth=False, host="127.0.0.1")
    monkeypatch.setenv("MINI_O3_UNSET_KEY", "  ")
    with pytest.raises(ValueError, match="is not set"):
        server_api_key("MINI_O3_UNSET_KEY", no_auth=False, host="127.0.0.1")
    monkeypatch.setenv("MINI_O3_UNSET_KEY", "sekret-key")
    assert server_api_key("MINI_O3_UNSET_KEY", no_auth=False, host="0.0.0.0") == "sekret-key"
    assert server_api_key(None, no_auth=False, host="127.0.0.1") is None  # local use stays easy
    with pytest.raises(ValueError, match="--no-auth"):
        server_api_key(None, no_auth=False, host="0.0.0.0")
    assert server_api_key(None, no_auth=True, host="0.0.0.0") is None
    with pytest.raises(ValueError, match="not both"):
        server_api_key("MINI_O3_UNSET_KEY", no_auth=True, host="127.0.0.1")


def test_the_serve_command_exits_2_on_an_unset_key_variable(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from mini_o3.cli import app

    monkeypatch.delenv("MINI_O3_UNSET_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", "--model-path", str(tmp_path), "--api-key-env", "MINI_O3_UNSET_KEY"])
    assert result.exit_code == 2 and "MINI_O3_UNSET_KEY is not set" in result.output
    result = CliRunner().invoke(app, ["serve", "--model-path", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--no-auth" in result.output
