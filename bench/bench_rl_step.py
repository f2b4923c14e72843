"""The demo's RL step on the old code against the new, in one run: seconds per step (rollouts + update) and the ratio.

Both paths run the demo's own RL job (8 questions x 8 rollouts, up to 6 turns, dynamic sampling:
the settings `mini-o3 demo` trains with, read from its RL stage) from the same SFT model and seed,
each in a child process:
- old: the code as it was before the cached engine (git revision --old-rev, exported with
  `git archive`): one `model.generate` per gathered batch on whole re-encoded prompts, and every
  update micro-batch as wide as the step's longest rollout;
- new: this tree: the cached engine (each episode's KV cache kept across turns, every episode in
  flight decoded together; policies/cached_engine.py) and micro-batches trimmed to their own width.
Sampling is seeded per turn and both engines draw the same tokens from the same logits, so the
paths roll out the same episodes up to float noise (the share of identical turns is printed).

Usage (after `make demo`, or with any demo run's folders):
  python bench/bench_rl_step.py [--model runs/demo/sft/train/final] [--data runs/demo/data/train] [--steps 2] [--out DIR]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD_REV = "94a7b86"
"""main just before the cached engine and token-faithful prompts."""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="runs/demo/sft/train/final", help="the SFT checkpoint RL starts from")
parser.add_argument("--data", default="runs/demo/data/train", help="the demo's training world (a synthetic folder)")
parser.add_argument("--steps", type=int, default=2, help="RL steps per path (default 2)")
parser.add_argument("--old-rev", default=OLD_REV, help=f"git revision of the old code (default {OLD_REV})")
parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # run one path with the code on sys.path
args = parser.parse_args()


def run_child(out: Path) -> None:
    """One path: the demo's RL job for `args.steps` steps; print its figures as JSON."""
    from mini_o3.demo import pipeline
    from mini_o3.train import rl
    from mini_o3.train.config import with_overrides

    captured = []

    def capture(job, *rest, **kwargs):
        captured.append(job)
        raise StopIteration

    real, rl.run_rl = rl.run_rl, capture
    try:
        pipeline._stage_rl(pipeline.demo_config("default"), out, str(args.data), str(args.model), True)
    except StopIteration:
        pass
    finally:
        rl.run_rl = real
    job = with_overrides(captured[0], output_dir=str(out / "train"), steps=args.steps, save_steps=10**6, save_token_ids=True, resume=False)
    started = time.perf_counter()
    rl.run_rl(job)
    wall = time.perf_counter() - started
    log = [json.loads(line) for line in (out / "train" / rl.LOG_FILE).read_text().splitlines() if '"time/rollout_s"' in line]
    steps = [row["time/rollout_s"] + row["time/update_s"] for row in log]
    print("FIGURES " + json.dumps({
        "step_s": [round(value, 2) for value in steps],
        "rollout_s": [round(row["time/rollout_s"], 2) for row in log],
        "update_s": [round(row["time/update_s"], 2) for row in log],
        "rollouts_per_step": [row["rollouts/count"] for row in log],
        "step_s_mean": round(statistics.mean(steps), 2),
        "run_wall_s": round(wall, 1),
        "settings": {key: getattr(job, key) for key in (
            "prompts_per_step", "num_generations", "max_turns", "max_new_tokens", "concurrency", "policy_batch_size", "micro_batch_size")},
    }), flush=True)


if args.child:
    run_child(Path(args.child))
    sys.exit(0)

for path in (args.model, args.data):
    if not Path(path).is_dir():
        raise SystemExit(f"{path} is not a folder; run `make demo` first or pass --model and --data")
root = (args.out or Path(tempfile.mkdtemp(prefix="bench_rl_step-"))).resolve()
root.mkdir(parents=True, exist_ok=True)
old_code = root / "old_code"
old_code.mkdir(exist_ok=True)
archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old_rev, "src"], check=True, capture_output=True).stdout
subprocess.run(["tar", "-x", "-C", str(old_code)], input=archive, check=True)

figures, rollouts = {}, {}
for name, source in (("old", old_code / "src"), ("new", REPO / "src")):
    out = root / name
    command = [sys.executable, __file__, "--child", str(out), "--model", str(Path(args.model).resolve()),
               "--data", str(Path(args.data).resolve()), "--steps", str(args.steps)]
    env = {**os.environ, "PYTHONPATH": str(source)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=root)
    lines = [line for line in result.stdout.splitlines() if line.startswith("FIGURES ")]
    if result.returncode or not lines:
        raise SystemExit(f"the {name} path failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    figures[name] = json.loads(lines[-1][len("FIGURES "):])
    rollouts[name] = {
        (line, index): turn["token_ids"]
        for line, record in enumerate(map(json.loads, (out / "train" / "rollouts.jsonl").read_text().splitlines()))
        for index, turn in enumerate(record["turns"])
    }
    print(name, json.dumps(figures[name]), flush=True)

old, new = rollouts["old"], rollouts["new"]
print(json.dumps({
    "speedup_step": round(figures["old"]["step_s_mean"] / figures["new"]["step_s_mean"], 2),
    "speedup_rollout": round(statistics.mean(figures["old"]["rollout_s"]) / statistics.mean(figures["new"]["rollout_s"]), 2),
    "speedup_update": round(statistics.mean(figures["old"]["update_s"]) / statistics.mean(figures["new"]["update_s"]), 2),
    "turns_identical": f"{sum(1 for key, ids in new.items() if old.get(key) == ids)} of {len(new)} (old path: {len(old)})",
    "old_rev": args.old_rev,
}, indent=1))
