"""The episode -> training contract: token ids, a mask of model-written tokens, and every image.

A conversation is encoded message by message, exactly as the checkpoint's family renders it
(`models.backbone.Backbone.render_messages`, as the policies tokenise their prompts), with each
`<|image_pad|>` expanded to the number of tokens the image processor gives that image. On
Qwen2.5-VL and Qwen3-VL (the layout below):

    <|im_start|>system\\n...<|im_end|>\\n                         mask 0
    <|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>\\n{question}<|im_end|>\\n  mask 0
    <|im_start|>assistant\\n                                     mask 0   (the generation prompt)
    {assistant text}                                            mask 1
    <|im_end|>                                                  see below
    \\n                                                          mask 0
    <|im_start|>user\\n{observation or error turn}<|im_end|>\\n   mask 0
    ...

On Qwen3.5 the assistant header is `<|im_start|>assistant\n<think>\n` (its template opens the
thought; mask 0) and an SFT text's own leading "<think>" is dropped (`Backbone.assistant_body`).

Which tokens carry loss (`assistant_mask` = 1) - only the ones the model writes:
- SFT (`encode_messages`): each assistant text and its closing `<|im_end|>`, the Qwen
  convention (LLaMA-Factory, TRL's assistant-only loss): a model that never learns to write
  `<|im_end|>` after an answer never stops. The "\\n" after it is template, not trained.
- RL (`encode_episode`): exactly the tokens the policy sampled. Where a turn carries
  `TurnRecord.token_ids` (local policies), those ids are used as they are - never the
  re-tokenised text - so the ids trained on are the ids sampled; they include the end token
  when the model wrote one. A zoom turn stops at `</grounding>`, so its `<|im_end|>` is put in
  by the environment and masked. Turns without token ids (scripted, oracle or HTTP policies)
  are tokenised from their text, and their `<|im_end|>` counts as written unless the turn
  stopped at `</grounding>` or ran out of tokens.
Every turn is closed as the rendered conversation closes it, so the RL ids decode to
`Trajectory.rendered()` with the image pads expanded (as long as the policy's recorded text is
the decoding of its sampled ids).

Per image, in order (the original, then the crops): `pixel_values` rows and an
`image_grid_thw` row; `mm_token_type_ids` marks the image pads (1) so that Qwen2.5-VL uses its
multimodal rotary positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from mini_o3.agent import protocol
from mini_o3.models.backbone import Backbone
from mini_o3.policies.local import END_TOKENS, PromptEncoder

IMAGE_PAD = "<|image_pad|>"
IM_END = "<|im_end|>"


@dataclass
class EncodedConversation:
    """One conversation as training inputs."""

    input_ids: list[int]
    assistant_mask: list[int]
    """1 on tokens the model wrote (see the module docstring), else 0."""
    prompt_length: int
    """Tokens up to and including the first `<|im_start|>assistant\\n` (the first prompt)."""
    image_token_id: int
    pixel_values: torch.Tensor | None = None
    """(patches, features) for every image, in order; None without images or when not computed."""
    image_grid_thw: torch.Tensor | None = None
    """(images, 3): the (t, h, w) patch grid of each image."""
    image_tokens: list[int] = field(default_factory=list)
    """How many `<|image_pad|>` tokens each image took."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_images(self) -> int:
        """Images in the conversation."""
        return len(self.image_tokens)

    def mm_token_type_ids(self) -> list[int]:
        """1 where the token is an image pad, else 0."""
        return [1 if token == self.image_token_id else 0 for token in self.input_ids]


class ConversationEncoder:
    """Encodes chat conversations and episodes for training with one tokenizer and image processor.

    Safe to use from many threads (the tokenizer is the policies' private Rust copy).
    """

    def __init__(self, tokenizer: Any, image_processor: Any, backbone: Backbone | None = None) -> None:
        self.prompt_encoder = PromptEncoder(tokenizer, image_processor, backbone=backbone)
        self.backbone = self.prompt_encoder.backbone
        self.image_processor = image_processor
        self.merge_size = self.prompt_encoder.merge_size
        self.image_token_id = self.prompt_encoder.image_token_id
        self.im_end_id = _single_id(tokenizer, IM_END)
        self.end_ids = {_single_id(tokenizer, token) for token in END_TOKENS}
        self._newline = self.prompt_encoder.encode_text("\n")
        self._close = self.prompt_encoder.encode_text(IM_END + "\n")
        self._headers: dict[str, list[int]] = {}

    # ------------------------------------------------------------ public

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids with every special token kept (the inverse of encoding)."""
        return self.prompt_encoder.decode(list(ids), skip_special_tokens=False)

    def encode_messages(
        self,
        messages: list[dict[str, Any]],
        images: Sequence[Any] | None = None,
        with_pixels: bool = True,
    ) -> EncodedConversation:
        """Encode a chat conversation for SFT: loss on each assistant text and its `<|im_end|>`.

        Image parts are taken in order from `images` when given, else from the parts' own
        "image" values (PIL images or `mini_o3.agent.env.View`s). `with_pixels=False` skips the image
        processor (lengths only).
        """
        return self._encode(messages, images, assistant_turns=None, with_pixels=with_pixels)

    def encode_episode(self, episode: Any, with_pixels: bool = True) -> EncodedConversation:
        """Encode a finished episode (`agent.Episode`) for RL: loss on the sampled tokens only."""
        trajectory = episode.trajectory
        shown = [view.image for view in episode.views]
        if len(shown) != len(trajectory.views):
            raise ValueError(
                f"episode {trajectory.sample_id} has {len(trajectory.views)} view records but {len(shown)} images; "
                "encode the Episode that run_episode returned, not a trajectory read back from disk"
            )
        messages = trajectory.messages(images=shown)
        return self._encode(messages, None, assistant_turns=trajectory.turns, with_pixels=with_pixels)

    def expanded_rendering(self, trajectory: Any, image_tokens: Sequence[int]) -> str:
        """The trajectory rendered in the family's markup with each image's single pad expanded to its token count."""
        pieces = self.backbone.render_messages(trajectory.messages(), add_generation_prompt=False).split(IMAGE_PAD)
        if len(pieces) - 1 != len(image_tokens):
            raise ValueError(f"the rendering holds {len(pieces) - 1} image pads for {len(image_tokens)} images")
        out = [pieces[0]]
        for count, piece in zip(image_tokens, pieces[1:]):
            out.append(IMAGE_PAD * count + piece)
        return "".join(out)

    # ------------------------------------------------------------ encoding

    def _encode(
        self,
        messages: list[dict[str, Any]],
        images: Sequence[Any] | None,
        assistant_turns: Sequence[Any] | None,
        with_pixels: bool,
    ) -> EncodedConversation:
        shown = self._images(messages, images)
        grids = [self._grid(image) for image in shown] if not with_pixels else None
        pixel_values = image_grid_thw = None
        if with_pixels and shown:
            output = self.image_processor(images=list(shown), return_tensors="pt")
            pixel_values = output["pixel_values"].float()
            image_grid_thw = output["image_grid_thw"].long()
            grids = [tuple(int(value) for value in row) for row in image_grid_thw]
        counts = [t * h * w // self.merge_size**2 for t, h, w in grids or []]
        image_counts = iter(counts)

        ids: list[int] = []
        mask: list[int] = []
        prompt_length = -1
        assistant_index = 0
        for message in messages:
            role = message["role"]
            if role != "assistant":
                text = self.backbone.render_messages([message], add_generation_prompt=False)
                piece = self._expand(self.prompt_encoder.encode_text(text), image_counts)
                ids += piece
                mask += [0] * len(piece)
                continue
            header = self._header(role)
            ids += header
            mask += [0] * len(header)
            if prompt_length < 0:
                prompt_length = len(ids)
            text = "".join(part["text"] for part in message["content"] if part["type"] == "text")
            if assistant_turns is None:
                body, body_mask = self._sft_turn(self.backbone.assistant_body(text))
            else:
                if assistant_index >= len(assistant_turns):
                    raise ValueError("more assistant messages than recorded turns")
                turn = assistant_turns[assistant_index]
                body, body_mask = self._rl_turn(turn)
            ids += body
            mask += body_mask
            assistant_index += 1
        if prompt_length < 0:
            prompt_length = len(ids)
        leftover = next(image_counts, None)
        if leftover is not None:
            raise ValueError(f"{len(counts)} images for fewer image placeholders in the conversation")
        return EncodedConversation(
            input_ids=ids,
            assistant_mask=mask,
            prompt_length=prompt_length,
            image_token_id=self.image_token_id,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            image_tokens=counts,
        )

    def _sft_turn(self, text: str) -> tuple[list[int], list[int]]:
        body = self.prompt_encoder.encode_text(text)
        if self.image_token_id in body:
            raise ValueError("an assistant turn contains the literal <|image_pad|> token; it cannot be trained on")
        return body + self._close, [1] * (len(body) + 1) + [0] * (len(self._close) - 1)

    def _rl_turn(self, turn: Any) -> tuple[list[int], list[int]]:
        sampled = getattr(turn, "token_ids", None)
        if sampled:
            if self.image_token_id in sampled:
                raise ValueError(
                    "the policy sampled <|image_pad|> inside an assistant turn; the generation engine must suppress "
                    "the vision tokens (LocalPolicy does), or the image features cannot line up with the pads"
                )
            # The very ids and closer the policy's next prompt continued from (PromptEncoder.encode).
            return self.prompt_encoder.sampled_turn(sampled)
        # As the policy's prompt renders a text-only turn: without the opener the family's header wrote.
        body = self.prompt_encoder.encode_text(self.backbone.assistant_body(turn.text))
        written_end = turn.finish_reason != "length" and not turn.text.rstrip().endswith(protocol.STOP_STRING)
        return body + self._close, [1] * len(body) + [1 if written_end else 0] + [0] * (len(self._close) - 1)

    def _header(self, role: str) -> list[int]:
        if role not in self._headers:
            self._headers[role] = self.prompt_encoder.encode_text(self.backbone.assistant_header if role == "assistant" else f"<|im_start|>{role}\n")
        return self._headers[role]

    def _expand(self, ids: list[int], counts: Any) -> list[int]:
        if self.image_token_id not in ids:
            return ids
        out: list[int] = []
        for token in ids:
            if token == self.image_token_id:
                count = next(counts, None)
                if count is None:
                    raise ValueError("the conversation has more image placeholders than images")
                out.extend([token] * count)
            else:
                out.append(token)
        return out

    def _grid(self, image: Any) -> tuple[int, int, int]:
        width, height = image.size
        patches = self.image_processor.get_number_of_image_patches(height, width, {})
        # Only the product matters for the pad count; t is 1 for still images.
        return 1, patches, 1

    @staticmethod
    def _images(messages: list[dict[str, Any]], images: Sequence[Any] | None) -> list[Any]:
        parts = [part for message in messages for part in message["content"] if part["type"] == "image"]
        if images is not None:
            if len(images) != len(parts):
                raise ValueError(f"the conversation has {len(parts)} image parts but {len(images)} images were given")
            return [_pil(image) for image in images]
        return [_pil(part.get("image")) for part in parts]


def _pil(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    shown = getattr(image, "image", None)
    if isinstance(shown, Image.Image):
        return shown
    if isinstance(image, (str, Path)):
        from mini_o3.agent.images import open_image

        return open_image(image)
    raise TypeError(f"an image must be a PIL image, a mini_o3.agent.env.View or a path, got {type(image).__name__}")


def _single_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"the tokenizer has no {token} token; a Qwen2.5-VL-class tokenizer is needed")
    return int(token_id)
