"""Host memory and the rollout/update split over many GRPO steps with the tiny model (tiny-cpu preset).

Target (issue 6): host RSS flat after warm-up, under 5% growth. Prints figures, asserts nothing.
Usage: python bench/bench_rl_memory.py [--steps 200] [--out DIR]   (about 9 minutes on 2 cores)
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mini_o3.data.synth import SynthOptions, load_synthetic, synthesize
from mini_o3.models.tiny import build_tiny
from mini_o3.train.config import load_preset, with_overrides
from mini_o3.train.rl import LOG_FILE, run_rl

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=200, help="RL steps (default 200)")
parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
args = parser.parse_args()
root = args.out or Path(tempfile.mkdtemp(prefix="bench_rl_memory-"))
root.mkdir(parents=True, exist_ok=True)
model = build_tiny(root / "tiny")
synthesize(root / "synth", 16, "grid", 448, 0, progress=False, options=SynthOptions(contact_sheet=0))
job = with_overrides(load_preset("tiny-cpu").rl, data=f"synthetic:{root / 'synth'}", model_path=str(model), output_dir=str(root / "out"),
                     steps=args.steps, save_steps=10**6, max_new_tokens=48, dynamic_sampling=False, resume=False)
started = time.time()
run_rl(job)
log = [json.loads(line) for line in (root / "out" / LOG_FILE).read_text().splitlines() if '"reward"' in line]
rss = [r["host_rss_mb"] for r in log]


def growth(start: int) -> float | None:
    """RSS growth in percent from step `start` + 1 to the last step."""
    return round(100 * (rss[-1] - rss[start]) / rss[start], 2) if start < len(rss) - 1 else None


print(json.dumps({
    "steps": len(log), "wall_s": round(time.time() - started, 1),
    "rss_mb_first": rss[0], "rss_mb_step20": rss[min(19, len(rss) - 1)], "rss_mb_step60": rss[min(59, len(rss) - 1)],
    "rss_mb_last": rss[-1], "rss_mb_max": max(rss),
    "growth_pct_after_step20": growth(19), "growth_pct_after_step60": growth(59), "target_pct": 5.0,
    "rollout_s_median": statistics.median(r["time/rollout_s"] for r in log),
    "update_s_median": statistics.median(r["time/update_s"] for r in log),
    "rss_every_20": rss[::20],
}, indent=1))
