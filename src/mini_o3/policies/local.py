"""A local transformers policy for any supported family (Qwen2.5-VL, Qwen3-VL, Qwen3.5), with dynamic batching.

Prompts are rendered by the checkpoint's family (`models.backbone.Backbone.render_messages`:
the protocol's strings in the family's chat markup), tokenised, and each image's single
`<|image_pad|>` is expanded to the number of tokens the image processor gives it ((h/28) * (w/28)
on Qwen2.5-VL, (h/32) * (w/32) on Qwen3-VL and Qwen3.5). `mm_token_type_ids` marks the image
tokens so the model uses its multimodal rotary positions.

Token-faithful: an assistant message that carries the ids its policy sampled
(`protocol.assistant_message(text, token_ids)`, as `ZoomEnv` and `Trajectory.messages` build
them) is encoded as those ids after the family's assistant header, closed as `sampled_turn`
closes it, never as its text re-tokenised - so each turn continues from exactly the ids sampled
so far, which are the ids training sees (`train.tokenize` encodes turns with the same
`sampled_turn`). Other messages are rendered one at a time by the family; its rendering of a
conversation is the concatenation of its messages' renderings.

Many episode threads call `generate` at once; one background worker serves them with one of
two engines:
- "cached" (`policies.cached_engine`, the default for Qwen2.5-VL): each conversation's keys and
  values stay in a cache slot across turns, so a turn prefills only what is new, and every
  request in flight decodes in one forward per token (continuous batching);
- "generate": gathers concurrent calls (up to `max_batch_size`, waiting at most
  `batch_wait_ms` after the first) and runs one left-padded `model.generate` on the whole
  prompts. Any family transformers can generate with runs here.
Both sample each row with our own sampler, so each request keeps its own temperature, top-p,
seed, stop strings and token limit inside a shared batch, and a seeded request draws the same
tokens from the same logits whichever engine and batch it runs in.

`Generation.logprobs` are the raw model's log-probabilities of each generated token: the
log-softmax of the unprocessed logits at temperature 1, before token suppression, temperature
and top-p. That is the quantity a GRPO ratio needs, whatever temperature sampled the turn.
"""

from __future__ import annotations

import hashlib
import queue
import secrets
import threading
import time
import weakref
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from mini_o3.agent.images import as_pil
from mini_o3.agent.policy import Generation, PolicyError, SamplingParams
from mini_o3.models.backbone import VISION_TOKENS, Backbone, with_checkpoint_template
from mini_o3.models.families import backbone_named, backbone_of
from mini_o3.policies.row_sampling import choose_tokens, draw_uniforms

SUPPRESSED_TOKENS = VISION_TOKENS
"""Tokens a policy must never write (a random model would otherwise sample them)."""
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
"""Tokens that end a turn on every supported family; counted and returned in `token_ids` but not in the text."""
IM_END = "<|im_end|>"
"""The token that closes every chat message."""


@dataclass
class EncodedPrompt:
    """A conversation as model inputs: token ids with expanded image pads, and the images' patches."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None = None
    """(patches, 1176) float32 for all images, in order; None without images."""
    image_grid_thw: torch.Tensor | None = None
    """(images, 3): the (t, h, w) patch grid of each image."""
    image_token_id: int = -1
    images: list[Any] = field(default_factory=list)
    """The PIL images shown, in order (the cached engine matches conversations by these objects)."""
    image_spans: list[tuple[int, int]] = field(default_factory=list)
    """Where each image's pads lie in `input_ids`: [start, end)."""
    image_keys: list[bytes] = field(default_factory=list)
    """A digest of each image's grid and `pixel_values` rows (equal keys: equal model inputs); computed on demand when empty."""

    def image_pixels(self, index: int) -> torch.Tensor:
        """The `pixel_values` rows of image `index`."""
        sizes = self.image_grid_thw.prod(dim=1).tolist()
        start = sum(sizes[:index])
        return self.pixel_values[start : start + sizes[index]]

    def image_key(self, index: int) -> bytes:
        """The digest of image `index` (see `image_keys`)."""
        if len(self.image_keys) != len(self.images):
            self.image_keys = [pixels_key(self.image_pixels(i), self.image_grid_thw[i]) for i in range(len(self.images))]
        return self.image_keys[index]

    def mm_token_type_ids(self) -> list[int]:
        """1 where the token is an image pad, else 0."""
        return [1 if token == self.image_token_id else 0 for token in self.input_ids]


class PromptEncoder:
    """Renders protocol messages and turns them into model inputs; safe to use from many threads."""

    def __init__(self, tokenizer: Any, image_processor: Any, image_cache_bytes: int = 512 * 2**20, backbone: Backbone | None = None) -> None:
        from tokenizers import Tokenizer

        self.backbone = with_checkpoint_template(backbone or backbone_named("qwen2.5-vl"), tokenizer)
        """The family whose chat markup prompts are rendered in (its opener as the checkpoint's template writes it)."""
        # A private copy of the Rust tokenizer: the transformers wrapper changes padding and
        # truncation state on every call, which is not safe across threads.
        self._backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._backend.no_padding()
        self._backend.no_truncation()
        self.image_processor = image_processor
        self.merge_size = int(getattr(image_processor, "merge_size", 2))
        self.image_token_id = _token_id(tokenizer, "<|image_pad|>")
        self.im_end_id = _token_id(tokenizer, IM_END)
        self._newline = self.encode_text("\n")
        self._close = self.encode_text(IM_END + "\n")
        self._assistant_header: list[int] | None = None
        self._cache: OrderedDict[int, tuple[weakref.ref, torch.Tensor, torch.Tensor, bytes]] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = image_cache_bytes
        self._lock = threading.Lock()
        # Keys of images that were freed; the weakref callback only records them (it may run
        # inside a locked section during garbage collection) and the next lookup drops them.
        self._freed: deque[int] = deque()

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` (special tokens written in it count as one each)."""
        return len(self._backend.encode(text, add_special_tokens=False).ids)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of `text`, with no image expansion."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids."""
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def image_tokens(self, width: int, height: int) -> int:
        """`<|image_pad|>` tokens the processor spends on an image of this size (markers excluded)."""
        patches = self.image_processor.get_number_of_image_patches(height, width, {})
        return patches // self.merge_size**2

    def encode(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> EncodedPrompt:
        """Model inputs for `messages` as the family renders them (`Backbone.render_messages`), assistant turns as their sampled ids."""
        images = [as_pil(part["image"]) for message in messages for part in message["content"] if part["type"] == "image"]
        ids: list[int] = []
        for message in messages:
            sampled = message.get("token_ids") if message["role"] == "assistant" else None
            if sampled:
                if self.image_token_id in sampled:
                    raise PolicyError("an assistant turn holds a sampled <|image_pad|>; its image features cannot line up")
                ids += self.assistant_header() + self.sampled_turn(sampled)[0]
            else:
                ids += self.encode_text(self.render([message], add_generation_prompt=False))
        if add_generation_prompt:
            ids += self.assistant_header()
        pads = sum(1 for token in ids if token == self.image_token_id)
        if pads != len(images):
            raise PolicyError(
                f"the prompt holds {pads} <|image_pad|> tokens for {len(images)} images; "
                "message text must not contain the literal <|image_pad|>"
            )
        if not images:
            return EncodedPrompt(ids, image_token_id=self.image_token_id)
        features = [self._image_features(image) for image in images]
        expanded: list[int] = []
        spans: list[tuple[int, int]] = []
        counts = iter(int(grid.prod()) // self.merge_size**2 for _, grid, _ in features)
        for token in ids:
            if token == self.image_token_id:
                count = next(counts)
                spans.append((len(expanded), len(expanded) + count))
                expanded.extend([token] * count)
            else:
                expanded.append(token)
        pixel_values = torch.cat([values for values, _, _ in features])
        grid_thw = torch.stack([grid for _, grid, _ in features])
        return EncodedPrompt(expanded, pixel_values, grid_thw, self.image_token_id, images, spans, [key for _, _, key in features])

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """The chat-template text of `messages` (the family's markup)."""
        return self.backbone.render_messages(messages, add_generation_prompt)

    def assistant_header(self) -> list[int]:
        """Ids that open an assistant turn (the generation prompt)."""
        if self._assistant_header is None:
            self._assistant_header = self.encode_text(self.render([], add_generation_prompt=True))
        return self._assistant_header

    def sampled_turn(self, token_ids: list[int]) -> tuple[list[int], list[int]]:
        """A sampled assistant turn as it stands in the conversation, and which of those ids were sampled (1).

        The ids as sampled, then what the template closes a turn with: "\\n" after a sampled
        `<|im_end|>`, else `<|im_end|>\\n` (a turn cut at `</grounding>` or by the token limit, or
        ended by `<|endoftext|>`, which stays in the ids; a turn cut before its first id).
        """
        closer = self._newline if token_ids and token_ids[-1] == self.im_end_id else self._close
        return list(token_ids) + closer, [1] * len(token_ids) + [0] * len(closer)

    def _image_features(self, image: Any) -> tuple[torch.Tensor, torch.Tensor, bytes]:
        """The processor's `pixel_values` and grid for `image`, and their digest (cached per image object)."""
        key = id(image)
        with self._lock:
            self._drop_freed()
            hit = self._cache.get(key)
            if hit is not None and hit[0]() is image:
                self._cache.move_to_end(key)
                return hit[1], hit[2], hit[3]
        output = self.image_processor(images=[image], return_tensors="pt")
        values, grid = output["pixel_values"].float(), output["image_grid_thw"][0].long()
        digest = pixels_key(values, grid)
        size = values.numel() * values.element_size()
        if size <= self._cache_limit:
            with self._lock:
                old = self._cache.pop(key, None)
                if old is not None:
                    self._cache_bytes -= old[1].numel() * old[1].element_size()
                self._cache[key] = (weakref.ref(image, lambda _, key=key: self._freed.append(key)), values, grid, digest)
                self._cache_bytes += size
                while self._cache_bytes > self._cache_limit:
                    _, (_, dropped, _, _) = self._cache.popitem(last=False)
                    self._cache_bytes -= dropped.numel() * dropped.element_size()
        return values, grid, digest

    def _drop_freed(self) -> None:
        while self._freed:
            key = self._freed.popleft()
            entry = self._cache.get(key)
            if entry is not None and entry[0]() is None:
                del self._cache[key]
                self._cache_bytes -= entry[1].numel() * entry[1].element_size()


def pixels_key(pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> bytes:
    """A digest of one image's patch grid and `pixel_values` rows: equal digests mean equal model inputs."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(grid_thw.tolist()).encode())
    digest.update(pixel_values.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        raise PolicyError(f"the tokenizer has no {token} token; a Qwen2.5-VL-class tokenizer is needed")
    return int(token_id)


# ---------------------------------------------------------------- batched generation


@dataclass
class _Request:
    prompt: EncodedPrompt
    sampling: SamplingParams
    seed: int
    start: float
    future: Future = field(default_factory=Future)


_STOP = object()


class _RowSampler(LogitsProcessor):
    """Chooses each row's next token by that row's own settings and records raw log-probs."""

    def __init__(self, requests: list[_Request], suppressed: list[int]) -> None:
        self.temperatures = [request.sampling.temperature for request in requests]
        self.top_ps = [request.sampling.top_p for request in requests]
        self.uniforms = torch.stack([draw_uniforms(request.seed, max(request.sampling.max_new_tokens for request in requests)) for request in requests])
        self.suppressed = suppressed
        self.logprobs: list[list[float]] = [[] for _ in requests]
        self.step = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen, picked = choose_tokens(scores, self.suppressed, self.temperatures, self.top_ps, self.uniforms[:, self.step])
        self.step += 1
        for row, value in enumerate(picked):
            self.logprobs[row].append(value)
        # Generation then runs greedy over this: the chosen token is the only finite logit.
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, torch.tensor(chosen, device=scores.device)[:, None], 0.0)
        return forced


class _RowStopper(StoppingCriteria):
    """Ends each row at an end token, at one of its stop strings, or at its own token limit."""

    def __init__(self, requests: list[_Request], prompt_width: int, end_ids: set[int], decode: Any) -> None:
        self.prompt_width = prompt_width
        self.end_ids = end_ids
        self.decode = decode
        self.stops = [tuple(stop for stop in request.sampling.stop if stop) for request in requests]
        self.limits = [request.sampling.max_new_tokens for request in requests]
        self.reasons: list[str | None] = [None] * len(requests)
        self.lengths: list[int | None] = [None] * len(requests)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        last = input_ids[:, -1].tolist()
        for row in range(len(self.reasons)):
            if self.reasons[row] is not None:
                continue
            reason = None
            if last[row] in self.end_ids:
                reason = "end"
            elif self.stops[row] and self._hit_stop(input_ids[row], step, self.stops[row]):
                reason = "stop"
            elif step >= self.limits[row]:
                reason = "length"
            if reason is not None:
                self.reasons[row], self.lengths[row] = reason, step
        return torch.tensor([reason is not None for reason in self.reasons], device=input_ids.device)

    def _hit_stop(self, row_ids: torch.Tensor, step: int, stops: tuple[str, ...]) -> bool:
        # Each token holds at least one byte, so a stop string completed by the newest token lies
        # within its byte length in tokens; earlier occurrences would have stopped earlier.
        window = min(step, max(len(stop.encode("utf-8")) for stop in stops) + 1)
        tail = self.decode(row_ids[-window:].tolist(), skip_special_tokens=False)
        return any(stop in tail for stop in stops)


class LocalPolicy:
    """A model of a supported family run with transformers, batching concurrent `generate` calls."""

    def __init__(
        self,
        checkpoint: str | Path | tuple[Any, Any, Any],
        device: str = "cpu",
        dtype: Any = None,
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        engine: str = "auto",
    ) -> None:
        """Load `checkpoint` (a directory, or a (model, tokenizer, image_processor) triple).

        `engine` is "cached", "generate" or "auto" (cached where `cached_engine` drives the model's
        family, else generate; see the module docstring). The cached engine keeps up to
        `max_batch_size` conversations in its cache and decodes at most that many at once.

        `dtype` (default float32 on CPU, bfloat16 elsewhere), `min_pixels` and `max_pixels` (the
        image processor's limits) apply to directories; a given model is only moved to `device`.
        The policy then owns the model: it must not run a forward pass elsewhere while a batch
        generates (Qwen2.5-VL keeps its rotary offsets on the model between steps).
        """
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if engine not in ("auto", "cached", "generate"):
            raise ValueError(f"engine must be auto, cached or generate, got {engine!r}")
        if isinstance(checkpoint, (str, Path)):
            from mini_o3.models.tiny import load_checkpoint

            model, tokenizer, image_processor = load_checkpoint(checkpoint, device, dtype, min_pixels, max_pixels)
        else:
            try:
                model, tokenizer, image_processor = checkpoint
            except (TypeError, ValueError) as error:
                raise PolicyError(
                    f"LocalPolicy takes a checkpoint directory or a (model, tokenizer, image_processor) triple, got {type(checkpoint).__name__}"
                ) from error
            model = model.to(device).eval()
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = torch.device(device)
        self.encoder = PromptEncoder(tokenizer, image_processor, backbone=backbone_of(model))
        self.backbone = self.encoder.backbone
        """The model's family, read from its config (and its template's opener from the tokenizer)."""
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.suppressed = [_token_id(tokenizer, token) for token in SUPPRESSED_TOKENS if tokenizer.convert_tokens_to_ids(token) is not None]
        self.end_ids = {tokenizer.convert_tokens_to_ids(token) for token in END_TOKENS} - {None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _token_id(tokenizer, "<|endoftext|>")
        from mini_o3.policies.cached_engine import CachedEngine, supports_cached_engine

        if engine == "cached" and not supports_cached_engine(model):
            raise PolicyError(f"the cached engine does not drive {type(model).__name__}; use engine='generate'")
        self.engine = "cached" if engine == "cached" or (engine == "auto" and supports_cached_engine(model)) else "generate"
        """The engine that serves requests: "cached" or "generate"."""
        self.cached = CachedEngine(self, max_batch_size) if self.engine == "cached" else None
        self.batches_run = 0
        """How many batches of requests the worker has started (a `model.generate`, or a cached prefill)."""
        self.requests_run = 0
        """How many requests those batches served."""
        self.largest_batch = 0
        """The most requests decoded together."""
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------ public

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` under this policy's tokenizer."""
        return self.encoder.count_tokens(text)

    def image_tokens(self, width: int, height: int) -> int:
        """`<|image_pad|>` tokens this policy's processor spends on an image shown at width x height."""
        return self.encoder.image_tokens(width, height)

    def encode(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> EncodedPrompt:
        """The model inputs `generate` would build for `messages`."""
        return self.encoder.encode(messages, add_generation_prompt)

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        """Write the next assistant turn; blocks until the batch holding this call has run.

        `latency_s` counts from this call to the end of its batch (queueing included);
        `extra["stopped_by"]` says "end" (an end token, counted in `token_ids` and not in the
        text), "stop" (a stop string, kept in the text) or "length". Without `sampling.seed` a
        fresh random seed is drawn per call; with one, the call is reproducible, batched or not.
        """
        start = time.perf_counter()
        if sampling.max_new_tokens < 1:
            raise PolicyError(f"max_new_tokens must be at least 1, got {sampling.max_new_tokens}")
        if sampling.temperature < 0 or not 0 < sampling.top_p <= 1:
            raise PolicyError(f"temperature must be >= 0 and top_p in (0, 1], got {sampling.temperature} and {sampling.top_p}")
        try:
            prompt = self.encoder.encode(messages)
        except PolicyError:
            raise
        except Exception as error:
            raise PolicyError(f"cannot build the prompt: {type(error).__name__}: {error}") from error
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        request = _Request(prompt, sampling, seed, start)
        self._submit(request)
        return request.future.result()

    def close(self) -> None:
        """Stop the background worker (calls already queued still finish; later ones raise PolicyError)."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            if worker is not None:
                # Under the lock: every request queued before this is ahead of the stop.
                self._queue.put(_STOP)
        if worker is not None:
            worker.join()

    def __enter__(self) -> "LocalPolicy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ worker

    def _submit(self, request: _Request) -> None:
        # Checking, starting the worker and queueing under one lock: a close() cannot slip in
        # between, so no request is ever queued behind the stop with no worker left to run it.
        with self._start_lock:
            if self._closed:
                raise PolicyError("this LocalPolicy was closed")
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="local-policy-batcher", daemon=True)
                self._worker.start()
            self._queue.put(request)

    def _work(self) -> None:
        try:
            self._serve()
        finally:
            with self._start_lock:  # no request can be queued while the leftovers are failed
                if self._worker is threading.current_thread():
                    self._worker = None
                self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        """Fail whatever is still queued when the worker ends, so that no caller waits forever."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and not item.future.done():
                item.future.set_exception(PolicyError("the LocalPolicy worker stopped before this request ran (the policy was closed, or its worker failed)"))

    def _serve(self) -> None:
        if self.cached is not None:
            self.cached.serve(self._queue, _STOP, self.batch_wait_s)
            return
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.perf_counter() + self.batch_wait_s
            stop_after = False
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                batch.append(item)
            self._run(batch)
            if stop_after:
                return

    def _run(self, batch: list[_Request]) -> None:
        try:
            results = self._generate_batch(batch)
        except Exception as error:  # noqa: BLE001 - every failure must reach its caller
            if len(batch) > 1:
                # Run each alone so that a failure lands on the request that caused it.
                for request in batch:
                    self._run([request])
                return
            message = f"local generation failed: {type(error).__name__}: {error}"
            batch[0].future.set_exception(PolicyError(message))
            return
        for request, result in zip(batch, results):
            request.future.set_result(result)

    def _generate_batch(self, batch: list[_Request]) -> list[Generation]:
        rows = len(batch)
        width = max(len(request.prompt.input_ids) for request in batch)
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)
        for row, request in enumerate(batch):
            ids = torch.tensor(request.prompt.input_ids, dtype=torch.long)
            input_ids[row, width - len(ids) :] = ids
            attention_mask[row, width - len(ids) :] = 1
        inputs: dict[str, Any] = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}
        with_images = [request.prompt for request in batch if request.prompt.pixel_values is not None]
        if with_images:
            dtype = next(self.model.parameters()).dtype
            inputs["pixel_values"] = torch.cat([prompt.pixel_values for prompt in with_images]).to(self.device, dtype)
            inputs["image_grid_thw"] = torch.cat([prompt.image_grid_thw for prompt in with_images]).to(self.device)
            inputs["mm_token_type_ids"] = (input_ids == self.encoder.image_token_id).long().to(self.device)
        sampler = _RowSampler(batch, self.suppressed)
        stopper = _RowStopper(batch, width, self.end_ids, self.encoder.decode)
        config = GenerationConfig(
            max_new_tokens=max(request.sampling.max_new_tokens for request in batch),
            do_sample=False,
            num_beams=1,
            # Neutral values, so that a checkpoint's own generation_config.json (Qwen ships
            # top_k=1, repetition_penalty=1.05) cannot alter the raw logits our sampler sees.
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            repetition_penalty=1.0,
            eos_token_id=sorted(self.end_ids),
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
        self.batches_run += 1
        self.requests_run += rows
        self.largest_batch = max(self.largest_batch, rows)
        results = []
        for row, request in enumerate(batch):
            length = stopper.lengths[row] if stopper.lengths[row] is not None else output.shape[1] - width
            reason = stopper.reasons[row] or "length"
            token_ids = output[row, width : width + length].tolist()
            results.append(self._result(request, token_ids, sampler.logprobs[row][:length], reason, rows))
        return results

    def _result(self, request: _Request, token_ids: list[int], logprobs: list[float], reason: str, batch_size: int) -> Generation:
        """The Generation of a finished request."""
        return Generation(
            text=self._text(token_ids, reason, request.sampling.stop),
            finish_reason="length" if reason == "length" else "stop",
            prompt_tokens=len(request.prompt.input_ids),
            completion_tokens=len(token_ids),
            latency_s=time.perf_counter() - request.start,
            token_ids=token_ids,
            logprobs=logprobs,
            extra={"batch_size": batch_size, "stopped_by": reason},
        )

    def _text(self, token_ids: list[int], reason: str, stops: tuple[str, ...]) -> str:
        if reason == "end":
            return self.encoder.decode(token_ids[:-1])
        text = self.encoder.decode(token_ids)
        if reason == "stop":
            ends = [text.find(stop) + len(stop) for stop in stops if stop and stop in text]
            if ends:
                text = text[: min(ends)]
        return text
