"""`mini-o3 pretrain`: teach the tiny Qwen2.5-VL to see the synthetic grid world before any search.

The stand-in for Qwen2.5-VL's pre-training. A random 1M-parameter model learns the grid-scan
search by SFT, but slowly, and what is slow is seeing: telling a crop that holds the one
coloured shape from one that holds only grey shapes, and naming the colour. This stage trains
exactly that on single-answer conversations cut from grid scenes (`mini_o3.data.generate`'s
grid family), rendered with `mini_o3.agent.protocol` so the chat format and the `<think>` /
`<answer>` tags come for free:

- describe: one cell crop, shown as a zoom is (`images.resize_for_model`, NEAREST), and
  "Is there a shape that is not grey?" -> `<think>Found a red shape.</think>` + `<answer>red</answer>`,
  or `<think>No coloured shape.</think>` + `<answer>none</answer>`; half the crops hold the shape.
- context: the same judgement inside a search: system prompt, the whole grid and the demo's
  question, a zoom to a cell, the observation turn with its crop; the loss covers only the
  start of the next assistant turn (`<think>Found a red shape.` / `<think>No coloured shape.`),
  so no action format is taught, only looking at the newest image.
- recognise: the target's cell crop with the demo's own question and fixed options
  (A) red (B) green (C) blue (D) yellow -> `<think>Found a red shape.</think>` + `<answer>A</answer>`.
- locate: the whole grid as the first view, "which cell holds it?" with one option per cell
  (from scratch this may stay at chance: see DESIGN.md "Known facts").

Every example is drawn from (seed, step, row), so nothing is held in memory and a resumed run
sees the same stream as one that never stopped. Held-out examples come from another seed
range. Accuracy is teacher-forced: an example counts when the argmax of every supervised
token is right, which is exactly when greedy decoding writes the whole target.

Outputs in OUT (itself a loadable checkpoint for `tiny.load_checkpoint` / `LocalPolicy`):
the model, tokenizer and image-processor files (overwritten in place, file by file, with
atomic renames), `trainer_state/state.pt` (step and optimizer), `pretrain_config.json`,
`pretrain_log.jsonl` (train and eval records), `mini_o3_episode.json` (the views it was trained
on, which search and eval then use) and `PRETRAIN.md` (how it was made).
Rerun the same command to resume; `--steps` and the other run-length settings may change.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from rich.console import Console
from rich.progress import TextColumn

from mini_o3.agent import protocol
from mini_o3.data.generate import make_problem
from mini_o3.data.problems import GridConfig, SynthOptions
from mini_o3.data.scene import render
from mini_o3.agent.images import ResizePolicy, resize_for_model

CONFIG_FILE = "pretrain_config.json"
LOG_FILE = "pretrain_log.jsonl"
STATE_DIR = "trainer_state"
STATE_FILE = "state.pt"
CARD_FILE = "PRETRAIN.md"
WEIGHTS_FILE = "model.safetensors"

TASKS = ("describe", "context", "recognise", "locate")
DESCRIBE_QUESTION = "Is there a shape that is not grey in this image? Name its colour, or answer none."
LOCATE_QUESTION = "Which cell holds the only shape that is not grey? The cells are numbered row by row from the top-left."
NONE_ANSWER = "none"
_EVAL_SEED_OFFSET = 1_000_003
"""Held-out examples use seed + this offset, so they never share a scene with training."""
_RUN_LENGTH_FIELDS = {"steps", "max_minutes", "threads", "eval_every", "save_every_s", "log_every", "n_eval", "out", "eval_batch_size"}
"""Settings a resumed run may change; every other one must match the saved config."""


def found_text(colour: str) -> str:
    """What the model says on seeing the coloured shape."""
    return f"Found a {colour} shape."


NOT_FOUND_TEXT = "No coloured shape."


class PretrainError(ValueError):
    """A pretraining run that cannot start as asked."""


@dataclass
class PretrainConfig:
    """Everything about a pretraining run."""

    out: str = "checkpoints/base-tiny"
    """The checkpoint directory (written and resumed in place)."""
    steps: int = 6000
    """Optimizer steps in all (a resumed run counts from where it stopped)."""
    batch_size: int = 16
    """Examples per step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW, betas 0.9/0.98, no weight decay)."""
    warmup_steps: int = 50
    """Linear warmup steps."""
    decay_fraction: float = 0.25
    """The last share of `steps` over which the rate falls (cosine) to `min_lr_ratio` x lr."""
    min_lr_ratio: float = 0.1
    """The final learning rate as a share of `lr`."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    seed: int = 0
    """Seeds the random model and the example stream."""
    model_size: str = "tiny"
    """`mini_o3.models.tiny` size built when OUT holds no checkpoint yet."""
    family: str = "qwen2.5-vl"
    """The model family built when OUT holds no checkpoint yet: qwen2.5-vl, qwen3-vl or qwen3.5."""
    grids: tuple[int, ...] = (2, 3, 4)
    """Grid sides drawn per scene (G x G cells)."""
    image_sizes: tuple[int, ...] = (448, 672, 896)
    """Scene long sides in pixels, drawn per scene."""
    target_fraction: tuple[float, float] = (0.25, 0.5)
    """Range of the coloured shape's side as a share of its cell's side."""
    distractor_density: tuple[float, float] = (0.5, 3.0)
    """Range of the mean number of grey shapes per cell."""
    view_px: int = 112
    """Side of the square every view is shown at (max pixels view_px^2), like the demo's zooms."""
    jitter: float = 0.03
    """Each crop edge moves by up to this share of the cell side, as a policy's boxes would."""
    weight_describe: float = 0.4
    """Share of describe examples (one crop: which colour, or none)."""
    weight_context: float = 0.25
    """Share of context examples (the describe judgement after a zoom, inside the search prompt)."""
    weight_recognise: float = 0.25
    """Share of recognise examples (the target's crop, the demo's multiple-choice question)."""
    weight_locate: float = 0.1
    """Share of locate examples (the whole grid: which cell holds the shape)."""
    positive_share: float = 0.5
    """Share of describe and context crops that hold the coloured shape."""
    n_eval: int = 64
    """Held-out examples per eval group."""
    eval_every: int = 200
    """Steps between evaluations (and one at the start and the end)."""
    eval_batch_size: int = 32
    """Examples per forward pass at evaluation."""
    log_every: int = 25
    """Steps between train records (mean loss since the last one)."""
    save_every_s: float = 300.0
    """Seconds between checkpoints (and one at the end or on SIGTERM / Ctrl-C)."""
    max_minutes: float = 0.0
    """Stop (and save) after this many minutes of this invocation; 0 for no limit."""
    threads: int = 1
    """torch CPU threads."""

    def __post_init__(self) -> None:
        self.grids = tuple(int(g) for g in self.grids)
        self.image_sizes = tuple(int(s) for s in self.image_sizes)
        self.target_fraction = tuple(float(v) for v in self.target_fraction)  # type: ignore[assignment]
        self.distractor_density = tuple(float(v) for v in self.distractor_density)  # type: ignore[assignment]
        if self.steps < 0 or self.batch_size < 1:
            raise PretrainError(f"steps must be >= 0 and batch_size >= 1, got {self.steps} and {self.batch_size}")
        if not self.grids or min(self.grids) < 1 or max(self.grids) > 5:
            raise PretrainError(f"grids must be sides between 1 and 5, got {self.grids}")
        if self.view_px < 56:
            raise PretrainError(f"view_px must be at least 56, got {self.view_px}")
        if min(self.task_weights().values()) < 0 or sum(self.task_weights().values()) <= 0:
            raise PretrainError(f"task weights must be >= 0 with a positive sum, got {self.task_weights()}")

    def task_weights(self) -> dict[str, float]:
        """Weight of each task in the training mix."""
        return {task: float(getattr(self, f"weight_{task}")) for task in TASKS}

    def episode_settings(self) -> Any:
        """What the checkpoint remembers of how it sees (mini_o3_episode.json): views of at most view_px^2 pixels."""
        from mini_o3.models.episode_settings import EpisodeSettings

        resize = self.resize()
        return EpisodeSettings(view_max_pixels=resize.max_pixels, view_min_pixels=resize.min_pixels, written_by="pretrain")

    def resize(self) -> ResizePolicy:
        """How views are shown: squares at view_px, as the demo's ResizePolicy does."""
        return ResizePolicy(max_pixels=self.view_px * self.view_px, min_pixels=min(3136, self.view_px * self.view_px))


# ---------------------------------------------------------------- examples


@dataclass
class Example:
    """One conversation to learn from: messages, and the assistant text the loss covers."""

    task: str
    """describe_pos, describe_neg, context_pos, context_neg, recognise or locate."""
    messages: list[dict[str, Any]]
    """System, user (and for context, assistant + observation) messages, without the target."""
    target: str
    """The assistant text; a whole turn (ends with <|im_end|>) unless `partial`."""
    partial: bool = False
    """True when the target is only the start of a turn (no <|im_end|>)."""


def _cell_box(row: int, col: int, width: int, height: int, rows: int, cols: int) -> tuple[int, int, int, int]:
    # the same rounding as generate.generate_grid_problem's cell boxes
    cell_w, cell_h = width / cols, height / rows
    return (round(col * cell_w), round(row * cell_h), round((col + 1) * cell_w), round((row + 1) * cell_h))


def _jittered(box: tuple[int, int, int, int], jitter: float, rng: random.Random, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    dx, dy = jitter * (x1 - x0), jitter * (y1 - y0)
    return (
        max(0, round(x0 + rng.uniform(-dx, dx))),
        max(0, round(y0 + rng.uniform(-dy, dy))),
        min(width, round(x1 + rng.uniform(-dx, dx))),
        min(height, round(y1 + rng.uniform(-dy, dy))),
    )


def make_example(config: PretrainConfig, seed: int, index: int, task: str | None = None, positive: bool | None = None) -> Example:
    """Example `index` of the stream seeded by `seed`: a fresh grid scene cut into one task's conversation."""
    rng = random.Random(f"{seed}:{index}")
    if task is None:
        weights = config.task_weights()
        task = rng.choices(list(weights), list(weights.values()))[0]
    if positive is None:
        positive = rng.random() < config.positive_share
    side = rng.choice(config.grids)
    grid = GridConfig(
        rows=side,
        cols=side,
        target_fraction=rng.uniform(*config.target_fraction),
        distractor_density=rng.uniform(*config.distractor_density),
    )
    resize = config.resize()
    problem, _, _, _ = make_problem(seed, index, "grid", rng.choice(config.image_sizes), SynthOptions(grid=grid, resize=resize, max_attempts=80))
    scene = render(problem.scene)
    width, height = scene.size
    target_row, target_col = problem.extra["cell"]
    colour = problem.answer
    cells = [(r, c) for r in range(side) for c in range(side)]
    if task in ("describe", "context") and not positive and len(cells) > 1:
        row, col = rng.choice([cell for cell in cells if cell != (target_row, target_col)])
    else:
        row, col, positive = target_row, target_col, True
    box = _jittered(_cell_box(row, col, width, height, side, side), config.jitter, rng, width, height)
    crop = resize_for_model(scene.crop(box), resize)
    seen = found_text(colour) if positive else NOT_FOUND_TEXT
    suffix = "pos" if positive else "neg"
    if task == "describe":
        question = f"{DESCRIBE_QUESTION}\n{_open_instruction()}"
        answer = colour if positive else NONE_ANSWER
        messages = [protocol.system_message(), protocol.first_user_message(crop, question)]
        return Example(f"describe_{suffix}", messages, f"<think>{seen}</think>\n{protocol.render_answer(answer)}")
    first_view = resize_for_model(scene, resize, first=True)
    del scene
    if task == "context":
        cell_number = row * side + col + 1
        relative = tuple(round(v, 3) for v in (box[0] / width, box[1] / height, box[2] / width, box[3] / height))
        zoom = f"<think>Let me zoom in on cell {cell_number}.</think>\n" + protocol.render_zoom(protocol.Zoom(relative))
        messages = [
            protocol.system_message(),
            protocol.first_user_message(first_view, problem.text),
            protocol.assistant_message(zoom),
            protocol.observation_message(crop, 1, 2),
        ]
        return Example(f"context_{suffix}", messages, f"<think>{seen}", partial=True)
    if task == "recognise":
        messages = [protocol.system_message(), protocol.first_user_message(crop, problem.text)]
        return Example("recognise", messages, f"<think>{seen}</think>\n{protocol.render_answer(problem.solution)}")
    if task == "locate":
        target = target_row * side + target_col
        letters = [chr(65 + k) for k in range(side * side)]
        options = "\n".join(f"({letter}) cell {k + 1}" for k, letter in enumerate(letters))
        question = f"{LOCATE_QUESTION}\n{options}\n{protocol.MULTIPLE_CHOICE_INSTRUCTION}"
        messages = [protocol.system_message(), protocol.first_user_message(first_view, question)]
        text = f"<think>The shape that is not grey is in cell {target + 1}.</think>\n{protocol.render_answer(letters[target])}"
        return Example("locate", messages, text)
    raise PretrainError(f"unknown task {task!r}; choose one of {TASKS}")


def _open_instruction() -> str:
    from mini_o3.data.problems import OPEN_INSTRUCTION

    return OPEN_INSTRUCTION


def eval_groups(config: PretrainConfig) -> dict[str, tuple[str, bool]]:
    """Held-out groups with a non-zero training weight: name -> (task, positive)."""
    weights = config.task_weights()
    groups = {}
    for task in TASKS:
        if weights[task] <= 0:
            continue
        if task in ("describe", "context"):
            groups[f"{task}_pos"] = (task, True)
            groups[f"{task}_neg"] = (task, False)
        else:
            groups[task] = (task, True)
    return groups


# ---------------------------------------------------------------- encoding


@dataclass
class Encoded:
    """An example as model inputs: ids, labels on the target only, fp16 patches."""

    task: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


def encode_example(example: Example, encoder: Any) -> Encoded:
    """Token ids (prompt + target), labels (-100 outside the target) and images of an example."""
    prompt = encoder.encode(example.messages, add_generation_prompt=True)
    backbone = encoder.backbone  # the family's markup (Qwen3.5 opens the thought in the prompt)
    if example.partial:
        full_messages = example.messages
        text = backbone.render_messages(full_messages, add_generation_prompt=True) + backbone.assistant_body(example.target)
    else:
        full_messages = example.messages + [protocol.assistant_message(example.target)]
        text = backbone.render_messages(full_messages, add_generation_prompt=False)
    raw = encoder.encode_text(text)
    if not example.partial:
        raw = raw[:-1] if encoder.decode(raw[-1:], skip_special_tokens=False) == "\n" else raw
    # expand image pads the same way the prompt was expanded
    counts = iter(int(grid.prod()) // encoder.merge_size**2 for grid in prompt.image_grid_thw)
    ids: list[int] = []
    for token in raw:
        ids.extend([token] * next(counts) if token == encoder.image_token_id else [token])
    start = len(prompt.input_ids)
    if ids[:start] != prompt.input_ids or len(ids) <= start:
        raise PretrainError(f"the {example.task} target {example.target!r} does not tokenize as a continuation of its prompt")
    labels = [-100] * start + ids[start:]
    return Encoded(example.task, ids, labels, prompt.pixel_values.half(), prompt.image_grid_thw)


def collate(items: list[Encoded], pad_id: int, image_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded model inputs and labels for a batch."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention_mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": torch.cat([item.pixel_values for item in items]).float(),
        "image_grid_thw": torch.cat([item.image_grid_thw for item in items]),
        "mm_token_type_ids": (input_ids == image_token_id).long(),
    }


def _forward(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss over supervised tokens, shifted logits argmax, shifted labels)."""
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    logits = out.logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    return loss, logits.argmax(-1), target


# ---------------------------------------------------------------- checkpoints


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(out: Path, model: Any, tokenizer: Any, image_processor: Any, optimizer: Any, step: int) -> None:
    """Overwrite OUT's checkpoint: every file written to a staging folder, then renamed into place."""
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    image_processor.save_pretrained(staging)
    state = {"step": step, "optimizer": optimizer.state_dict(), "weights_sha256": _sha256(staging / WEIGHTS_FILE)}
    torch.save(state, staging / STATE_FILE)
    for path in sorted(staging.iterdir()):
        if path.name != STATE_FILE:
            os.replace(path, out / path.name)
    (out / STATE_DIR).mkdir(exist_ok=True)
    # the state goes last: a state names weights that are already in place
    os.replace(staging / STATE_FILE, out / STATE_DIR / STATE_FILE)
    shutil.rmtree(staging, ignore_errors=True)


def load_state(out: Path) -> dict[str, Any] | None:
    """The saved trainer state of OUT, or None before the first save."""
    path = out / STATE_DIR / STATE_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("weights_sha256") != _sha256(out / WEIGHTS_FILE):
        print(f"warning: {out / WEIGHTS_FILE} is newer than {path} (a save was cut short); resuming from the weights", file=sys.stderr)
    return state


def _check_resumable(out: Path, config: PretrainConfig) -> None:
    path = out / CONFIG_FILE
    if not path.is_file():
        if (out / "config.json").is_file():
            raise PretrainError(f"{out} holds a checkpoint this command did not make (no {CONFIG_FILE}); choose another --out")
        return
    # A setting added since the run was saved counts as its default there.
    saved = {**json.loads(json.dumps(asdict(PretrainConfig(out=config.out)))), **json.loads(path.read_text())}
    now = json.loads(json.dumps(asdict(config)))
    differ = sorted(k for k in set(saved) | set(now) if k not in _RUN_LENGTH_FIELDS and saved.get(k) != now.get(k))
    if differ:
        raise PretrainError(
            f"{out} was pretrained with other settings ({', '.join(f'{k}: {saved.get(k)!r} there, {now.get(k)!r} now' for k in differ)}); "
            "rerun with the saved settings to resume, or choose another --out"
        )


# ---------------------------------------------------------------- the run


def lr_at(config: PretrainConfig, step: int) -> float:
    """The learning rate for optimizer step `step` (1-based)."""
    warm = min(1.0, step / max(1, config.warmup_steps))
    decay_start = config.steps * (1 - config.decay_fraction)
    if step <= decay_start or config.decay_fraction <= 0:
        return config.lr * warm
    progress = min(1.0, (step - decay_start) / max(1.0, config.steps - decay_start))
    return config.lr * warm * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _batch_examples(config: PretrainConfig, step: int) -> Iterator[Example]:
    for row in range(config.batch_size):
        yield make_example(config, config.seed, step * config.batch_size + row)


@torch.no_grad()
def evaluate(model: Any, held_out: dict[str, list[Encoded]], pad_id: int, image_token_id: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Per group: loss, token accuracy and exact (every target token's argmax right = greedy writes it)."""
    model.eval()
    results = {}
    for group, items in held_out.items():
        losses, exact, tokens_right, tokens = [], 0, 0, 0
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            loss, predicted, target = _forward(model, collate(chunk, pad_id, image_token_id))
            mask = target != -100
            right = (predicted == target) & mask
            exact += int((right.sum(1) == mask.sum(1)).sum())
            tokens_right += int(right.sum())
            tokens += int(mask.sum())
            losses.append(float(loss) * len(chunk))
        results[group] = {"exact": round(exact / len(items), 4), "token_acc": round(tokens_right / max(tokens, 1), 4), "loss": round(sum(losses) / len(items), 4)}
    model.train()
    return results


def run_pretrain(config: PretrainConfig) -> Path:
    """Pretrain (or resume pretraining) the tiny model in config.out; the checkpoint directory."""
    from mini_o3.policies.local import PromptEncoder
    from mini_o3.models.tiny import build_tiny, load_checkpoint
    from mini_o3.train.console import progress_line

    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(out, config)
    print("pretrain config:\n" + json.dumps(asdict(config), indent=1), flush=True)
    (out / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=1) + "\n")
    from mini_o3.models.episode_settings import write_episode_settings

    write_episode_settings(out, config.episode_settings())
    shutil.rmtree(out / ".staging", ignore_errors=True)
    if not (out / "config.json").is_file():
        build_tiny(out, seed=config.seed, size=config.model_size, family=config.family)
    torch.manual_seed(config.seed)
    model, tokenizer, image_processor = load_checkpoint(out)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=0.0)
    state = load_state(out)
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    from mini_o3.models.families import backbone_of

    encoder = PromptEncoder(tokenizer, image_processor, image_cache_bytes=0, backbone=backbone_of(model))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.convert_tokens_to_ids("<|endoftext|>")
    image_token_id = encoder.image_token_id
    eval_seed = config.seed + _EVAL_SEED_OFFSET
    held_out = {
        group: [encode_example(make_example(config, eval_seed, k * 1000 + i, task, positive), encoder) for i in range(config.n_eval)]
        for k, (group, (task, positive)) in enumerate(eval_groups(config).items())
    }
    log = (out / LOG_FILE).open("a", encoding="utf-8")
    started = time.time()
    # The records go to the log; the console shows one progress line, and a line per evaluation.
    console = Console(stderr=True)
    bar = progress_line(console, TextColumn("{task.fields[figures]}"))
    task = bar.add_task("pretrain", total=config.steps, completed=step, first=step, figures="loss -")

    def emit(record: dict[str, Any]) -> None:
        record["seconds"] = round(time.time() - started, 1)
        log.write(json.dumps(record) + "\n")
        log.flush()
        if record["event"] == "train":
            bar.update(task, figures=f"loss {record['loss']:.3f}")
        elif record["event"] == "eval":
            exact = ", ".join(f"{group} {value:.0%}" for group, value in record["exact"].items())
            console.print(f"step {record['step']}: held-out exact {exact}")

    stop = {"now": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["now"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    emit({"event": "start", "step": step, "parameters": sum(p.numel() for p in model.parameters()), "resumed": state is not None, "argv": sys.argv})

    def do_eval() -> None:
        timer = time.time()
        results = evaluate(model, held_out, pad_id, image_token_id, config.eval_batch_size)
        emit({"event": "eval", "step": step, "exact": {g: r["exact"] for g, r in results.items()}, "groups": results, "eval_s": round(time.time() - timer, 1)})

    if state is None or step >= config.steps:
        do_eval()
    last_save = time.time()
    losses: list[float] = []
    step_time = 0.0
    bar.start()
    try:
        while step < config.steps and not stop["now"]:
            if config.max_minutes and time.time() - started > config.max_minutes * 60:
                break
            timer = time.time()
            step += 1
            batch = collate([encode_example(example, encoder) for example in _batch_examples(config, step)], pad_id, image_token_id)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, step)
            loss, _, _ = _forward(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            step_time += time.time() - timer
            bar.update(task, completed=step)
            if step % config.log_every == 0:
                emit({"event": "train", "step": step, "loss": round(sum(losses) / len(losses), 4), "lr": round(lr_at(config, step), 6), "s_per_step": round(step_time / len(losses), 3)})
                losses, step_time = [], 0.0
            if step % config.eval_every == 0:
                do_eval()
            if time.time() - last_save > config.save_every_s:
                save_checkpoint(out, model, tokenizer, image_processor, optimizer, step)
                emit({"event": "save", "step": step})
                last_save = time.time()
        if step % config.eval_every != 0:
            do_eval()
        save_checkpoint(out, model, tokenizer, image_processor, optimizer, step)
        emit({"event": "save", "step": step, "final": step >= config.steps})
        write_card(out, config, step)
    finally:
        bar.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.close()
    return out


def write_card(out: Path, config: PretrainConfig, step: int) -> None:
    """OUT/PRETRAIN.md: what this checkpoint is, how to reproduce it, and its last held-out accuracy."""
    evals = [r for r in _read_log(out / LOG_FILE) if r.get("event") == "eval"]
    last = evals[-1]["exact"] if evals else {}
    flags = " ".join(f"--{k.replace('_', '-')} {_flag_value(v)}" for k, v in asdict(config).items() if k != "out" and v != getattr(PretrainConfig(), k))
    lines = [
        "# base-tiny: the tiny Qwen2.5-VL after `mini_o3.demo.pretrain`",
        "",
        "A random tiny Qwen2.5-VL (`mini_o3.models.tiny`) trained to see the synthetic grid world: whether a",
        "cell crop holds the coloured shape, and its colour (see `src/mini_o3/demo/pretrain.py`).",
        "",
        f"Steps: {step} of {config.steps}. Reproduce (resumes if interrupted):",
        "",
        f"    python -m mini_o3.demo.pretrain --out {config.out} {flags}".rstrip(),
        "",
        "Held-out exact accuracy (teacher-forced: greedy decoding writes the whole target) at the last eval:",
        "",
        *(f"- {group}: {value:.0%}" for group, value in last.items()),
        "",
        f"Settings: {CONFIG_FILE}; curve: {LOG_FILE}.",
    ]
    (out / CARD_FILE).write_text("\n".join(lines) + "\n")


def _flag_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mini_o3.demo.pretrain", description=__doc__.split("\n")[0])
    defaults = PretrainConfig()
    for item in dataclasses.fields(PretrainConfig):
        default = getattr(defaults, item.name)
        flag = "--" + item.name.replace("_", "-")
        doc = _field_doc(item.name)
        if isinstance(default, tuple):
            kind = int if all(isinstance(v, int) for v in default) else float
            parser.add_argument(flag, type=lambda text, kind=kind: tuple(kind(v) for v in text.split(",")), default=default, help=f"{doc} (comma-separated; default {_flag_value(default)})")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"{doc} (default {default})")
    return parser


def _field_doc(name: str) -> str:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(PretrainConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name and isinstance(following, ast.Expr):
            return str(following.value.value)  # type: ignore[attr-defined]
    return ""


def main(argv: list[str] | None = None) -> int:
    """`python -m mini_o3.demo.pretrain --out DIR [settings]`: pretrain or resume."""
    args = _parser().parse_args(argv)
    from mini_o3.train.console import LIBRARY_LOG, library_noise_to

    try:
        config = PretrainConfig(**vars(args))
        with library_noise_to(Path(config.out) / LIBRARY_LOG):  # weight loading and saving bars, library warnings
            out = run_pretrain(config)
    except PretrainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"checkpoint: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["PretrainConfig", "PretrainError", "TASKS", "Example", "evaluate", "make_example", "encode_example", "run_pretrain", "save_checkpoint", "lr_at"]
