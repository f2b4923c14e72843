"""HttpPolicy against loopback servers that answer as vLLM and `transformers serve` do.

The servers here are stand-ins (neither engine runs on this CPU stack), written from their
source: vLLM's reasoning parser (vllm/reasoning/basic_parsers.py, `extract_reasoning`: the text
after `<think>` up to `</think>` is `reasoning`, the rest `content`, null when empty; a stop
string it matched in `stop_reason`), and `transformers serve` 5.25 (422 with FastAPI's
`detail` for a field it does not know; the thought parsed out by transformers' own
`parse_response` with the response template it uses for qwen2_5_vl, into `reasoning_content`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.env import Limits
from mini_o3.agent.loop import EpisodeConfig, run_episode
from mini_o3.agent.policy import SamplingParams
from mini_o3.agent.sample import Sample
from mini_o3.policies.http import HttpPolicy

GROUNDING = '<grounding>{"bbox_2d": [0.1, 0.2, 0.6, 0.7], "source": "original_image"}</grounding>'


def transformers_qwen2_5_vl_template() -> dict:
    """The response template `transformers serve` parses qwen2_5_vl replies with (it strips each field)."""
    from transformers.cli.serving.utils import _RESPONSE_TEMPLATE_FALLBACKS

    return next(template for types, template in _RESPONSE_TEMPLATE_FALLBACKS.items() if "qwen2_5_vl" in types)


class ThirdPartyServer(ThreadingHTTPServer):
    """A chat endpoint whose model writes `model_output(messages)`; the reply is split as `flavour` splits it."""

    daemon_threads = True

    def __init__(self, flavour: str, model_output: Callable[[list[dict[str, Any]]], tuple[str, str]], delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.flavour = flavour
        self.model_output = model_output
        self.delay_s = delay_s
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.template = transformers_qwen2_5_vl_template() if flavour == "transformers" else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.bodies.append(body)
        time.sleep(self.delay_s)  # before a refusal too, so that concurrent requests are all in flight when it comes
        if self.flavour == "transformers" and "include_stop_str_in_output" in body:
            return 422, {"detail": "Unexpected fields in the request: {'include_stop_str_in_output'}"}
        raw, finish = self.model_output(body["messages"])
        text, matched = raw, None
        hits = [(raw.find(stop), stop) for stop in body.get("stop") or [] if stop in raw]
        if hits:
            at, matched = min(hits)
            text, finish = raw[: at + len(matched)], "stop"
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.flavour == "vllm":
            if matched and not body.get("include_stop_str_in_output"):
                text = text[: -len(matched)]
            after = text.partition("<think>")
            text = after[2] if after[1] else after[0]
            if "</think>" in text:
                reasoning, _, content = text.partition("</think>")
            else:
                reasoning, content = text, ""
            choice["message"] = {"role": "assistant", "content": content or None, "reasoning": reasoning}
            choice["stop_reason"] = matched
        else:
            from transformers.utils.chat_parsing.response_parser import parse_response

            parsed = parse_response(text, self.template, prefix="")
            message = {"role": "assistant", "content": parsed.get("content", "")}
            if parsed.get("reasoning_content") is not None:
                message["reasoning_content"] = parsed["reasoning_content"]
            choice["message"] = message
        return 200, {"id": "x", "object": "chat.completion", "choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThirdPartyServer

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, payload = self.server.answer(body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def third_party() -> Iterator[Callable[..., ThirdPartyServer]]:
    servers = []

    def start(flavour: str, model_output: Callable[[list[dict[str, Any]]], tuple[str, str]], delay_s: float = 0.0) -> ThirdPartyServer:
        server = ThirdPartyServer(flavour, model_output, delay_s)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# (what the model wrote, how generation ended, the turn the policy must return)
TURNS = [
    ("<think>The sign is small.</think>" + GROUNDING + " ignored", "stop", "<think>The sign is small.</think>" + GROUNDING),
    ("<think>It reads 'EXIT'.</think><answer>EXIT</answer>", "stop", "<think>It reads 'EXIT'.</think><answer>EXIT</answer>"),
    ("<think>ünïcödé and \"quotes\" 标志</think><answer>A</answer>", "stop", "<think>ünïcödé and \"quotes\" 标志</think><answer>A</answer>"),
    ("<think>out of tokens in the middle of a thou", "length", "<think>out of tokens in the middle of a thou"),
    ("<think>a zoom inside an unclosed thought " + GROUNDING + " more", "stop", "<think>a zoom inside an unclosed thought " + GROUNDING),
    ("<think>closed, then the end token</think>", "stop", "<think>closed, then the end token</think>"),
]
# Whitespace at a field's edges: vLLM keeps it; transformers serve strips every field.
EDGES = ("<think>\nLine one.\nLine two.\n</think>\n<answer>red</answer>", "stop")


@pytest.mark.parametrize("flavour", ["vllm", "transformers"])
@pytest.mark.parametrize("include_stop", [True, False])
def test_the_thought_is_rebuilt_as_the_model_wrote_it(third_party, flavour, include_stop):
    outputs = iter(TURNS)
    server = third_party(flavour, lambda messages: next(outputs)[:2])
    policy = HttpPolicy(server.url, "m", include_stop_str_in_output=include_stop)
    messages = [protocol.system_message(), {"role": "user", "content": [protocol.text_part("q")]}]
    for wrote, finish, expected in TURNS:
        generation = policy.generate(messages, SamplingParams())
        assert generation.text == expected, (flavour, wrote)
        assert generation.finish_reason == finish


def test_whitespace_at_the_edges_survives_vllm_and_is_what_transformers_serve_strips(third_party):
    vllm = third_party("vllm", lambda messages: EDGES)
    assert HttpPolicy(vllm.url, "m").generate([{"role": "user", "content": "q"}]).text == EDGES[0]
    transformers = third_party("transformers", lambda messages: EDGES)
    stripped = HttpPolicy(transformers.url, "m").generate([{"role": "user", "content": "q"}]).text
    assert stripped == "<think>Line one.\nLine two.</think><answer>red</answer>"


def test_the_history_sent_back_holds_the_thoughts(third_party, tmp_path):
    def model(messages: list[dict[str, Any]]) -> tuple[str, str]:
        turn = sum(message["role"] == "assistant" for message in messages)
        return (f"<think>turn {turn}</think>" + GROUNDING, "stop") if turn < 2 else ("<think>done</think><answer>red</answer>", "stop")

    server = third_party("transformers", model)
    sample = Sample(id="s", image=Image.new("RGB", (64, 48), "white"), question="q", answer="red")
    episode = run_episode(HttpPolicy(server.url, "m"), sample, EpisodeConfig(limits=Limits(max_turns=4)))
    assert [turn.text for turn in episode.trajectory.turns] == [
        "<think>turn 0</think>" + GROUNDING, "<think>turn 1</think>" + GROUNDING, "<think>done</think><answer>red</answer>",
    ]
    last = server.bodies[-1]["messages"]
    sent_back = [message["content"] for message in last if message["role"] == "assistant"]
    assert sent_back == ["<think>turn 0</think>" + GROUNDING, "<think>turn 1</think>" + GROUNDING]


def test_requests_in_flight_when_the_field_is_refused_are_all_retried_without_it(third_party, caplog):
    caplog.set_level(logging.WARNING)
    server = third_party("transformers", lambda messages: ("<think>ok</think><answer>red</answer>", "stop"), delay_s=0.2)
    policy = HttpPolicy(server.url, "m")
    barrier = threading.Barrier(32)

    def one(_: int) -> str:
        barrier.wait()  # all 32 carry the field: none has seen a refusal yet
        return policy.generate([{"role": "user", "content": "q"}]).text

    with ThreadPoolExecutor(32) as pool:
        texts = list(pool.map(one, range(32)))
    assert texts == ["<think>ok</think><answer>red</answer>"] * 32
    carried = [body for body in server.bodies if "include_stop_str_in_output" in body]
    assert len(carried) == 32 and len(server.bodies) == 64
    assert policy.include_stop_str_in_output is False
    assert caplog.text.count("no longer sending it") == 1
    policy.generate([{"role": "user", "content": "q"}])
    assert "include_stop_str_in_output" not in server.bodies[-1]  # later requests leave it out


def test_a_lowered_context_ends_long_episodes_as_over_context_not_as_errors(serve, tmp_path):
    from typer.testing import CliRunner

    from mini_o3.cli import app
    from mini_o3.policies.scripted import ScriptedPolicy

    forever = "<think>closer</think>" + GROUNDING
    _, url = serve(ScriptedPolicy(lambda messages: forever), max_model_len=6000)
    image = Image.new("RGB", (400, 300), "white")
    sample = Sample(id="s", image=image, question="q", answer="red")
    sampling = SamplingParams(max_new_tokens=1024)
    policy = HttpPolicy(url, "m")
    died = run_episode(policy, sample, EpisodeConfig(limits=Limits(max_turns=32), sampling=sampling)).trajectory
    assert died.status.value == "error" and "maximum context length is 6000" in (died.error or "")
    fitted = run_episode(policy, sample, EpisodeConfig(limits=Limits(max_turns=32, max_context_tokens=6000), sampling=sampling)).trajectory
    assert fitted.status.value == "over_context" and fitted.num_zooms >= 2
    image.save(tmp_path / "scene.png")
    args = ["search", str(tmp_path / "scene.png"), "q", "--api", url, "--model", "m", "--max-new-tokens", "1024", "--out", str(tmp_path / "out")]
    assert "status: over_context" in CliRunner().invoke(app, args + ["--max-context", "6000"]).output
    assert "status: error" in CliRunner().invoke(app, args).output
    assert CliRunner().invoke(app, args + ["--max-context", "1500"]).exit_code == 2
