"""A policy served by any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, `transformers serve`, hosted APIs).

The HTTP (load balancing over several base URLs, retries, backoff, key redaction, proxies) is
`mini_o3.policies.chat_client.ChatClient`, on httpx; this module turns a conversation into a
request body and a reply into a `Generation`:

- A View's image travels as its cached base64 data URL, spliced into the JSON by hand (no
  json.dumps scan of megabytes of base64 per turn).
- `include_stop_str_in_output` asks vLLM to keep `</grounding>`; a server that refuses the field
  (`transformers serve` answers 422, api.openai.com 400) gets the request again without it, and
  later requests leave it out. The stop string is put back client-side either way.
- Servers that split the thought out of `content` (`reasoning` in vLLM, `reasoning_content` in
  vLLM before 0.10 and `transformers serve`) get `<think>...</think>` rebuilt around it, so the
  history sent back and the saved trajectory hold the turn as the model wrote it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Sequence

from mini_o3.agent.images import as_pil, data_url
from mini_o3.agent.policy import Generation, PolicyError, SamplingParams, restore_stop_string
from mini_o3.policies.chat_client import ChatClient, ChatRequestError, normalize_base_url

__all__ = ["HttpPolicy", "normalize_base_url", "join_reasoning"]

log = logging.getLogger(__name__)

INCLUDE_STOP_FIELD = "include_stop_str_in_output"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REASONING_FIELDS = ("reasoning", "reasoning_content")
"""vLLM >= 0.10 writes `reasoning` (and `reasoning_content` for a while); transformers serve writes `reasoning_content`."""


class HttpPolicy:
    """A Policy that asks an OpenAI-compatible `/v1/chat/completions` endpoint for each turn.

    Thread-safe: one instance serves every episode thread. The API key is read once from the
    environment variable `api_key_env` (none is sent when it is unset) and never written
    anywhere: it is redacted from every error, log line and reply text. `timeout_s` bounds each
    wait for a reply and `max_retries` the retries of transient failures (the CLI's `--timeout`
    and `--retries`); `max_backoff_s` caps one wait between retries, Retry-After included;
    `max_connections` caps the requests in flight at once.
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
        max_connections: int = 4096,
        include_stop_str_in_output: bool = True,
        max_backoff_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        jpeg_quality: int = 95,
    ) -> None:
        if image_format.upper() not in ("JPEG", "JPG", "PNG"):
            raise ValueError(f"image_format must be JPEG or PNG, got {image_format!r}")
        self.model = model
        self.image_format = "JPEG" if image_format.upper() in ("JPEG", "JPG") else "PNG"
        self.jpeg_quality = jpeg_quality
        self.include_stop_str_in_output = include_stop_str_in_output
        self._client = ChatClient(
            base_urls, api_key_env=api_key_env, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s,
            max_backoff_s=max_backoff_s, connect_timeout_s=connect_timeout_s, max_connections=max_connections,
        )
        self._lock = threading.Lock()

    @property
    def base_urls(self) -> list[str]:
        """The endpoints' base URLs (ending in /v1 or the path given)."""
        return self._client.base_urls

    @property
    def timeout_s(self) -> float:
        """The longest wait for a reply, in seconds."""
        return self._client.timeout_s

    @property
    def max_retries(self) -> int:
        """Retries of a transient failure before giving up."""
        return self._client.max_retries

    def __repr__(self) -> str:
        return f"HttpPolicy({self.base_urls!r}, model={self.model!r})"

    # ------------------------------------------------------------ the Policy protocol

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """Ask the least-loaded endpoint for the next assistant turn, retrying transient failures."""
        started = time.perf_counter()
        try:
            messages_json = self._messages_json(messages)
            include_stop = self.include_stop_str_in_output
            attempts = 0
            while True:
                try:
                    reply = self._client.post("/chat/completions", self._body(messages_json, sampling, include_stop))
                    break
                except ChatRequestError as error:
                    # Decided by what this request carried, not by the shared flag: requests already
                    # in flight when another thread learned of the refusal carried the field too.
                    if not (include_stop and error.refused and INCLUDE_STOP_FIELD in str(error)):
                        raise PolicyError(str(error)) from None
                    self._drop_include_stop(str(error))
                    include_stop, attempts = False, attempts + 1
            generation = _generation_from_reply(reply.payload, sampling, reply.endpoint)
        except PolicyError as error:
            raise PolicyError(self._client.redact(str(error))) from None
        generation.text = self._client.redact(generation.text)
        generation.latency_s = time.perf_counter() - started
        generation.extra.update(endpoint=reply.endpoint, attempts=attempts + reply.attempts)
        return generation

    # ------------------------------------------------------------ helpers for callers

    def list_models(self) -> list[str]:
        """The model ids the first reachable endpoint serves (GET /v1/models)."""
        try:
            reply = self._client.get("/models")
        except ChatRequestError as error:
            raise PolicyError(f"cannot list models: {error}") from None
        return [str(model.get("id")) for model in reply.payload.get("data", []) if isinstance(model, dict)]

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
        self._client.close()

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

    def _body(self, messages_json: str, sampling: SamplingParams, include_stop: bool | None = None) -> bytes:
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
        if self.include_stop_str_in_output if include_stop is None else include_stop:
            fields[INCLUDE_STOP_FIELD] = True
        head = json.dumps(fields)
        return (head[:-1] + ',"messages":' + messages_json + "}").encode("utf-8")

    def _drop_include_stop(self, refusal: str) -> None:
        with self._lock:
            if not self.include_stop_str_in_output:
                return
            self.include_stop_str_in_output = False
        log.warning("the server rejects %s (%s); no longer sending it (the stop string is restored client-side)",
                    INCLUDE_STOP_FIELD, refusal[:200])


def join_reasoning(reasoning: str | None, content: str, closed: bool) -> str:
    """The turn as the model wrote it, from a server's split of it into a thought and the rest."""
    if reasoning is None or content.lstrip().startswith(THINK_OPEN):
        return content
    return THINK_OPEN + reasoning + (THINK_CLOSE + content if closed else content)


def _generation_from_reply(reply: dict[str, Any], sampling: SamplingParams, url: str) -> Generation:
    """A Generation from a chat-completion reply: the thought rebuilt, a stripped stop string put back."""
    try:
        choice = reply["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        choice = message = None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise PolicyError(f"{url} sent a reply without choices: {json.dumps(reply)[:300]}")
    content = _text(message.get("content"))
    reasoning = next((message[name] for name in REASONING_FIELDS if isinstance(message.get(name), str)), None)
    finish_reason = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else "stop"
    # vLLM names the stop string that matched in stop_reason, SGLang in matched_stop; trust
    # them when present, and guess from the text (restore_stop_string) when not.
    reported = "stop_reason" in choice or "matched_stop" in choice
    matched = choice.get("stop_reason", choice.get("matched_stop"))
    if reasoning is not None and not content:
        # Nothing after the thought: it is unclosed when generation ran out of tokens or stopped
        # on a stop string inside it; a closed thought followed by the end token has no content either.
        if reported:
            inside = isinstance(matched, str) and matched in sampling.stop
        else:
            inside = any(reasoning.rstrip().endswith(stop) or restore_stop_string(reasoning, "stop", stop) != reasoning
                         for stop in sampling.stop)
        text = join_reasoning(reasoning, content, closed=not (finish_reason == "length" or (finish_reason == "stop" and inside)))
    else:
        text = join_reasoning(reasoning, content, closed=True)
    if reported:
        if finish_reason == "stop" and isinstance(matched, str) and matched in sampling.stop and not text.endswith(matched):
            text += matched
    elif sampling.stop:
        text = restore_stop_string(text, finish_reason, sampling.stop[0])
    usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
    return Generation(
        text=text,
        finish_reason=finish_reason,
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
    )


def _count(value: Any) -> int | None:
    """A token count from a reply's usage, None unless it is a whole number >= 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _text(content: Any) -> str:
    """A message's content as text (a list of text parts is joined; None is empty)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""
