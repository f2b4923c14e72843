"""One HTTP client for OpenAI-compatible endpoints (vLLM, SGLang, `transformers serve`, hosted APIs), on httpx.

The policy and the LLM judge both speak through it. httpx does the HTTP: keep-alive, TLS, timeouts
and the proxy variables (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY, as curl reads them). This
module adds what a long evaluation needs on top:

- Several base URLs share the load: each request goes to the endpoint with the fewest requests in
  flight. A failing endpoint cools down (exponential backoff with jitter, or the server's
  Retry-After) while the others take the load; once every endpoint cools, callers wait for the
  first to come back.
- 429, 408, 409, 5xx, timeouts and dropped connections are retried up to `max_retries` times;
  other 4xx fail at once with the server's message and a hint. An endpoint that refuses
  connections and has never answered fails at once (nothing listening is not transient).
- The API key is read once from an environment variable and redacted from every message this
  client raises or logs, whatever a server echoes back.

Each endpoint keeps a free list of httpx transports with one keep-alive connection each, so
concurrent requests never share one pool: a single httpx.Client shared by 256 threads failed
with "Bad file descriptor" in both runs of bench/bench_http.py here, and earlier measured 0.13 of
the ideal throughput at 8.8 ms of client CPU a turn (its pool scans every waiting request under
one lock). Requests go to the transport directly (httpx's public transport API): the Client's
cookie jar, auth flow and redirect handling cost about 0.2 ms a request and none is used here.
The proxy is chosen once per endpoint from the environment, as curl and httpx read it.
Measured (docs/serving.md): the same throughput as the http.client policy it replaces, 0.2-0.3
ms more client CPU a turn; 0.93 of the ideal at 2,048 episodes in flight over 4 endpoints.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit

import httpx

from mini_o3 import __version__

log = logging.getLogger(__name__)

START_HINT = "is the server running? start one with `mini-o3 serve ...` or vLLM (`vllm serve MODEL`)"
RETRYABLE_STATUSES = frozenset({408, 409, 429})
"""Besides 5xx: the statuses the openai client retries too."""
REFUSAL_HINTS = {
    400: "check the model name, max_tokens and image sizes against the server's limits",
    401: "set a valid API key in the environment variable {key_env}",
    403: "the key in {key_env} lacks access to this model",
    404: "check that the base URL ends in /v1 and the model name is one the server lists (GET /v1/models)",
    413: "the request is too large for the server: use smaller images or JPEG",
    422: "the server rejected a field: check the model name and sampling settings",
}
MIN_SECRET_LENGTH = 8
"""Shorter keys are placeholders ("EMPTY", "none"), not secrets: they are not redacted."""


def normalize_base_url(url: str) -> str:
    """`url` without a trailing slash, with /v1 added when it names only a host."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base URL must look like http://host:port/v1, got {url!r}")
    return url if parts.path else url + "/v1"


class ChatRequestError(Exception):
    """A request that failed for good; its message is redacted and says what to fix."""

    def __init__(self, message: str, status: int | None = None, refused: bool = False) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status of the last answer, None when no answer came."""
        self.refused = refused
        """True when the server refused the request (a 4xx other than 408/409/429): retrying cannot help."""


@dataclass
class Reply:
    """A 200 answer: its JSON object, the endpoint that sent it and the attempts it took."""

    payload: dict[str, Any]
    endpoint: str
    attempts: int


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY; NO_PROXY exempts), or None."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy if "://" in proxy else "http://" + proxy


@dataclass
class _Connection:
    """An httpx transport holding one keep-alive connection, used by one request at a time."""

    transport: httpx.HTTPTransport
    uses: int = 0


@dataclass
class _Endpoint:
    """One server: its address, its proxy, its idle connections and its health."""

    url: str
    proxy: str | None = None
    idle: list[_Connection] = field(default_factory=list)
    in_flight: int = 0
    served: int = 0
    failures: int = 0
    """Consecutive failed requests; 0 when healthy."""
    retry_at: float = 0.0
    """time.monotonic() before which new requests avoid this endpoint."""
    ever_ok: bool = False
    """Whether it ever answered: a refused connection before that means nothing is listening."""
    parsed: dict[str, httpx.URL] = field(default_factory=dict)

    def url_for(self, path: str) -> httpx.URL:
        """The full URL of `path`, parsed once (parsing costs a tenth of a request)."""
        url = self.parsed.get(path)
        if url is None:
            url = self.parsed[path] = httpx.URL(self.url + path)
        return url


class _Failure(Exception):
    """A failed attempt: retryable or not, with what to tell the caller."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None, unreachable: bool = False,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.unreachable = unreachable
        self.status = status


class ChatClient:
    """JSON over HTTP to one or more OpenAI-compatible base URLs; thread-safe, one instance for every thread.

    `timeout_s` bounds each wait for the server (connect, send, each read); `max_backoff_s` caps one
    wait between retries, Retry-After included; `max_connections` caps the requests in flight at
    once over all endpoints.
    """

    def __init__(
        self,
        base_urls: Sequence[str] | str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        max_connections: int = 4096,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("at least one base URL is needed, e.g. http://127.0.0.1:8000/v1")
        if max_retries < 0 or max_connections < 1 or timeout_s <= 0:
            raise ValueError("max_retries must be >= 0, max_connections >= 1 and timeout_s > 0")
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_connections = max_connections
        self._endpoints = [_Endpoint(url, environment_proxy(url)) for url in map(normalize_base_url, urls)]
        key = (os.environ.get(api_key_env) or "").strip() or None
        if key and any(ord(char) < 32 or ord(char) == 127 for char in key):
            # httpx would refuse the header later, with the key in its message.
            raise ValueError(f"the API key in ${api_key_env} contains a control character; set it to the key alone")
        self._secret = key if key and len(key) >= MIN_SECRET_LENGTH else None
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": f"mini-o3/{__version__}"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._headers = httpx.Headers(headers)
        self._timeout = httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s))
        self._extensions = {"timeout": self._timeout.as_dict()}
        self._ssl: ssl.SSLContext | None = None  # built once, on the first connection: loading CA files costs ms
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self.requests_sent = 0
        """HTTP requests made so far, retries included."""

    @property
    def base_urls(self) -> list[str]:
        """The endpoints' base URLs (ending in /v1 or the path given)."""
        return [endpoint.url for endpoint in self._endpoints]

    def __repr__(self) -> str:
        return f"ChatClient({self.base_urls!r}, api_key_env={self.api_key_env!r})"

    def redact(self, text: str) -> str:
        """`text` with the API key replaced by ***."""
        return text.replace(self._secret, "***") if self._secret and self._secret in text else text

    # ------------------------------------------------------------ requests

    def post(self, path: str, body: bytes) -> Reply:
        """POST `body` (JSON bytes) to `path` on the least-loaded endpoint, retrying transient failures."""
        unreachable: set[str] = set()
        attempt = 0
        while True:
            endpoint, wait = self._pick()
            try:
                if wait > 0:
                    time.sleep(wait)
                payload = self._request(endpoint, "POST", path, body)
            except _Failure as failure:
                self._failed(endpoint, failure)
                attempt += 1
                if failure.unreachable:
                    unreachable.add(endpoint.url)
                    if len(unreachable) == len(self._endpoints):
                        raise ChatRequestError(self.redact(f"cannot reach {', '.join(sorted(unreachable))} ({failure}): {START_HINT}")) from None
                elif not failure.retryable:
                    raise ChatRequestError(self.redact(f"{endpoint.url} refused the request: {failure}"), failure.status, refused=True) from None
                if attempt > self.max_retries:
                    raise ChatRequestError(self.redact(
                        f"gave up after {attempt} attempts; last error from {endpoint.url}: {failure} (is the server "
                        "overloaded or failing? check its logs, lower the concurrency or raise the retries)"
                    ), failure.status) from None
                continue
            except BaseException:
                self._abandoned(endpoint)  # an unexpected error (or Ctrl-C) must not leave it counted in flight
                raise
            self._succeeded(endpoint)
            return Reply(payload, endpoint.url, attempt + 1)

    def get(self, path: str) -> Reply:
        """GET `path` from the first endpoint that answers (no retries: for listing models and probing)."""
        problems = []
        for endpoint in self._endpoints:
            try:
                return Reply(self._request(endpoint, "GET", path, None), endpoint.url, 1)
            except _Failure as failure:
                hint = START_HINT if failure.unreachable else "check the URL and the API key"
                problems.append(f"{endpoint.url}: {failure} ({hint})")
        raise ChatRequestError(self.redact("; ".join(problems)))

    def close(self) -> None:
        """Close the idle connections (the client stays usable)."""
        with self._lock:
            connections = [connection for endpoint in self._endpoints for connection in endpoint.idle]
            for endpoint in self._endpoints:
                endpoint.idle.clear()
        for connection in connections:
            connection.transport.close()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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
            log.debug("%s unreachable (%s)", endpoint.url, self.redact(str(failure)))
        elif first:
            log.warning("%s failing (%s); retrying with backoff", endpoint.url, self.redact(str(failure)))
        else:
            log.debug("%s failed again (%s); next try in %.2f s", endpoint.url, self.redact(str(failure)), delay)

    # ------------------------------------------------------------ HTTP

    def _request(self, endpoint: _Endpoint, method: str, path: str, body: bytes | None) -> dict[str, Any]:
        """One request on a pooled connection; a pooled connection the server closed meanwhile is replaced once."""
        url = endpoint.url_for(path)
        fresh = False
        with self._slots:
            while True:
                connection = self._checkout(endpoint, fresh)
                with self._lock:
                    self.requests_sent += 1
                try:
                    request = httpx.Request(method, url, content=body, headers=self._headers, extensions=self._extensions)
                    response = connection.transport.handle_request(request)
                    response.read()
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
                    connection.transport.close()
                    if connection.uses and not fresh:
                        fresh = True  # the server closed an idle keep-alive connection: not a failure
                        continue
                    raise _Failure(f"connection dropped ({_describe(error)})", retryable=True) from None
                except httpx.TimeoutException as error:
                    connection.transport.close()
                    if isinstance(error, httpx.ConnectTimeout):
                        raise _Failure(f"connection timed out after {self._timeout.connect:g} s", retryable=True) from None
                    raise _Failure(f"no reply within timeout_s={self.timeout_s:g} s", retryable=True) from None
                except httpx.ProxyError as error:
                    connection.transport.close()
                    raise _Failure(f"the proxy failed ({_describe(error)}; check HTTPS_PROXY / HTTP_PROXY)", retryable=True) from None
                except httpx.ConnectError as error:
                    connection.transport.close()
                    if _caused_by(error, ssl.SSLError):
                        raise _Failure(f"TLS failed: {_describe(error)}", retryable=False) from None
                    raise _Failure(_describe(error), retryable=True, unreachable=not endpoint.ever_ok) from None
                except httpx.HTTPError as error:
                    connection.transport.close()
                    raise _Failure(f"request failed ({_describe(error)})", retryable=True) from None
                except BaseException:
                    connection.transport.close()  # half a request on it: never back to the pool
                    raise
                connection.uses += 1
                self._release(endpoint, connection)
                return _check_reply(response, self.api_key_env)

    def _checkout(self, endpoint: _Endpoint, fresh: bool) -> _Connection:
        with self._lock:
            if not fresh and endpoint.idle:
                return endpoint.idle.pop()
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
        transport = httpx.HTTPTransport(
            verify=self._ssl,
            proxy=endpoint.proxy,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=300.0),
        )
        return _Connection(transport)

    def _release(self, endpoint: _Endpoint, connection: _Connection) -> None:
        with self._lock:
            if len(endpoint.idle) < self.max_connections:
                endpoint.idle.append(connection)
                return
        connection.transport.close()


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    seen = error
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(error: BaseException) -> str:
    if _caused_by(error, ConnectionRefusedError) or "Connection refused" in str(error):
        return "connection refused"
    if "Name or service not known" in str(error) or "nodename nor servname" in str(error):
        return f"unknown host ({error})"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _check_reply(response: httpx.Response, api_key_env: str) -> dict[str, Any]:
    """The JSON object of a 200 reply; a _Failure saying what went wrong and what to fix otherwise."""
    status, data = response.status_code, response.content
    if status == 200:
        try:
            reply = json.loads(data)
        except ValueError:
            raise _Failure(f"the reply is not JSON: {data[:200]!r}", retryable=True, status=status) from None
        if not isinstance(reply, dict):
            raise _Failure(f"the reply is not a JSON object: {data[:200]!r}", retryable=True, status=status)
        if "error" in reply and "choices" not in reply and "data" not in reply:
            raise _Failure(f"the server answered 200 with an error: {server_message(data)}", retryable=True, status=status)
        return reply
    message = f"HTTP {status}: {server_message(data)}"
    if status in RETRYABLE_STATUSES or status >= 500:
        raise _Failure(message, retryable=True, retry_after=_retry_after(response.headers.get("Retry-After")), status=status)
    hint = REFUSAL_HINTS.get(status, "check the request and the server logs").format(key_env=api_key_env)
    raise _Failure(f"{message} ({hint})", retryable=False, status=status)


def server_message(data: bytes) -> str:
    """The error message in a server's reply body (OpenAI's, FastAPI's or plain text), shortened."""
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
