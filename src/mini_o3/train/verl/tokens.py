"""One episode's token ids built turn by turn: the prompt the server sees is always the ids so far.

The layout is `mini_o3.train.tokenize`'s (the TRL path) and `PromptEncoder.encode`'s (the local
policies'), built incrementally instead of once at the end, in the checkpoint's family markup
(the encoder's backbone): non-assistant messages are rendered one at a time by the family's
`render_messages` with each image pad expanded to the processor's count, an assistant turn is
the family's assistant header (`<|im_start|>assistant\\n`, on Qwen3.5 followed by `<think>\\n`)
then exactly the ids the server sampled (mask 1), closed as `PromptEncoder.sampled_turn` closes
it (`\\n` after a sampled `<|im_end|>`, else `<|im_end|>\\n`: a zoom stops at `</grounding>`).
Everything the model did not write has mask 0 and log-prob 0.0. The sampled ids are never
re-tokenised, so the ids trained on are the ids the server conditioned on, turn after turn.
"""

from __future__ import annotations

from typing import Any, Sequence

from mini_o3.agent.images import as_pil
from mini_o3.models.backbone import VISION_TOKENS
from mini_o3.policies.local import PromptEncoder


class EpisodeTokens:
    """The prompt, the response, its mask and log-probs, and the images, of one episode so far."""

    def __init__(self, encoder: PromptEncoder, tokenizer: Any) -> None:
        self.encoder = encoder
        self.im_end_id = encoder.im_end_id
        self.vision_ids = {int(i) for i in (tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS) if i is not None}
        self.vision_ids.discard(getattr(tokenizer, "unk_token_id", None))
        self._header = encoder.assistant_header()
        self._last_turn: list[int] = []
        self.prompt_ids: list[int] = []
        self.response_ids: list[int] = []
        self.response_mask: list[int] = []
        self.logprobs: list[float] | None = []
        self.images: list[Any] = []
        self._seen = 0
        self._open_turn = False

    @property
    def ids(self) -> list[int]:
        """Prompt and response ids so far: what the next turn is generated from."""
        return self.prompt_ids + self.response_ids

    def sync(self, messages: Sequence[dict[str, Any]]) -> None:
        """Append the messages the environment added since the last call, and the next turn's header."""
        new = list(messages[self._seen :])
        if not new and self.prompt_ids and not self._open_turn:
            return  # already synced (the first prompt is encoded before the episode starts)
        self._seen = len(messages)
        pieces: list[int] = []
        for message in new:
            if message["role"] == "assistant":
                continue  # its ids went in with add_sampled
            if self._open_turn:
                pieces += self._closer()
                self._open_turn = False
            pieces += self._render(message)
        if self._open_turn:
            raise ValueError("a new turn was asked for before the environment answered the last one")
        pieces += self._header
        if not self.prompt_ids:
            self.prompt_ids = pieces
        else:
            self._extend(pieces, model_written=False)

    def add_sampled(self, token_ids: Sequence[int], logprobs: Sequence[float] | None) -> None:
        """Append one turn's sampled ids (mask 1) and their log-probs."""
        if not self.prompt_ids:
            raise ValueError("sync() the first messages before adding a turn")
        if self.vision_ids.intersection(token_ids):
            raise ValueError("the server sampled a vision token (<|image_pad|> and kin); the images would no longer line up with their pads")
        if logprobs is not None and len(logprobs) != len(token_ids):
            raise ValueError(f"{len(logprobs)} log-probs for {len(token_ids)} sampled tokens")
        self._extend(list(token_ids), model_written=True, logprobs=logprobs)
        self._last_turn = list(token_ids)
        self._open_turn = True

    def _closer(self) -> list[int]:
        # What follows the sampled ids in the local policies' prompts and in training (one rule).
        closed, _ = self.encoder.sampled_turn(self._last_turn)
        return closed[len(self._last_turn) :]

    def _render(self, message: dict[str, Any]) -> list[int]:
        ids = self.encoder.encode_text(self.encoder.render([message], add_generation_prompt=False))
        images = [as_pil(part["image"]) for part in message["content"] if part["type"] == "image"]
        if sum(1 for token in ids if token == self.encoder.image_token_id) != len(images):
            raise ValueError("a message holds a literal <|image_pad|> in its text")
        counts = iter(self.encoder.image_tokens(*image.size) for image in images)
        out: list[int] = []
        for token in ids:
            out.extend([token] * next(counts) if token == self.encoder.image_token_id else [token])
        self.images.extend(images)
        return out

    def _extend(self, ids: list[int], model_written: bool, logprobs: Sequence[float] | None = None) -> None:
        self.response_ids += ids
        self.response_mask += [1 if model_written else 0] * len(ids)
        if self.logprobs is None:
            return
        if model_written and logprobs is None:
            self.logprobs = None  # one turn without log-probs: report none rather than a mix
        else:
            self.logprobs += list(logprobs) if model_written else [0.0] * len(ids)
