"""Rollout turns from the GRPO trainer's colocated vLLM engine (GPU only; the engine itself is untested on CPU machines).

Token-faithful as LocalPolicy: each prompt is `PromptEncoder.encode(messages)`, whose assistant
turns are the ids vLLM sampled before (carried by the messages) closed as training closes them,
passed to vLLM as `prompt_token_ids` (never text to re-tokenise); each turn's `token_ids` are
vLLM's sampled ids as they are. The pure halves - the request built from a prompt and the
Generation built from vLLM's output - are `vllm_request` and `generation_from_output`, tested
without vLLM. The released Mini-o3 engine grows its prompts the same way, by concatenating ids
(verl fork, vllm_rollout_spmd.py: response ids, then the encoded observation).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

from mini_o3.agent.policy import Generation, PolicyError, SamplingParams


class VLLMColocatePolicy:
    """Turns from the trainer's colocated vLLM engine, batching concurrent episode threads into one `generate`.

    Untested here (vLLM needs a GPU). Prompts are the same token ids LocalPolicy builds
    (image pads expanded) with the views' images, as TRL's own colocated generation passes them.
    """

    def __init__(self, llm: Any, encoder: Any, max_batch_size: int = 64, batch_wait_ms: float = 20.0) -> None:
        self.llm = llm
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="vllm-policy-batcher", daemon=True)
        self._worker.start()

    def count_tokens(self, text: str) -> int:
        """Tokens of `text`."""
        return self.encoder.count_tokens(text)

    def image_tokens(self, width: int, height: int) -> int:
        """`<|image_pad|>` tokens an image shown at width x height takes."""
        return self.encoder.image_tokens(width, height)

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """The next assistant turn; blocks until its batch has run."""
        prompt = self.encoder.encode(messages)
        future: Future = Future()
        self._queue.put((prompt, prompt.images, sampling, time.perf_counter(), future))
        return future.result()

    def close(self) -> None:
        """Stop the batching thread."""
        self._queue.put(None)
        self._worker.join()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    item = self._queue.get(timeout=max(deadline - time.perf_counter(), 0.0))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                self._run(batch)
            except Exception as error:  # noqa: BLE001 - every failure must reach its caller
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(PolicyError(f"vLLM generation failed: {type(error).__name__}: {error}"))

    def _run(self, batch: list[tuple]) -> None:
        from vllm import SamplingParams as VLLMSamplingParams

        prompts, params = [], []
        for prompt, images, sampling, _, _ in batch:
            row, settings = vllm_request(prompt, images, sampling)
            prompts.append(row)
            params.append(VLLMSamplingParams(**settings))
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        done = time.perf_counter()
        for (prompt, _, _, start, future), output in zip(batch, outputs):
            future.set_result(generation_from_output(output.outputs[0], len(prompt.input_ids), done - start))


def vllm_request(prompt: Any, images: list[Any], sampling: SamplingParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """vLLM's prompt row (the ids as they are, the images) and its SamplingParams keywords for one turn."""
    row: dict[str, Any] = {"prompt_token_ids": list(prompt.input_ids)}
    if images:
        row["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
    settings = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "stop": list(sampling.stop),
        "include_stop_str_in_output": True,
        "logprobs": 0,
        "seed": sampling.seed,
    }
    return row, settings


def generation_from_output(choice: Any, prompt_tokens: int, latency_s: float) -> Generation:
    """The Generation of one vLLM completion (`CompletionOutput`): its sampled ids as they are, with their log-probs."""
    token_ids = list(choice.token_ids)
    logprobs = None
    if choice.logprobs:
        # With logprobs=0 each entry holds the sampled token (vLLM adds it to the top-k).
        logprobs = [entry[token].logprob for token, entry in zip(token_ids, choice.logprobs)]
    return Generation(
        text=choice.text,
        finish_reason="length" if choice.finish_reason == "length" else "stop",
        prompt_tokens=prompt_tokens,
        completion_tokens=len(token_ids),
        latency_s=latency_s,
        token_ids=token_ids,
        logprobs=logprobs,
    )
