"""One SFT step and one RL step of the qwen2.5-vl-7b (or qwen3-vl-8b) preset at real size, random weights, one GPU.

The model has Qwen2.5-VL-7B's published shape (28 layers of 3584, 152,064-token vocabulary, a
32-block vision tower) with random weights and our offline tokenizer; the data are oracle
trajectories on hard synthetic scenes shown at the preset's 2M pixels. It runs the preset's
settings (bf16, gradient checkpointing, frozen vision, 4 conversations per SFT optimizer step,
micro-batches of 2 rollouts) with two changes a single GPU needs: no DeepSpeed (ZeRO-3 offload
is for 8 GPUs and is not installed here) and transformers generation instead of vLLM. RL is
shrunk to 2 questions x 4 rollouts, 2 turns of 64 new tokens; a second RL step takes oracle
rollouts of up to 6 turns, so the update sees full-length sequences. Prints and writes the step
times and peak GPU memory. `--size tiny` runs the same path on CPU in about a minute.
`--family qwen3-vl` does the same at Qwen3-VL-8B-Instruct's shape (36 layers of 4096, 151,936-token
vocabulary, a 27-block vision tower with DeepStack at blocks 8, 16, 24) with the qwen3-vl-8b preset
(2,611,200-pixel images: the same 2,550 image tokens).
Usage: python bench/bench_gpu_7b.py [--family qwen2.5-vl|qwen3-vl] [--size 7b|tiny] [--stages sft,rl,rl_oracle] [--out DIR] [--json FILE]

Each stage saves a 16.6 GB checkpoint beside the 16.6 GB random one. On a 128 GB H200 host the
third save was killed for memory with the work folder in /dev/shm, and a 64 GB disk filled with
it in /tmp: run one or two stages per call there (measured figures: README, "Measured").
"""
import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from mini_o3.agent.loop import EpisodeConfig, run_episodes
from mini_o3.data.synth import SynthOptions, load_synthetic, synthesize
from mini_o3.agent.env import Limits
from mini_o3.agent.images import ResizePolicy
from mini_o3.coldstart.oracle import OraclePolicy
from mini_o3.coldstart.sft_files import SftExample, write_sft_dataset
from mini_o3.models.tiny import SIZES, TinySpec, build_config, build_image_processor, build_tokenizer, count_parameters, generation_config
from mini_o3.train.config import load_preset, with_overrides
from mini_o3.train.rl import LOG_FILE as RL_LOG, run_rl
from mini_o3.train.sft import LOG_FILE as SFT_LOG, run_sft

QWEN25_VL_7B = TinySpec(
    text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4, text_intermediate=18944,
    vision_hidden=1280, vision_depth=32, vision_heads=16, vision_intermediate=3420,
)
"""Qwen2.5-VL-7B-Instruct's published shape (its config.json)."""
QWEN25_VL_VOCAB = 152_064
QWEN3_VL_8B = TinySpec(
    text_hidden=4096, text_layers=36, text_heads=32, text_kv_heads=8, text_intermediate=12288,
    vision_hidden=1152, vision_depth=27, vision_heads=16, vision_intermediate=4304,
)
"""Qwen3-VL-8B-Instruct's published shape (its config.json); head_dim 128."""
QWEN3_VL_VOCAB = 151_936
PRESETS = {"qwen2.5-vl": "qwen2.5-vl-7b", "qwen3-vl": "qwen3-vl-8b"}


def build_model_dir(size: str, folder: Path, pixels: int, family: str = "qwen2.5-vl", min_pixels: int = 40_000) -> tuple[Path, int]:
    """Write a random-weight checkpoint of `size` and `family` to `folder`; return it and its parameter count."""
    import transformers

    from mini_o3.models.families import backbone_named

    tokenizer = build_tokenizer(family=family)
    real = QWEN25_VL_7B if family == "qwen2.5-vl" else QWEN3_VL_8B
    config = build_config(real if size == "7b" else SIZES["tiny"], tokenizer, family)
    if size == "7b" and family == "qwen2.5-vl":
        config.text_config.vocab_size = QWEN25_VL_VOCAB
        config.vision_config.fullatt_block_indexes = [7, 15, 23, 31]
        config.tie_word_embeddings = False
    elif size == "7b":
        config.text_config.vocab_size = QWEN3_VL_VOCAB
        config.vision_config.deepstack_visual_indexes = [8, 16, 24]
        config.vision_config.num_position_embeddings = 2304
        config.tie_word_embeddings = False
    model_class = getattr(transformers, backbone_named(family).model_class)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype)
    model.generation_config = generation_config(tokenizer)
    parameters = count_parameters(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    build_image_processor(min_pixels=min_pixels, max_pixels=pixels, family=family).save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder, parameters


def peak_gib() -> float | None:
    """Peak GPU memory allocated since the last reset, in GiB (None on CPU)."""
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("7b", "tiny"), default="7b", help="7b: the family's real shape (7B or 8B); tiny: CPU")
    parser.add_argument("--family", choices=sorted(PRESETS), default="qwen2.5-vl", help="the family and its preset")
    shm = Path("/dev/shm")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: under /dev/shm when there is one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--pixels", type=int, default=None, help="image pixels (default: the preset's, 2,000,000 or 2,611,200)")
    parser.add_argument("--stages", default="sft,rl,rl_oracle", help="which of sft, rl, rl_oracle to run")
    parser.add_argument("--sft-steps", type=int, default=2, help="SFT optimizer steps")
    args = parser.parse_args()
    stages = set(args.stages.split(","))
    preset = load_preset(PRESETS[args.family])
    args.pixels = args.pixels or preset.rl.image_max_pixels
    min_pixels = preset.rl.image_min_pixels

    def record() -> None:
        if args.json:  # after every stage, so that a killed run keeps what it measured
            args.json.write_text(json.dumps(figures, indent=1) + "\n")

    roomy_shm = shm.is_dir() and shutil.disk_usage(shm).free > 40 * 2**30  # two 16 GB checkpoints at once
    root = args.out or Path(tempfile.mkdtemp(prefix="mini-o3-7b-", dir=shm if roomy_shm else None))
    root.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    figures: dict[str, object] = {"size": args.size, "family": args.family, "pixels": args.pixels, "gpu": gpu, "torch": torch.__version__}
    print(json.dumps(figures), flush=True)

    started = time.perf_counter()
    model_dir, figures["parameters"] = build_model_dir(args.size, root / "base", args.pixels, args.family, min_pixels)
    figures["build_and_save_s"] = round(time.perf_counter() - started, 1)
    record()

    resize = ResizePolicy(max_pixels=args.pixels, min_pixels=min_pixels)
    # 'hard' needs the first view at least 2x smaller than the original: 3072 px for 2M-pixel views, more above.
    side = max(3072, math.ceil(2.1 * math.sqrt(args.pixels) / 64) * 64)
    synthesize(root / "synth", 8, "hard", side, 0, progress=False, options=SynthOptions(contact_sheet=0, resize=resize))
    samples = load_synthetic(root / "synth")
    config = EpisodeConfig(limits=Limits(max_turns=6), resize=resize)
    episodes = list(run_episodes(OraclePolicy(resize=resize, max_turns=6), [(s, 0) for s in samples], config, concurrency=4))
    write_sft_dataset([SftExample(e.trajectory, [v.image for v in e.views]) for e in episodes], root / "sft_data")
    figures["sft_turns"] = [len(e.trajectory.turns) for e in episodes]

    on_gpu = torch.cuda.is_available()
    sft = with_overrides(
        preset.sft, data=str(root / "sft_data"), model_path=str(model_dir), output_dir=str(root / "sft"), max_steps=args.sft_steps,
        save_steps=10**6, report_to=["none"], bf16=on_gpu, deepspeed=None,
    )

    def measure(name: str, run: Callable[[], object], folder: Path, log_name: str) -> None:
        """Run one stage; keep its wall time, peak GPU memory and log, drop its 16.6 GB checkpoint."""
        reset_peak()
        started = time.perf_counter()
        run()
        figures[f"{name}_wall_s"] = round(time.perf_counter() - started, 1)
        figures[f"{name}_peak_gib"] = peak_gib()
        figures[f"{name}_log"] = [json.loads(line) for line in (folder / log_name).read_text().splitlines()]
        shutil.rmtree(folder / "final", ignore_errors=True)
        record()

    if "sft" in stages:
        measure("sft", lambda: run_sft(sft), root / "sft", SFT_LOG)

    rl = with_overrides(
        preset.rl, data=f"synthetic:{root / 'synth'}", model_path=str(model_dir), output_dir=str(root / "rl"), steps=1,
        prompts_per_step=2, mini_batch_prompts=2, num_generations=4, max_turns=2, max_new_tokens=64, concurrency=8,
        policy_batch_size=8, dynamic_sampling=False, use_vllm=False, save_steps=10**6, report_to=["none"], bf16=on_gpu,
        deepspeed=None,
    )
    if "rl" in stages:
        measure("rl", lambda: run_rl(rl), root / "rl", RL_LOG)
    # The random model's rollouts end at their first turn; oracle rollouts of up to 6 turns and
    # 7 images give the update the sequence lengths of a trained policy (the loss stays on the model).
    if "rl_oracle" in stages:
        long = with_overrides(rl, output_dir=str(root / "rl_long"), max_turns=6)
        oracle = OraclePolicy(resize=resize, max_turns=6)
        measure("rl_oracle", lambda: run_rl(long, rollout_policy=oracle), root / "rl_long", RL_LOG)
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=1), flush=True)


if __name__ == "__main__":
    main()
