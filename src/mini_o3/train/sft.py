"""`mini-o3 sft`: TRL's SFTTrainer on multi-turn zoom trajectories, loss on the model's own tokens.

The data are the cold-start conversations (`mini_o3.coldstart.sft_files`: JSONL rows {"messages",
"images"}). Each row is encoded by `train.tokenize.ConversationEncoder`, the same code that
builds RL sequences, so SFT and RL agree token for token on what a conversation is: the
labels are the input ids on assistant texts and their `<|im_end|>`, and -100 on the system
prompt, the question, the image pads and every observation and error turn. The family (Qwen2.5-VL,
Qwen3-VL, Qwen3.5) comes from the checkpoint's config. The vision tower and projector are frozen
by default. Checkpoints carry the tokenizer, the image processor and the episode settings the
data were collected with (`mini_o3_episode.json`), so each one loads with
`mini_o3.models.tiny.load_checkpoint` / `LocalPolicy` and runs as trained; a rerun resumes from
the last one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console

from mini_o3.train.config import SFTJobConfig, config_json, require_backends
from mini_o3.train.console import LIBRARY_LOG, Figure, library_noise_to, show_progress
from mini_o3.train.progress import JsonlLogCallback, SaveImageProcessorCallback, plot_learning_curve, trim_jsonl
from mini_o3.train.tokenize import ConversationEncoder

LOG_FILE = "log.jsonl"
FINAL_DIR = "final"
SFT_FIGURES = (Figure("loss", "loss"), Figure("token acc", "mean_token_accuracy", ".2f"))
"""What the SFT progress line shows besides the step."""


def rows_dataset(rows: Sequence[dict[str, Any]]) -> Any:
    """SFT conversations as a `datasets.Dataset`: messages as JSON text (Arrow mangles nested parts), images as paths."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "messages": [json.dumps(row["messages"], ensure_ascii=False) for row in rows],
            "images": [list(row.get("images") or []) for row in rows],
        }
    )


def load_rows(folder: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The SFT conversations of a dataset folder (`sft_data`'s messages.jsonl), image paths absolute."""
    from mini_o3.coldstart.sft_files import read_sft_rows

    rows = []
    for row in read_sft_rows(folder):
        rows.append({"messages": row["messages"], "images": list(row.get("images") or [])})
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"the SFT dataset in {folder} has no rows; make one with `mini-o3 collect`")
    return rows


class SFTCollator:
    """Encodes a batch of conversations into padded model inputs with assistant-only labels."""

    def __init__(self, encoder: ConversationEncoder, pad_id: int) -> None:
        self.encoder = encoder
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = []
        for example in examples:
            messages = example["messages"]
            if isinstance(messages, str):
                messages = json.loads(messages)
            encoded.append(self.encoder.encode_messages(messages, example.get("images") or None))
        return collate(encoded, self.pad_id)


def collate(encoded: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded conversations into a batch; labels are -100 outside the assistant mask."""
    width = max(len(item) for item in encoded)
    rows = len(encoded)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    labels = torch.full((rows, width), -100, dtype=torch.long)
    mm_token_type_ids = torch.zeros((rows, width), dtype=torch.long)
    for row, item in enumerate(encoded):
        ids = torch.tensor(item.input_ids, dtype=torch.long)
        mask = torch.tensor(item.assistant_mask, dtype=torch.bool)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.where(mask, ids, torch.full_like(ids, -100))
        mm_token_type_ids[row, : len(ids)] = torch.tensor(item.mm_token_type_ids(), dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "mm_token_type_ids": mm_token_type_ids}
    with_images = [item for item in encoded if item.pixel_values is not None]
    if with_images:
        batch["pixel_values"] = torch.cat([item.pixel_values for item in with_images])
        batch["image_grid_thw"] = torch.cat([item.image_grid_thw for item in with_images])
    return batch


def freeze_vision(model: Any) -> int:
    """Freeze the vision tower and its projector (merger) of the model's family; return how many parameters were frozen."""
    from mini_o3.models.backbone import CheckpointError
    from mini_o3.models.families import backbone_of

    try:
        backbone = backbone_of(model)
    except CheckpointError as error:
        raise ValueError(f"{type(model).__name__} has no known vision tower: {error}") from error
    return backbone.freeze_vision(model)


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint-N folder in `output_dir`, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(output_dir)
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def sft_episode_settings(data: str | Path, model_path: str | Path) -> Any:
    """The episode settings an SFT model is trained with: the data's (as collected), else the starting checkpoint's, else the paper's."""
    from mini_o3.models.episode_settings import DEFAULT_SETTINGS, read_episode_settings

    stored = read_episode_settings(data) or read_episode_settings(model_path) or DEFAULT_SETTINGS
    return stored.replace(written_by="sft")


def _load_model(path: str, bf16: bool) -> tuple[Any, Any, Any]:
    from mini_o3.models.tiny import load_checkpoint

    return load_checkpoint(path, device="cpu", dtype=torch.bfloat16 if bf16 else torch.float32)


def run_sft(config: SFTJobConfig, console: Console | None = None) -> Path:
    """Fine-tune `config.model_path` on `config.data`; return the final checkpoint's folder.

    The console shows one progress line (on `console`, stderr by default); the step records go to
    OUTPUT_DIR/log.jsonl and library warnings to OUTPUT_DIR/library.log.
    """
    for name in ("data", "model_path", "output_dir"):
        if not getattr(config, name):
            raise ValueError(f"SFT needs {name} (set it in the config or on the command line)")
    require_backends(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print("SFT job configuration:\n" + config_json(config), flush=True)
    (out / "sft_config.json").write_text(config_json(config) + "\n")
    with library_noise_to(out / LIBRARY_LOG):
        return _fine_tune(config, out, console)


def _fine_tune(config: SFTJobConfig, out: Path, console: Console | None) -> Path:
    from trl import SFTConfig, SFTTrainer

    from mini_o3.models.tiny import build_processor

    model, tokenizer, image_processor = _load_model(config.model_path, config.bf16)
    if config.freeze_vision:
        freeze_vision(model)
    from mini_o3.models.families import backbone_of

    backbone = backbone_of(model)
    print(f"model family: {backbone.name} ({type(model).__name__})", flush=True)
    encoder = ConversationEncoder(tokenizer, image_processor, backbone)
    episode = sft_episode_settings(config.data, config.model_path)
    rows = load_rows(config.data, config.limit)
    kept = [row for row in rows if len(encoder.encode_messages(row["messages"], row["images"] or None, with_pixels=False)) <= config.max_length]
    if not kept:
        raise ValueError(f"every conversation in {config.data} is longer than max_length={config.max_length} tokens")
    dropped = len(rows) - len(kept)
    print(f"SFT data: {len(kept)} conversations from {config.data}" + (f" ({dropped} longer than {config.max_length} tokens left out)" if dropped else ""), flush=True)

    resume = last_checkpoint(out) if config.resume else None
    log_path = out / LOG_FILE
    if resume is not None:
        trim_jsonl(log_path, int(Path(resume).name.split("-")[-1]), key="optimizer_step")
        print(f"resuming from {resume}", flush=True)
    elif log_path.exists():
        log_path.unlink()

    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio in transformers 5
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        bf16=config.bf16,
        activation_checkpointing=config.gradient_checkpointing,
        deepspeed=config.deepspeed,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        report_to=config.report_to,
        seed=config.seed,
        dataloader_num_workers=config.dataloader_num_workers,
        max_length=None,  # lengths are checked above; truncation would cut through image pads
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        assistant_only_loss=False,  # the collator masks the labels itself
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=rows_dataset(kept),
        processing_class=build_processor(tokenizer, image_processor, backbone),
        data_collator=SFTCollator(encoder, tokenizer.pad_token_id),
        callbacks=[JsonlLogCallback(log_path, step_name="step"), SaveImageProcessorCallback(image_processor, episode)],
    )
    line = show_progress(trainer, "SFT", SFT_FIGURES, console)
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        line.close()
    final = out / FINAL_DIR
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(final)
        image_processor.save_pretrained(final)
        from mini_o3.models.episode_settings import write_episode_settings

        write_episode_settings(final, episode)
        plot_learning_curve(log_path, out / "learning_curve.png", ["loss", "mean_token_accuracy", "learning_rate"], "SFT", step_key="step")
        print(f"SFT done in {time.perf_counter() - started:.1f} s; final checkpoint: {final}", flush=True)
    return final
