"""A small OpenAI-compatible chat-completions server for any Policy (stdlib only).

Endpoints: POST /v1/chat/completions, GET /v1/models, GET /health. Image parts arrive as
`image_url` data URLs and reach the policy as PIL images in `mini_o3.agent.protocol` message form.
Like OpenAI, the reply leaves out the stop string that ended a turn unless the request sets
vLLM's `include_stop_str_in_output`. For tests and benchmarks a server can sleep a fixed
`delay_s` per request (the policy's own time included) and fail its first `fail_first_n`
requests with a chosen status.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, UnidentifiedImageError

from mini_o3.agent import protocol
from mini_o3.agent.env import approximate_tokens
from mini_o3.agent.images import to_rgb
from mini_o3.agent.policy import Policy, PolicyError, SamplingParams
from mini_o3.policies.scripted import count_prompt_tokens

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
DEFAULT_MODEL_NAME = "mini-o3"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
OPENAI_FIELDS = frozenset(
    "model messages temperature top_p max_tokens max_completion_tokens stop seed n stream stream_options "
    "presence_penalty frequency_penalty logit_bias logprobs top_logprobs user response_format tools "
    "tool_choice parallel_tool_calls metadata store reasoning_effort modalities service_tier".split()
)


@dataclass
class ServeOptions:
    """How the server behaves beyond serving the policy."""

    model: str | None = None
    """The model name /v1/models lists; a request naming another gets 404, as from vLLM. None (tests,
    benchmarks) answers to any name and lists "mini-o3"."""
    delay_s: float = 0.0
    """Every chat request takes at least this long, the policy's own time included (a fixed model latency)."""
    fail_first_n: int = 0
    """Answer the first N chat requests with `fail_status` instead (fault injection)."""
    fail_status: int = 503
    """The status of injected failures, e.g. 503 or 429."""
    retry_after_s: float | None = None
    """Send this Retry-After (seconds) with injected failures; None sends none."""
    api_key: str | None = None
    """When set, chat and model requests must carry `Authorization: Bearer <api_key>`."""
    max_body_bytes: int = 512 * 1024 * 1024
    """Refuse request bodies larger than this with 413."""
    idle_timeout_s: float = 600.0
    """Close a keep-alive connection idle for this long."""
    strict_fields: bool = False
    """Refuse request fields outside OpenAI's own (as api.openai.com does), e.g. vLLM's extras."""
    max_model_len: int | None = None
    """Refuse with 400, as vLLM's --max-model-len does, a request whose prompt (mini-o3's token estimate) plus max_tokens exceeds this."""


class RequestError(ValueError):
    """A request the server refuses; `status` is the HTTP status to answer with, `param` the field at fault."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


# ---------------------------------------------------------------- OpenAI form -> protocol form


def decode_data_url(url: str) -> Image.Image:
    """The RGB image in a base64 `data:image/...` URL."""
    if not isinstance(url, str) or not url.startswith("data:"):
        shown = url[:60] if isinstance(url, str) else type(url).__name__
        raise RequestError(f"image_url must be a base64 data: URL (this server fetches nothing), got {shown!r}")
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise RequestError(f"image data URL must look like data:image/png;base64,..., got {header[:60]!r}")
    try:
        raw = base64.b64decode(payload, validate=False)
        with Image.open(io.BytesIO(raw)) as handle:
            handle.load()
            return to_rgb(handle)
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise RequestError(f"cannot decode the image in a data URL ({header}): {error}") from error


def messages_from_openai(messages: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages as `mini_o3.agent.protocol` messages: text parts and image parts holding PIL images."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of chat messages")
    converted = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"message {number} must be an object with a 'role'")
        content = message.get("content")
        if content is None:
            parts: list[dict[str, Any]] = []
        elif isinstance(content, str):
            parts = [protocol.text_part(content)]
        elif isinstance(content, list):
            parts = [_part_from_openai(part, number) for part in content]
        else:
            raise RequestError(f"message {number}: 'content' must be a string or a list of parts")
        converted.append({"role": message["role"], "content": parts})
    return converted


def _part_from_openai(part: Any, number: int) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return protocol.text_part(str(part.get("text", "")))
    if kind == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        return protocol.image_part(decode_data_url(url))
    raise RequestError(f"message {number}: content parts must be of type 'text' or 'image_url', got {kind!r}")


def sampling_from_request(body: dict[str, Any]) -> SamplingParams:
    """The request's sampling settings (OpenAI names) as SamplingParams; a RequestError (400) names a bad one.

    The ranges are vLLM's (vllm/sampling_params.py, `SamplingParams._verify_args`): temperature
    finite in [0, 2], top_p in (0, 1], max_tokens at least 1.
    """
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else () if stop is None else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"stop must be a non-empty string or a list of them, got {stop!r}", param="stop")
    temperature = _number(body, "temperature", 1.0)
    top_p = _number(body, "top_p", 1.0)
    max_tokens = _number(body, "max_completion_tokens", None)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", SamplingParams.max_new_tokens)
    seed = _number(body, "seed", None)
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(f"temperature must be in [0, 2], got {temperature}.", param="temperature")
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be in (0, 1], got {top_p}.", param="top_p")
    if max_tokens != int(max_tokens) or max_tokens < 1:
        raise RequestError(f"max_tokens must be an integer of at least 1, got {max_tokens}.", param="max_tokens")
    if seed is not None and seed != int(seed):
        raise RequestError(f"seed must be an integer, got {seed}.", param="seed")
    return SamplingParams(
        temperature=temperature, top_p=top_p, max_new_tokens=int(max_tokens), stop=tuple(stops),
        seed=None if seed is None else int(seed),
    )


def _number(body: dict[str, Any], key: str, default: float | None) -> Any:
    """A finite number from the request, `default` when absent or null."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{key} must be a finite number, got {value!r}.", param=key)
    return value


# ---------------------------------------------------------------- the server


class PolicyServer(ThreadingHTTPServer):
    """A threaded HTTP server that answers chat completions with `policy`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # hundreds of clients connect at once; the default backlog of 5 drops SYNs

    def __init__(self, address: tuple[str, int], policy: Policy, options: ServeOptions) -> None:
        super().__init__(address, _Handler)
        self.policy = policy
        self.options = options
        self.chat_requests = 0
        """Chat requests received, injected failures included."""
        self.injected_failures = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL clients use, ending in /v1."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def next_chat_request(self) -> bool:
        """Count a chat request; True when this one must fail (fault injection)."""
        with self._lock:
            self.chat_requests += 1
            fail = self.chat_requests <= self.options.fail_first_n
            if fail:
                self.injected_failures += 1
            return fail

    def track(self, connection: socket.socket, open_: bool) -> None:
        """Remember open client connections so that stop() can close them."""
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection; clients that hang up are routine and logged at debug level."""
        error = sys.exc_info()[1]
        level = logging.DEBUG if isinstance(error, (ConnectionError, TimeoutError)) else logging.ERROR
        log.log(level, "connection from %s failed", client_address, exc_info=True)

    def stop(self) -> None:
        """Stop serving, close every client connection and free the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection for many turns
    disable_nagle_algorithm = True  # headers and body go out as two writes: Nagle would hold the body 40 ms
    server: PolicyServer

    def setup(self) -> None:
        self.timeout = self.server.options.idle_timeout_s
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # ------------------------------------------------------------ routes

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._send_json(200, {"status": "ok"})
        elif path == "/v1/models":
            if self._authorized():
                model = {"id": self.server.options.model or DEFAULT_MODEL_NAME, "object": "model", "created": 0, "owned_by": "mini-o3"}
                self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_error(404, f"no route GET {path}; try {CHAT_PATH}, /v1/models or /health", "not_found")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            body = self._read_body()
        except RequestError as error:
            self._send_error(error.status, str(error), "invalid_request_error", param=error.param)
            return
        if path != CHAT_PATH:
            self._send_error(404, f"no route POST {path}; the chat endpoint is {CHAT_PATH}", "not_found")
            return
        if not self._authorized():
            return
        options = self.server.options
        if self.server.next_chat_request():
            headers = {} if options.retry_after_s is None else {"Retry-After": f"{options.retry_after_s:g}"}
            self._send_error(options.fail_status, "injected failure (fail_first_n)", "injected", headers)
            return
        try:
            reply = self._complete(body)
        except RequestError as error:
            self._send_error(error.status, str(error), "invalid_request_error", param=error.param)
            return
        except PolicyError as error:
            self._send_error(500, f"the policy failed: {error}", "policy_error")
            return
        except Exception as error:  # a policy bug must answer 500, not kill the connection
            log.exception("policy %s raised", type(self.server.policy).__name__)
            self._send_error(500, f"the policy raised {type(error).__name__}: {error}", "policy_error")
            return
        self._send_json(200, reply)

    # ------------------------------------------------------------ chat

    def _complete(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        served, requested = self.server.options.model, body.get("model")
        if served is not None and requested is not None and requested != served:
            raise RequestError(f"The model `{requested}` does not exist (this server serves `{served}`).", 404, param="model")
        if self.server.options.strict_fields:
            unknown = sorted(set(body) - OPENAI_FIELDS)
            if unknown:
                raise RequestError(f"Unrecognized request argument supplied: {', '.join(unknown)}")
        if body.get("stream"):
            raise RequestError("streaming is not supported by this server; send stream=false", param="stream")
        if body.get("n", 1) not in (1, None):
            raise RequestError("n must be 1 (send one request per sample)", param="n")
        messages = messages_from_openai(body.get("messages"))
        sampling = sampling_from_request(body)
        window = self.server.options.max_model_len
        if window is not None:
            prompt = count_prompt_tokens(messages)
            if prompt + sampling.max_new_tokens > window:
                raise RequestError(
                    f"'max_tokens' or 'max_completion_tokens' is too large: {sampling.max_new_tokens}. This model's maximum "
                    f"context length is {window} tokens and your request has {prompt} input tokens.", param="max_tokens",
                )
        started = time.perf_counter()
        generation = self.server.policy.generate(messages, sampling)
        remaining = self.server.options.delay_s - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        text = generation.text
        matched = next((s for s in sampling.stop if s and text.endswith(s)), None)
        if matched is not None and generation.finish_reason == "stop" and not body.get("include_stop_str_in_output"):
            text = text[: -len(matched)]
        prompt_tokens = generation.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = count_prompt_tokens(messages)
        completion_tokens = generation.completion_tokens
        if completion_tokens is None:
            completion_tokens = approximate_tokens(generation.text)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.server.options.model or DEFAULT_MODEL_NAME,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": generation.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # ------------------------------------------------------------ plumbing

    def _authorized(self) -> bool:
        key = self.server.options.api_key
        if key is None:
            return True
        # Constant time, so response timing does not reveal how much of a guessed key was right.
        sent = (self.headers.get("Authorization") or "").encode("utf-8", "surrogateescape")
        if hmac.compare_digest(sent, f"Bearer {key}".encode("utf-8", "surrogateescape")):
            return True
        self._send_error(401, "missing or wrong API key (send Authorization: Bearer <key>)", "authentication_error")
        return False

    def _read_body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise RequestError("a Content-Length header is required (chunked bodies are not supported)", 411)
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0:
            self.close_connection = True
            raise RequestError(f"Content-Length must be a whole number of bytes, got {length!r}")
        if size > self.server.options.max_body_bytes:
            self.close_connection = True
            raise RequestError(f"request body of {size:,} bytes is over the limit of {self.server.options.max_body_bytes:,}", 413)
        raw = self.rfile.read(size)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as error:
            raise RequestError(f"the request body is not valid JSON: {error}") from error

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(data)

    def _send_error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None, param: str | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "param": param, "code": status}}, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (bad request line, unknown method, huge headers) as JSON too."""
        if code == HTTPStatus.NOT_IMPLEMENTED and getattr(self, "command", None):
            code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} is not allowed; use GET or POST"
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # unparsed request line: answer with a status line and headers all the same
            self.request_version = "HTTP/1.0"
        allow = {"Allow": "GET, POST", "Connection": "close"} if code == HTTPStatus.METHOD_NOT_ALLOWED else {"Connection": "close"}
        self._send_error(code, message or HTTPStatus(code).phrase, "invalid_request_error", allow)


def start_server(policy: Policy, host: str = "127.0.0.1", port: int = 0, **options: Any) -> tuple[PolicyServer, str]:
    """Serve `policy` from a background thread; returns the server (call `.stop()`) and its /v1 base URL."""
    server = PolicyServer((host, port), policy, _options(options))
    # A short poll interval makes stop() quick (shutdown waits for the next poll).
    server._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=f"mini-o3-serve:{server.server_address[1]}", daemon=True)
    server._thread.start()
    return server, server.url


def server_api_key(api_key_env: str | None, no_auth: bool, host: str) -> str | None:
    """The key clients must send, from `api_key_env`; None only when serving without one was asked for or is local.

    A named variable that is unset or empty is an error, never a silent open server; serving
    without a key on an address other clients can reach needs `no_auth`.
    """
    if api_key_env and no_auth:
        raise ValueError("give either --api-key-env NAME (clients must send that key) or --no-auth, not both")
    if api_key_env:
        key = (os.environ.get(api_key_env) or "").strip()
        if not key:
            raise ValueError(f"${api_key_env} is not set: export the key clients must send in it, or pass --no-auth to serve without one")
        return key
    if not no_auth and host not in LOOPBACK_HOSTS:
        raise ValueError(f"serving on {host} without an API key lets anyone who can reach it use the model: "
                         "pass --api-key-env NAME, or --no-auth to serve without a key")
    return None


def serve_forever(policy: Policy, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve `policy` in this thread until interrupted (Ctrl-C)."""
    server = PolicyServer((host, port), policy, _options(options))
    auth = "clients must send the API key" if server.options.api_key else "no API key required"
    print(f"mini-o3: serving {type(policy).__name__} as {server.options.model or DEFAULT_MODEL_NAME!r} at {server.url}, "
          f"{auth} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _options(options: dict[str, Any]) -> ServeOptions:
    known = {field.name for field in fields(ServeOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown server option(s) {unknown}; choose from {sorted(known)}")
    return ServeOptions(**options)


def main(argv: list[str] | None = None) -> None:
    """`python -m mini_o3.serve`: serve the echo policy or a scripted one (a JSON list of turns)."""
    import argparse

    from mini_o3.policies.scripted import EchoPolicy, ScriptedPolicy

    parser = argparse.ArgumentParser(prog="python -m mini_o3.serve", description=main.__doc__)
    parser.add_argument("--script", help="a JSON file holding a list of assistant turns; the echo policy when left out")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="mini-o3")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each chat request takes at least")
    args = parser.parse_args(argv)
    if args.script:
        with open(args.script, encoding="utf-8") as handle:
            policy: Policy = ScriptedPolicy(json.load(handle))
    else:
        policy = EchoPolicy()
    logging.basicConfig(level=logging.INFO)
    serve_forever(policy, args.host, args.port, model=args.model, delay_s=args.delay)


if __name__ == "__main__":
    main()
