"""LocalPolicy's fast engine: one KV cache per episode kept across turns, decoding all episodes in flight together.

The slow way to run an episode re-encodes the whole conversation every turn (every image
through the vision tower again, every token through the decoder again) and decodes each turn
with `model.generate`, which batches only the calls that arrive together. This engine instead:

- keeps each conversation's keys and values in a slot of one preallocated buffer (per layer,
  `(slots, kv_heads, capacity, head_dim)`), so a new turn only prefills what was added since
  the previous one: the last sampled token, the turn's closing tokens, the observation (its new
  image alone goes through the vision tower) and the next assistant header. A prompt continues
  a slot when the slot's ids are a prefix of the prompt's ids and the slot's images are the
  prompt's first images (equal pixels: `EncodedPrompt.image_keys`), which is what a token-faithful conversation
  gives (`protocol.assistant_message` carries the sampled ids). Anything else starts a fresh
  slot, so a mismatch costs speed, never correctness;
- decodes every request in flight in one forward per token (continuous batching): a request
  that arrives while others decode is prefilled and joins at the next step, and a finished one
  leaves at once, so no row waits for the longest turn of a batch;
- samples each row with its own settings and generator, exactly as the `generate` engine does
  (`local._sample`): a seeded request draws the same tokens from the same logits.

Rows in one forward have different lengths. Each row writes its new keys at its own length
(right after its valid keys) and the attention mask lets query i of row r see the first
`length[r] + i + 1` keys: rows never see padding or another row's leftovers. Rotary positions
are passed explicitly (Qwen2.5-VL's 3-D positions of the new tokens: the model's own
`get_rope_index` on the suffix, offset past the slot's largest position).

Slots are reused least-recently-used first. The cache is dropped whenever the model's weights
change (an optimizer step bumps the parameters' version counters), so an RL step never
continues a conversation encoded by older weights.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mini_o3.agent.policy import PolicyError
from mini_o3.policies.row_sampling import choose_tokens, draw_uniforms

CACHED_MODEL_TYPES = frozenset({"qwen2_5_vl"})
"""Model types (`config.model_type`) whose decoder this engine drives: full attention in every layer
and the model's own `get_rope_index`. Other families run on the `generate` engine."""


def supports_cached_engine(model: Any) -> bool:
    """True when `model` is of a family this engine drives (see `CACHED_MODEL_TYPES`)."""
    return getattr(getattr(model, "config", None), "model_type", None) in CACHED_MODEL_TYPES


def suffix_positions(model: Any, ids: torch.Tensor, grids: torch.Tensor | None, image_token_id: int, start: int) -> torch.Tensor:
    """(3, n) rotary positions of `ids` (1-D) continuing a sequence whose next text position is `start`.

    Qwen2.5-VL gives text one position per token and an image a (t, h, w) grid of positions
    from the current one, the next text starting past its largest; positions of a suffix are
    therefore its own positions offset by where the prefix left off.
    """
    if grids is None or len(grids) == 0:
        return (torch.arange(len(ids)) + start).view(1, -1).expand(3, -1)
    types = (ids == image_token_id).long()[None]
    positions, _ = model.model.get_rope_index(input_ids=ids[None], mm_token_type_ids=types, image_grid_thw=grids)
    return positions[:, 0].cpu() + start


class SlotCache:
    """Keys and values of every slot, written at each row's own length (duck-types transformers' Cache.update)."""

    def __init__(self, layers: int, slots: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.layers, self.slots, self.kv_heads, self.head_dim = layers, slots, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        # Set by the engine before each forward.
        self.rows: torch.Tensor | slice = slice(0, 0)
        self.row_index = torch.zeros(0, 1, dtype=torch.long)
        self.columns = torch.zeros(0, 1, dtype=torch.long)
        self.width = 0

    def reserve(self, length: int) -> None:
        """Make room for `length` positions per slot (doubling, keeping what is written)."""
        if length <= self.capacity:
            return
        capacity = max(256, self.capacity)
        while capacity < length:
            capacity *= 2
        shape = (self.slots, self.kv_heads, capacity, self.head_dim)
        grown_keys, grown_values = [], []
        for layer in range(self.layers):
            keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
            values = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if self.capacity:
                keys[:, :, : self.capacity] = self.keys[layer]
                values[:, :, : self.capacity] = self.values[layer]
            grown_keys.append(keys)
            grown_values.append(values)
        self.keys, self.values, self.capacity = grown_keys, grown_values, capacity

    def prepare(self, rows: list[int], starts: list[int], width: int) -> None:
        """The next forward runs `rows` (slot numbers), `width` new tokens each written from `starts`."""
        self.reserve(max(starts) + width)
        contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.rows = slice(rows[0], rows[0] + len(rows)) if contiguous else index
        self.row_index = index[:, None]
        self.columns = torch.tensor(starts, dtype=torch.long, device=self.device)[:, None] + torch.arange(width, device=self.device)
        self.width = max(starts) + width

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values at each row's columns; return each row's first `width` positions."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        # (rows, heads, new, dim) -> (rows, new, heads, dim), the layout advanced indexing assigns.
        keys[self.row_index, :, self.columns] = key_states.transpose(1, 2).to(keys.dtype)
        values[self.row_index, :, self.columns] = value_states.transpose(1, 2).to(values.dtype)
        return keys[self.rows, :, : self.width], values[self.rows, :, : self.width]

    def copy(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of slot `source` into slot `target`."""
        for keys, values in zip(self.keys, self.values):
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns in use by the current forward (transformers asks; positions are passed explicitly)."""
        return self.width


@dataclass
class _Slot:
    """A conversation whose keys and values sit in one slot of the cache."""

    ids: list[int] = field(default_factory=list)
    """The tokens whose keys and values are cached, in order."""
    positions: list[int] = field(default_factory=list)
    """For each cached token, the rotary position of a text token that would follow it."""
    image_keys: list[bytes] = field(default_factory=list)
    """The digest of each image among those tokens, in order (`EncodedPrompt.image_keys`)."""
    used: int = 0
    """When the slot last served a request (for least-recently-used reuse)."""
    busy: bool = False

    @property
    def next_position(self) -> int:
        """The rotary position of the next text token."""
        return self.positions[-1] if self.positions else 0

    def truncate(self, length: int) -> None:
        """Keep the first `length` tokens (and the images among them)."""
        del self.ids[length:], self.positions[length:]


@dataclass
class _Row:
    """One request being decoded in a slot."""

    request: Any
    slot: int
    uniforms: torch.Tensor
    """The row's draws, one per token it may write (`row_sampling.draw_uniforms`)."""
    next_token: int = -1
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    peak_batch: int = 1


SHARE_AT_LEAST = 16
"""Copy another slot's keys for a shared prefix only when it is at least this long."""


class CachedEngine:
    """Serves LocalPolicy requests from its queue with per-conversation KV caches and continuous batching."""

    def __init__(self, policy: Any, slots: int) -> None:
        self.policy = policy
        self.model = policy.model
        text = self.model.config.get_text_config()
        self.cache = SlotCache(
            layers=text.num_hidden_layers,
            slots=slots,
            kv_heads=text.num_key_value_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            dtype=next(self.model.parameters()).dtype,
            device=policy.device,
        )
        self.slots = [_Slot() for _ in range(slots)]
        self.clock = 0
        self.weights_version = -1
        self.prefill_tokens = 0
        """Tokens run through the decoder to prefill prompts."""
        self.reused_tokens = 0
        """Prompt tokens whose keys and values came from the cache instead."""
        self.decode_steps = 0
        """Forwards of one token per row."""

    # ------------------------------------------------------------ the loop

    def serve(self, requests: queue.Queue, stop_marker: object, wait_s: float) -> None:
        """Run until `stop_marker` comes through the queue and every request before it is done."""
        waiting: list[Any] = []
        rows: dict[int, _Row] = {}
        stopping = False
        while True:
            if not stopping:
                stopping = self._take(requests, stop_marker, waiting, block=not rows and not waiting, wait_s=wait_s)
            if waiting:
                self._admit(waiting, rows)
            if rows:
                self._step(rows)
            elif stopping and not waiting:
                return

    def _take(self, requests: queue.Queue, stop_marker: object, waiting: list[Any], block: bool, wait_s: float) -> bool:
        """Move queued requests to `waiting`; True when the stop marker came."""
        if block:
            first = requests.get()
            if first is stop_marker:
                return True
            waiting.append(first)
            deadline = time.perf_counter() + wait_s
            while True:
                remaining = deadline - time.perf_counter()
                try:
                    item = requests.get(timeout=remaining) if remaining > 0 else requests.get_nowait()
                except queue.Empty:
                    return False
                if item is stop_marker:
                    return True
                waiting.append(item)
        while True:
            try:
                item = requests.get_nowait()
            except queue.Empty:
                return False
            if item is stop_marker:
                return True
            waiting.append(item)

    # ------------------------------------------------------------ admitting requests

    def _admit(self, waiting: list[Any], rows: dict[int, _Row]) -> None:
        """Give waiting requests slots (as many as are free) and prefill them into the batch."""
        version = self._weights_version()
        if version != self.weights_version:
            self.weights_version = version
            for number in range(len(self.slots)):
                if not self.slots[number].busy:
                    self._reset(number)
        joining: list[tuple[Any, int, int]] = []  # (request, slot, cached prefix length)
        deferred: list[Any] = []
        while waiting:
            request = waiting[0]
            # A prompt that shares a long prefix with one prefilled in this batch (the n rollouts of
            # a question start alike) waits one step and copies it, instead of computing it again.
            in_batch = max((shared_prefix(other.prompt.input_ids, other.prompt.image_key, request.prompt, images=len(other.prompt.images))
                            for other, _, _ in joining), default=0)
            if in_batch >= SHARE_AT_LEAST and in_batch > self._best_cached(request.prompt):
                deferred.append(waiting.pop(0))
                continue
            placed = self._place(request)
            if placed is None:
                break  # every slot is decoding; the rest wait for one to finish
            joining.append((waiting.pop(0), *placed))
        waiting[:0] = deferred
        if not joining:
            return
        self.policy.batches_run += 1
        self.policy.requests_run += len(joining)
        try:
            started = self._prefill(joining)
        except Exception as error:  # noqa: BLE001 - every failure must reach its caller
            for _, number, _ in joining:
                self._reset(number)
                self.slots[number].busy = False
            if len(joining) == 1:
                joining[0][0].future.set_exception(PolicyError(f"local generation failed: {type(error).__name__}: {error}"))
                return
            # Run each alone so that a failure lands on the request that caused it.
            for request, _, _ in joining:
                self._admit([request], rows)
            return
        for row in started:
            rows[row.slot] = row
        self._finish_done(rows, started)

    def _place(self, request: Any) -> tuple[int, int] | None:
        """(slot, cached length) for a request, or None while every slot is decoding.

        The slot is the idle one whose whole conversation the prompt continues; failing that, a
        free slot or the least recently used idle one, seeded with the longest prefix the prompt
        shares with any slot (the system prompt, or a whole first prompt of the same question).
        """
        prompt = request.prompt
        target, cached = None, 0
        for number, slot in enumerate(self.slots):
            if not slot.busy and len(slot.ids) > cached and self._shared(slot, prompt, len(slot.ids)) == len(slot.ids):
                target, cached = number, len(slot.ids)
        if target is None:
            idle = [number for number, slot in enumerate(self.slots) if not slot.busy]
            if not idle:
                return None
            target = min(idle, key=lambda number: (bool(self.slots[number].ids), self.slots[number].used))
            source, cached = None, 0
            for number, slot in enumerate(self.slots):
                shared = self._shared(slot, prompt, len(slot.ids))
                if shared > cached:
                    source, cached = number, shared
            if cached < SHARE_AT_LEAST:
                self._reset(target)
                cached = 0
            elif source != target:
                self._copy(source, target, cached)
            self.slots[target].truncate(cached)
            self.slots[target].image_keys = [prompt.image_key(index) for index in range(self._images_before(prompt, cached))]
        self.clock += 1
        self.slots[target].used = self.clock
        self.slots[target].busy = True
        return target, cached

    def _shared(self, slot: _Slot, prompt: Any, limit: int) -> int:
        """How many leading tokens of `prompt` the slot's cache holds (at most `limit`)."""
        return shared_prefix(slot.ids, slot.image_keys.__getitem__, prompt, limit, len(slot.image_keys))

    def _best_cached(self, prompt: Any) -> int:
        """The longest prefix of `prompt` any slot holds."""
        return max((self._shared(slot, prompt, len(slot.ids)) for slot in self.slots), default=0)

    @staticmethod
    def _images_before(prompt: Any, length: int) -> int:
        return sum(1 for _, end in prompt.image_spans if end <= length)

    def _copy(self, source: int, target: int, length: int) -> None:
        """Give `target` the first `length` cached tokens of `source`."""
        self.cache.copy(source, target, length)
        self.slots[target].ids = self.slots[source].ids[:length]
        self.slots[target].positions = self.slots[source].positions[:length]

    def _reset(self, number: int) -> None:
        slot = self.slots[number]
        slot.ids, slot.positions, slot.image_keys = [], [], []

    def _prefill(self, joining: list[tuple[Any, int, int]]) -> list[_Row]:
        """Run the new part of each joining prompt through the model; sample each one's first token."""
        policy = self.policy
        image_token = policy.encoder.image_token_id
        suffixes, starts, positions, pixels, grids = [], [], [], [], []
        for request, number, cached in joining:
            slot, prompt = self.slots[number], request.prompt
            suffix = torch.tensor(prompt.input_ids[cached:], dtype=torch.long)
            seen = len(slot.image_keys)
            new_grids = prompt.image_grid_thw[seen:] if prompt.image_grid_thw is not None else None
            if new_grids is not None and len(new_grids):
                offset = int(prompt.image_grid_thw[:seen].prod(dim=1).sum()) if seen else 0
                pixels.append(prompt.pixel_values[offset:])
                grids.append(new_grids)
            suffixes.append(suffix)
            starts.append(cached)
            positions.append(suffix_positions(self.model, suffix, new_grids, image_token, slot.next_position))
        width = max(len(suffix) for suffix in suffixes)
        batch = len(joining)
        input_ids = torch.full((batch, width), policy.pad_id, dtype=torch.long)
        position_ids = torch.zeros((3, batch, width), dtype=torch.long)
        for row, (suffix, place) in enumerate(zip(suffixes, positions)):
            input_ids[row, : len(suffix)] = suffix
            position_ids[:, row, : len(suffix)] = place
            # Padding continues the row's positions; its keys are never attended to.
            position_ids[:, row, len(suffix) :] = place.max() + 1
        numbers = [number for _, number, _ in joining]
        pixel_values = torch.cat(pixels) if pixels else None
        image_grid_thw = torch.cat(grids) if grids else None
        hidden = self._forward(numbers, starts, input_ids, position_ids, pixel_values, image_grid_thw)
        last = torch.tensor([len(suffix) - 1 for suffix in suffixes])
        logits = self._logits(hidden[torch.arange(batch), last])
        rows = []
        for row, (request, number, cached) in enumerate(joining):
            slot, prompt = self.slots[number], request.prompt
            slot.ids = list(prompt.input_ids)
            slot.positions += (positions[row].max(dim=0).values.cummax(dim=0).values + 1).tolist()
            slot.image_keys = [prompt.image_key(index) for index in range(len(prompt.images))]
            self.reused_tokens += cached
            self.prefill_tokens += len(suffixes[row])
            rows.append(_Row(request, number, draw_uniforms(request.seed, request.sampling.max_new_tokens), peak_batch=batch))
        self._sample_into(rows, logits)
        return rows

    # ------------------------------------------------------------ decoding

    def _step(self, rows: dict[int, _Row]) -> None:
        """Feed every row its last sampled token and sample the next."""
        active = [rows[number] for number in sorted(rows)]
        # Run the whole span of slots from the first active to the last: a slice of the cache is
        # a view, where picking rows would copy every key. Idle slots in the span write one
        # throwaway key past their conversation, which their next token overwrites.
        span = list(range(active[0].slot, active[-1].slot + 1))
        next_tokens = {row.slot: row.next_token for row in active}
        input_ids = torch.tensor([[next_tokens.get(number, self.policy.pad_id)] for number in span], dtype=torch.long)
        starts = [len(self.slots[number].ids) for number in span]
        position_ids = torch.tensor([self.slots[number].next_position for number in span], dtype=torch.long).view(1, -1, 1).expand(3, -1, 1)
        try:
            hidden = self._forward(span, starts, input_ids, position_ids, None, None)
            picked = torch.tensor([row.slot - span[0] for row in active])
            logits = self._logits(hidden[picked, -1])
        except Exception as error:  # noqa: BLE001 - every failure must reach its caller
            for row in active:
                self._reset(row.slot)
                self.slots[row.slot].busy = False
                row.request.future.set_exception(PolicyError(f"local generation failed: {type(error).__name__}: {error}"))
            rows.clear()
            return
        self.decode_steps += 1
        for row in active:
            slot = self.slots[row.slot]
            slot.ids.append(row.next_token)
            slot.positions.append(slot.next_position + 1)
            row.peak_batch = max(row.peak_batch, len(active))
        self.policy.largest_batch = max(self.policy.largest_batch, len(active))
        self._sample_into(active, logits)
        self._finish_done(rows, active)

    def _forward(
        self,
        numbers: list[int],
        starts: list[int],
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
    ) -> torch.Tensor:
        """Hidden states of the new tokens of slots `numbers`, each written after its first `starts[i]` keys."""
        device = self.policy.device
        width = input_ids.shape[1]
        self.cache.prepare(numbers, starts, width)
        keys = torch.arange(self.cache.width, device=device)
        visible = torch.tensor(starts, device=device)[:, None] + torch.arange(width, device=device)[None] + 1
        allowed = keys[None, None, :] < visible[:, :, None]
        dtype = self.cache.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
        inputs: dict[str, Any] = {}
        if pixel_values is not None:
            inputs["pixel_values"] = pixel_values.to(device, dtype)
            inputs["image_grid_thw"] = image_grid_thw.to(device)
        with torch.inference_mode():
            output = self.model.model(
                input_ids=input_ids.to(device),
                position_ids=position_ids.to(device),
                attention_mask={"full_attention": mask, "sliding_attention": mask},
                cache=self.cache,
                use_cache=True,
                **inputs,
            )
        return output.last_hidden_state

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.lm_head(hidden).float()

    def _sample_into(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Choose each row's next token from its logits by its own settings; record the raw log-prob."""
        uniforms = torch.stack([row.uniforms[len(row.token_ids)] for row in rows])
        temperatures = [row.request.sampling.temperature for row in rows]
        top_ps = [row.request.sampling.top_p for row in rows]
        chosen, picked = choose_tokens(logits, self.policy.suppressed, temperatures, top_ps, uniforms)
        for row, token, value in zip(rows, chosen, picked):
            row.next_token = token
            row.token_ids.append(token)
            row.logprobs.append(value)

    def _finish_done(self, rows: dict[int, _Row], candidates: list[_Row]) -> None:
        """Hand back the rows whose turn ended (end token, stop string or token limit)."""
        policy = self.policy
        for row in candidates:
            reason = stop_reason(row.token_ids, row.request.sampling, policy.end_ids, policy.encoder.decode)
            if reason is None:
                continue
            del rows[row.slot]
            self.slots[row.slot].busy = False
            row.request.future.set_result(policy._result(row.request, row.token_ids, row.logprobs, reason, row.peak_batch))

    def _weights_version(self) -> int:
        return sum(parameter._version for parameter in self.model.parameters())


def shared_prefix(ids: list[int], image_key: Callable[[int], bytes], prompt: Any, limit: int | None = None, images: int | None = None) -> int:
    """How many leading tokens `prompt` shares with a sequence (`ids`, its images' digests by `image_key`), never all of the prompt.

    Image pads are the same ids for any image of a size, so an image counts as shared only when
    its digest (`EncodedPrompt.image_keys`: grid and pixels) is the prompt's, and a shared prefix
    never ends inside an image. `images` bounds how many images the sequence holds (default: no bound).
    """
    theirs = prompt.input_ids
    limit = min(len(ids) if limit is None else limit, len(ids), len(theirs) - 1)
    if limit <= 0:
        return 0
    if theirs[:limit] == ids[:limit]:
        shared = limit
    else:
        low, high = 0, limit  # the first `low` ids agree, the first `high` do not
        while high - low > 1:
            middle = (low + high) // 2
            if theirs[:middle] == ids[:middle]:
                low = middle
            else:
                high = middle
        shared = low
    for index, (start, end) in enumerate(prompt.image_spans):
        if start >= shared:
            break
        same = (images is None or index < images) and image_key(index) == prompt.image_key(index)
        if not same or end > shared:
            return start
    return shared


def stop_reason(token_ids: list[int], sampling: Any, end_ids: set[int], decode: Callable[..., str]) -> str | None:
    """Why a turn whose sampled ids are `token_ids` ends now: "end", "stop", "length", or None to go on."""
    if token_ids[-1] in end_ids:
        return "end"
    stops = [stop for stop in sampling.stop if stop]
    if stops:
        # Each token holds at least one byte, so a stop string completed by the newest token lies
        # within its byte length in tokens; earlier occurrences would have stopped earlier.
        window = min(len(token_ids), max(len(stop.encode("utf-8")) for stop in stops) + 1)
        tail = decode(token_ids[-window:], skip_special_tokens=False)
        if any(stop in tail for stop in stops):
            return "stop"
    if len(token_ids) >= sampling.max_new_tokens:
        return "length"
    return None
