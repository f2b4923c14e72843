"""The demo's RL step on the old rollout path against the new one, in one run: seconds per step and the ratio.

Both paths run the demo's own RL job (8 questions x 8 rollouts, up to 6 turns, dynamic sampling,
the settings `mini-o3 demo` trains with) from the same SFT model and seed:
- old: LocalPolicy's "generate" engine, one `model.generate` per gathered batch on whole prompts;
- new: the "cached" engine, each episode's KV cache kept across turns and all episodes in flight
  decoded together (policies/cached_engine.py).
Sampling is seeded per turn and both engines draw the same tokens from the same logits, so the two
paths roll out the same episodes (the count of identical turns is printed): the figures compare
the same work. A step is its rollouts (generation, scoring, encoding) plus its update.

Usage (after `make demo`, or with any demo run's folders):
  python bench/bench_rl_step.py [--model runs/demo/sft/train/final] [--data runs/demo/data/train] [--steps 2] [--out DIR]
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mini_o3.demo import pipeline
from mini_o3.train import rl
from mini_o3.train.config import with_overrides

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="runs/demo/sft/train/final", help="the SFT checkpoint RL starts from")
parser.add_argument("--data", default="runs/demo/data/train", help="the demo's training world (a synthetic folder)")
parser.add_argument("--steps", type=int, default=2, help="RL steps per path (default 2)")
parser.add_argument("--paths", default="old,new", help="which paths to run, in order (default old,new)")
parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
args = parser.parse_args()
for path in (args.model, args.data):
    if not Path(path).is_dir():
        raise SystemExit(f"{path} is not a folder; run `make demo` first or pass --model and --data")
root = args.out or Path(tempfile.mkdtemp(prefix="bench_rl_step-"))
ENGINES = {"old": "generate", "new": "cached"}


def demo_job(folder: Path):
    """The RL job the demo builds (captured from its own stage, so the bench follows the demo's settings)."""
    captured = []

    def capture(job, *rest, **kwargs):
        captured.append(job)
        raise StopIteration

    real, rl.run_rl = rl.run_rl, capture
    try:
        pipeline._stage_rl(pipeline.demo_config("default"), folder, str(args.data), str(args.model), True)
    except StopIteration:
        pass
    finally:
        rl.run_rl = real
    return captured[0]


figures = {}
rollouts = {}
for name in args.paths.split(","):
    out = root / name
    job = with_overrides(demo_job(out), output_dir=str(out / "train"), steps=args.steps, save_steps=10**6,
                         save_token_ids=True, resume=False, rollout_engine=ENGINES[name])
    started = time.perf_counter()
    rl.run_rl(job)
    wall = time.perf_counter() - started
    log = [json.loads(line) for line in (out / "train" / rl.LOG_FILE).read_text().splitlines() if '"time/rollout_s"' in line]
    steps = [row["time/rollout_s"] + row["time/update_s"] for row in log]
    figures[name] = {
        "engine": ENGINES[name],
        "step_s": [round(value, 2) for value in steps],
        "rollout_s": [round(row["time/rollout_s"], 2) for row in log],
        "update_s": [round(row["time/update_s"], 2) for row in log],
        "rollouts_per_step": [row["rollouts/count"] for row in log],
        "step_s_mean": round(statistics.mean(steps), 2),
        "run_wall_s": round(wall, 1),
    }
    rollouts[name] = {
        (line, index): turn["token_ids"]
        for line, record in enumerate(map(json.loads, (out / "train" / rl.ROLLOUTS_FILE).read_text().splitlines()))
        for index, turn in enumerate(record["turns"])
    }
    print(name, json.dumps(figures[name]), flush=True)

if "old" in figures and "new" in figures:
    old, new = rollouts["old"], rollouts["new"]
    same = sum(1 for key, ids in new.items() if old.get(key) == ids)
    print(json.dumps({
        "speedup_step": round(figures["old"]["step_s_mean"] / figures["new"]["step_s_mean"], 2),
        "speedup_rollout": round(statistics.mean(figures["old"]["rollout_s"]) / statistics.mean(figures["new"]["rollout_s"]), 2),
        "turns_identical": f"{same} of {len(new)} (old path: {len(old)})",
        "settings": {key: getattr(demo_job(root / 'settings'), key) for key in (
            "prompts_per_step", "num_generations", "max_turns", "max_new_tokens", "concurrency", "policy_batch_size")},
    }, indent=1))
