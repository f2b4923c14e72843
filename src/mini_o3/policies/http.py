"""A policy served by any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, hosted APIs).

The transport is the standard library's `http.client` with one small keep-alive pool per
endpoint, shared by every thread. Measured on 2 cores (bench/bench_http.py --compare, server
delay 0.5 s): about 0.3 ms of client CPU a turn at 16 to 256 threads and 0.94 of the ideal
throughput at 256; httpx.Client costs 0.7-0.8 ms a turn up to 64 threads but 8.8 ms and 0.13
of the ideal at 256 (its connection pool degrades), the openai client about 3 ms a turn and
0.42 of the ideal at 256.

Several base URLs share the load: each request goes to the endpoint with the fewest requests
in flight. A failing endpoint cools down (exponential backoff with jitter, or the server's
Retry-After) while the others take the load; once every endpoint is cooling, callers wait for
the first to come back. 429, 408, 5xx, timeouts and dropped connections are retried up to
`max_retries` times; other 4xx fail at once with the server's message. An endpoint that
refuses connections and has never answered fails at once (nothing listening is not transient).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit

from mini_o3 import __version__
from mini_o3.agent.images import as_pil, data_url
from mini_o3.agent.policy import Generation, PolicyError, SamplingParams, restore_stop_string

log = logging.getLogger(__name__)

STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
START_HINT = "is the server running? start one with `mini-o3 serve ...` or vLLM (`vllm serve MODEL`)"


def normalize_base_url(url: str) -> str:
    """`url` without a trailing slash, with /v1 added when it names only a host."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base URL must look like http://host:port/v1, got {url!r}")
    return url if parts.path else url + "/v1"


@dataclass
class _Endpoint:
    """One server: its address, its pool of idle connections and its health."""

    url: str
    host: str
    port: int
    path: str
    https: bool
    idle: list[http.client.HTTPConnection] = field(default_factory=list)
    in_flight: int = 0
    served: int = 0
    failures: int = 0
    """Consecutive failed requests; 0 when healthy."""
    retry_at: float = 0.0
    """time.monotonic() before which new requests avoid this endpoint."""
    ever_ok: bool = False
    """Whether it ever answered: a refused connection before that means nothing is listening."""


class _Failure(Exception):
    """A failed attempt: retryable or not, with what to tell the caller."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None, unreachable: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.unreachable = unreachable


class HttpPolicy:
    """A Policy that asks an OpenAI-compatible `/v1/chat/completions` endpoint for each turn.

    Thread-safe: one instance serves every episode thread. The API key is read once from the
    environment variable `api_key_env` (none is sent when it is unset) and never logged.
    `include_stop_str_in_output` asks vLLM to keep `</grounding>`; it is dropped (once, with a
    warning) when a server rejects the field, and a stripped stop string is put back either
    way. `timeout_s` bounds the wait for each reply; `max_backoff_s` caps one wait between
    retries, Retry-After included. `max_connections` caps the requests in flight at once.
    """

    def __init__(
        self,
        base_urls: Sequence[str] | str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        image_format: str = "JPEG",
        max_connections: int = 512,
        include_stop_str_in_output: bool = True,
        max_backoff_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        jpeg_quality: int = 95,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("HttpPolicy needs at least one base URL, e.g. http://127.0.0.1:8000/v1")
        if image_format.upper() not in ("JPEG", "JPG", "PNG"):
            raise ValueError(f"image_format must be JPEG or PNG, got {image_format!r}")
        if max_retries < 0 or max_connections < 1:
            raise ValueError("max_retries must be >= 0 and max_connections >= 1")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.connect_timeout_s = min(connect_timeout_s, timeout_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.image_format = "JPEG" if image_format.upper() in ("JPEG", "JPG") else "PNG"
        self.jpeg_quality = jpeg_quality
        self.max_connections = max_connections
        self.include_stop_str_in_output = include_stop_str_in_output
        self._endpoints = [_endpoint(normalize_base_url(url)) for url in urls]
        self._api_key = (os.environ.get(api_key_env) or "").strip() or None
        if self._api_key and any(ord(char) < 32 or ord(char) == 127 for char in self._api_key):
            # http.client would refuse the header later with the key in its message.
            raise ValueError(f"the API key in ${api_key_env} contains a control character; set it to the key alone")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": f"mini-o3/{__version__}"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context() if any(e.https for e in self._endpoints) else None

    @property
    def base_urls(self) -> list[str]:
        """The endpoints' base URLs (ending in /v1 or the path given)."""
        return [endpoint.url for endpoint in self._endpoints]

    def __repr__(self) -> str:
        return f"HttpPolicy({self.base_urls!r}, model={self.model!r})"

    # ------------------------------------------------------------ the Policy protocol

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """Ask the least-loaded endpoint for the next assistant turn, retrying transient failures."""
        started = time.perf_counter()
        messages_json = self._messages_json(messages)
        body = self._body(messages_json, sampling)
        unreachable: set[str] = set()
        attempt = 0
        while True:
            endpoint, wait = self._pick()
            try:
                if wait > 0:
                    time.sleep(wait)
                reply = self._post(endpoint, "/chat/completions", body)
            except _Failure as failure:
                self._failed(endpoint, failure)
                if failure.unreachable:
                    unreachable.add(endpoint.url)
                    if len(unreachable) == len(self._endpoints):
                        raise PolicyError(self._redact(f"cannot reach {', '.join(sorted(unreachable))} ({failure}): {START_HINT}")) from None
                elif not failure.retryable:
                    if self.include_stop_str_in_output and "include_stop_str_in_output" in str(failure):
                        self._drop_include_stop(endpoint)
                        body = self._body(messages_json, sampling)
                        continue
                    raise PolicyError(self._redact(f"{endpoint.url} refused the request: {failure}")) from None
                attempt += 1
                if attempt > self.max_retries:
                    raise PolicyError(self._redact(
                        f"gave up after {attempt} attempts; last error from {endpoint.url}: {failure} (is the server "
                        "overloaded or failing? check its logs, lower the concurrency or raise max_retries)"
                    )) from None
                continue
            except BaseException:
                self._abandoned(endpoint)  # an unexpected error (or Ctrl-C) must not leave it counted in flight
                raise
            self._succeeded(endpoint)
            generation = _generation_from_reply(reply, sampling, endpoint.url)
            generation.latency_s = time.perf_counter() - started
            generation.extra.update(endpoint=endpoint.url, attempts=attempt + 1)
            return generation

    # ------------------------------------------------------------ helpers for callers

    def list_models(self) -> list[str]:
        """The model ids the first reachable endpoint serves (GET /v1/models)."""
        problems = []
        for endpoint in self._endpoints:
            try:
                reply = self._get(endpoint, "/models")
            except _Failure as failure:
                hint = START_HINT if failure.unreachable else "check the URL and the API key"
                problems.append(f"{endpoint.url}: {failure} ({hint})")
                continue
            return [str(model.get("id")) for model in reply.get("data", []) if isinstance(model, dict)]
        raise PolicyError(self._redact("cannot list models: " + "; ".join(problems)))

    def wait_until_ready(self, timeout_s: float = 600.0, poll_s: float = 2.0) -> list[str]:
        """Poll /v1/models until a server answers (a model still loading); returns its models."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.list_models()
            except PolicyError:
                if time.monotonic() + poll_s > deadline:
                    raise
                time.sleep(poll_s)

    def close(self) -> None:
        """Close the idle keep-alive connections (the policy stays usable)."""
        with self._lock:
            connections = [connection for endpoint in self._endpoints for connection in endpoint.idle]
            for endpoint in self._endpoints:
                endpoint.idle.clear()
        for connection in connections:
            connection.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn down what close() needs
            pass

    def __enter__(self) -> "HttpPolicy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ request bodies

    def _messages_json(self, messages: list[dict[str, Any]]) -> str:
        # Spliced by hand: a View caches its base64 data URL, which needs no JSON escaping, so
        # a turn costs a copy of the images, not a json.dumps scan of megabytes of base64.
        out = []
        for message in messages:
            content = message["content"]
            if isinstance(content, str):
                body = json.dumps(content)
            elif all(part["type"] == "text" for part in content):
                body = json.dumps("".join(part["text"] for part in content))
            else:
                pieces = []
                for part in content:
                    if part["type"] == "text":
                        pieces.append('{"type":"text","text":' + json.dumps(part["text"]) + "}")
                    elif part["type"] == "image":
                        pieces.append('{"type":"image_url","image_url":{"url":' + self._image_url_json(part["image"]) + "}}")
                    else:
                        raise PolicyError(f"unknown content part type {part['type']!r}; mini_o3.agent.protocol builds 'text' and 'image' parts")
                body = "[" + ",".join(pieces) + "]"
            out.append('{"role":' + json.dumps(message["role"]) + ',"content":' + body + "}")
        return "[" + ",".join(out) + "]"

    def _image_url_json(self, image: Any) -> str:
        encode = getattr(image, "data_url", None)
        if callable(encode):
            return '"' + encode(self.image_format, self.jpeg_quality) + '"'  # base64 needs no JSON escapes
        if isinstance(image, str) and image.startswith(("data:", "http://", "https://")):
            return json.dumps(image)
        try:
            picture = as_pil(image)
        except TypeError as error:
            raise PolicyError(f"{error} (or a data: or http(s) URL)") from None
        return '"' + data_url(picture, self.image_format, self.jpeg_quality) + '"'  # base64 needs no JSON escapes

    def _body(self, messages_json: str, sampling: SamplingParams) -> bytes:
        fields: dict[str, Any] = {
            "model": self.model,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }
        if sampling.stop:
            fields["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            fields["seed"] = sampling.seed
        if self.include_stop_str_in_output:
            fields["include_stop_str_in_output"] = True
        head = json.dumps(fields)
        return (head[:-1] + ',"messages":' + messages_json + "}").encode("utf-8")

    def _drop_include_stop(self, endpoint: _Endpoint) -> None:
        with self._lock:
            if not self.include_stop_str_in_output:
                return
            self.include_stop_str_in_output = False
        log.warning("%s rejects include_stop_str_in_output; no longer sending it (the stop string is restored client-side)", endpoint.url)

    # ------------------------------------------------------------ endpoints

    def _pick(self) -> tuple[_Endpoint, float]:
        """The endpoint for the next request, and how long to wait first (all cooling down)."""
        now = time.monotonic()
        with self._lock:
            healthy = [e for e in self._endpoints if e.retry_at <= now]
            if healthy:
                endpoint, wait = min(healthy, key=lambda e: (e.in_flight, e.served)), 0.0
            else:
                endpoint = min(self._endpoints, key=lambda e: e.retry_at)
                wait = min(endpoint.retry_at - now, self.max_backoff_s) + random.uniform(0, self.backoff_s / 4)
            endpoint.in_flight += 1
            endpoint.served += 1
        return endpoint, wait

    def _abandoned(self, endpoint: _Endpoint) -> None:
        with self._lock:
            endpoint.in_flight -= 1

    def _succeeded(self, endpoint: _Endpoint) -> None:
        with self._lock:
            endpoint.in_flight -= 1
            recovered = endpoint.failures > 0
            endpoint.failures, endpoint.retry_at, endpoint.ever_ok = 0, 0.0, True
        if recovered:
            log.info("%s answers again", endpoint.url)

    def _failed(self, endpoint: _Endpoint, failure: _Failure) -> None:
        if not failure.retryable:
            with self._lock:
                endpoint.in_flight -= 1
            return
        now = time.monotonic()
        with self._lock:
            endpoint.in_flight -= 1
            # Only a failure after the cooldown ended (a probe) lengthens it: the requests that
            # were already in flight when the endpoint broke are one outage, not many.
            escalate = now >= endpoint.retry_at
            if escalate:
                endpoint.failures += 1
            if failure.retry_after is not None:
                delay = min(failure.retry_after, self.max_backoff_s)
            else:
                delay = min(self.backoff_s * 2 ** (endpoint.failures - 1), self.max_backoff_s) * random.uniform(0.5, 1.0)
            endpoint.retry_at = max(endpoint.retry_at, now + delay)
            first = escalate and endpoint.failures == 1
        if failure.unreachable:
            log.debug("%s unreachable (%s)", endpoint.url, failure)
        elif first:
            log.warning("%s failing (%s); retrying with backoff", endpoint.url, self._redact(str(failure)))
        else:
            log.debug("%s failed again (%s); next try in %.2f s", endpoint.url, self._redact(str(failure)), delay)

    # ------------------------------------------------------------ HTTP

    def _post(self, endpoint: _Endpoint, path: str, body: bytes) -> dict[str, Any]:
        with self._slots:
            return self._exchange(endpoint, "POST", path, body)

    def _get(self, endpoint: _Endpoint, path: str) -> dict[str, Any]:
        with self._slots:
            return self._exchange(endpoint, "GET", path, None)

    def _exchange(self, endpoint: _Endpoint, method: str, path: str, body: bytes | None) -> dict[str, Any]:
        """One request on a pooled keep-alive connection; a stale pooled connection is replaced once."""
        target = endpoint.path + path
        fresh = False
        while True:
            connection, reused = self._connection(endpoint, fresh)
            try:
                if connection.sock is None:
                    connection.connect()
                    connection.sock.settimeout(self.timeout_s)
            except (socket.timeout, TimeoutError) as error:
                connection.close()
                raise _Failure(f"connection timed out after {self.connect_timeout_s:g} s ({error})", retryable=True) from None
            except ssl.SSLError as error:
                connection.close()
                raise _Failure(f"TLS failed: {error}", retryable=False) from None
            except OSError as error:
                connection.close()
                raise _Failure(_describe(error), retryable=True, unreachable=not endpoint.ever_ok) from None
            try:
                connection.request(method, target, body, self._headers)
                response = connection.getresponse()
                data = response.read()
            except STALE_CONNECTION_ERRORS as error:
                connection.close()
                if reused:
                    fresh = True  # the server closed an idle keep-alive connection: not a failure
                    continue
                raise _Failure(f"connection dropped ({_describe(error)})", retryable=True) from None
            except (socket.timeout, TimeoutError):
                connection.close()
                raise _Failure(f"no reply within timeout_s={self.timeout_s:g} s", retryable=True) from None
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                raise _Failure(f"connection failed ({_describe(error)})", retryable=True) from None
            except BaseException:
                connection.close()  # half a request on it: never back to the pool
                raise
            if response.will_close:
                connection.close()
            else:
                self._release(endpoint, connection)
            return _check_reply(response, data, self.api_key_env)

    def _connection(self, endpoint: _Endpoint, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                if endpoint.idle:
                    return endpoint.idle.pop(), True
        if endpoint.https:
            return http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=self.connect_timeout_s, context=self._ssl), False
        return http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=self.connect_timeout_s), False

    def _release(self, endpoint: _Endpoint, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(endpoint.idle) < self.max_connections:
                endpoint.idle.append(connection)
                return
        connection.close()

    def _redact(self, text: str) -> str:
        # Servers may echo what they were sent; short placeholder keys ("EMPTY") are not secrets.
        return text.replace(self._api_key, "***") if self._api_key and len(self._api_key) >= 8 else text


def _endpoint(url: str) -> _Endpoint:
    parts = urlsplit(url)
    https = parts.scheme == "https"
    return _Endpoint(url=url, host=parts.hostname or "", port=parts.port or (443 if https else 80), path=parts.path, https=https)


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror})"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _check_reply(response: http.client.HTTPResponse, data: bytes, api_key_env: str) -> dict[str, Any]:
    """The JSON of a 200 reply; a _Failure saying what went wrong and what to fix otherwise."""
    status = response.status
    if status == 200:
        try:
            reply = json.loads(data)
        except ValueError:
            raise _Failure(f"the reply is not JSON: {data[:200]!r}", retryable=True) from None
        if isinstance(reply, dict) and "error" in reply and "choices" not in reply and "data" not in reply:
            raise _Failure(f"the server answered 200 with an error: {_server_message(data)}", retryable=True)
        if not isinstance(reply, dict):
            raise _Failure(f"the reply is not a JSON object: {data[:200]!r}", retryable=True)
        return reply
    message = f"HTTP {status}: {_server_message(data)}"
    if status in (408, 409, 429) or status >= 500:  # the statuses the openai client retries
        raise _Failure(message, retryable=True, retry_after=_retry_after(response.getheader("Retry-After")))
    hints = {
        400: "check the model name, max_tokens and image sizes against the server's limits",
        401: f"set a valid API key in the environment variable {api_key_env}",
        403: f"the key in {api_key_env} lacks access to this model",
        404: "check that the base URL ends in /v1 and the model name is one list_models() returns",
        413: "the request is too large for the server: use smaller images or image_format='JPEG'",
        422: "the server rejected a field: check the model name and sampling settings",
    }
    raise _Failure(f"{message} ({hints.get(status, 'check the request and the server logs')})", retryable=False)


def _server_message(data: bytes) -> str:
    try:
        payload = json.loads(data)
    except ValueError:
        return data[:300].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        for key in ("error", "message", "detail"):
            if payload.get(key):
                return str(payload[key])[:500]
    return json.dumps(payload)[:300]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _generation_from_reply(reply: dict[str, Any], sampling: SamplingParams, url: str) -> Generation:
    """A Generation from a chat-completion reply, with a stripped stop string put back."""
    try:
        choice = reply["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        raise PolicyError(f"{url} sent a reply without choices: {json.dumps(reply)[:300]}") from None
    text = message.get("content") or ""
    finish_reason = choice.get("finish_reason") or "stop"
    # vLLM names the stop string that matched in stop_reason, SGLang in matched_stop; trust
    # them when present, and guess from the text (restore_stop_string) when not.
    reported = "stop_reason" in choice or "matched_stop" in choice
    matched = choice.get("stop_reason", choice.get("matched_stop"))
    if reported:
        if finish_reason == "stop" and isinstance(matched, str) and matched in sampling.stop and not text.endswith(matched):
            text += matched
    elif sampling.stop:
        text = restore_stop_string(text, finish_reason, sampling.stop[0])
    usage = reply.get("usage") or {}
    return Generation(
        text=text,
        finish_reason=finish_reason,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
    )
