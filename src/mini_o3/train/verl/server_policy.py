"""A `Policy` whose turns come from verl's async token-in/token-out server.

The server is anything with verl's `generate(request_id, *, prompt_ids, sampling_params,
image_data=None, ...)` (verl/workers/rollout/llm_server.py) returning an object with
`token_ids`, `log_probs` and `stop_reason` (verl's `TokenOutput`). `run_episode` calls the
policy from a worker thread; each call hops to the event loop the server lives on and back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Mapping
from uuid import uuid4

from mini_o3.agent.policy import Generation, PolicyError, SamplingParams
from mini_o3.policies.local import PromptEncoder
from mini_o3.train.verl.tokens import EpisodeTokens


class ServerPolicy:
    """A `Policy` whose turns come from verl's async server; called from an episode thread."""

    def __init__(
        self,
        server: Any,
        event_loop: asyncio.AbstractEventLoop,
        encoder: PromptEncoder,
        tokens: EpisodeTokens,
        sampling_params: Mapping[str, Any],
        sampling_extra: Mapping[str, Any],
        response_length: int,
    ) -> None:
        self.server = server
        self.event_loop = event_loop
        self.encoder = encoder
        self.tokens = tokens
        self.sampling_params = {**dict(sampling_params), **dict(sampling_extra)}
        self.response_length = response_length
        self.request_id = uuid4().hex  # one id per episode: verl keeps its turns on one server (prefix cache)
        self.generate_s = 0.0

    def count_tokens(self, text: str) -> int:
        """Tokens of `text`."""
        return self.encoder.count_tokens(text)

    def image_tokens(self, width: int, height: int) -> int:
        """Image pads the processor spends on an image of this size."""
        return self.encoder.image_tokens(width, height)

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams) -> Generation:
        """The next turn: the ids so far go to the server, the sampled ids come back."""
        self.tokens.sync(messages)
        budget = self.response_length - len(self.tokens.response_ids)
        if budget < 1:
            raise PolicyError(f"the response budget (rollout.response_length={self.response_length}) is spent")
        max_tokens = min(sampling.max_new_tokens, budget)
        params = {**self.sampling_params, "stop": list(sampling.stop), "max_tokens": max_tokens}
        prompt = self.tokens.ids
        start = time.perf_counter()
        call = self.server.generate(self.request_id, prompt_ids=prompt, sampling_params=params, image_data=list(self.tokens.images))
        output = asyncio.run_coroutine_threadsafe(call, self.event_loop).result()
        latency = time.perf_counter() - start
        self.generate_s += latency
        if getattr(output, "stop_reason", None) == "aborted":
            raise PolicyError("the server aborted the request")
        ids = [int(token) for token in output.token_ids]
        logprobs = list(output.log_probs) if getattr(output, "log_probs", None) else None
        cut = next((i for i, token in enumerate(ids) if token in self.tokens.vision_ids), None)
        if cut is not None:
            # Keep what came before it (the rollout is masked as an error) so that the images
            # still line up with their pads in what verl trains on.
            self.tokens.add_sampled(ids[:cut], logprobs[:cut] if logprobs else None)
            raise PolicyError(f"the server sampled the vision token {ids[cut]} (<|image_pad|> or kin); the engine should ban them")
        try:
            self.tokens.add_sampled(ids, logprobs)
        except ValueError as error:
            raise PolicyError(str(error)) from error
        text = _cut_at_stop(self.encoder.decode(ids, skip_special_tokens=True), sampling.stop)
        return Generation(
            text=text,
            finish_reason=_finish_reason(ids, text, max_tokens, self.tokens.im_end_id, sampling.stop),
            prompt_tokens=len(prompt),
            completion_tokens=len(ids),
            latency_s=latency,
            token_ids=ids,
            logprobs=logprobs,
        )


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    # The token that completes a stop string may carry more text; the action ends at the stop.
    ends = [text.find(stop) + len(stop) for stop in stops if stop and stop in text]
    return text[: min(ends)] if ends else text


def _finish_reason(ids: list[int], text: str, max_tokens: int, end_id: int, stops: tuple[str, ...]) -> str:
    if ids and ids[-1] == end_id:
        return "stop"
    if any(text.rstrip().endswith(stop) for stop in stops):
        return "stop"
    return "length" if len(ids) >= max_tokens else "stop"
