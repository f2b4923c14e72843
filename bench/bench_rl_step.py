"""The demo's RL step on older code against this tree, in one run: seconds per step (rollouts + update) and the ratios.

Every path runs the demo's own RL job as this tree defines it (8 questions x 8 rollouts, 10
turns, 8 optimizer steps per RL step, dynamic sampling: read from its RL stage) from the same
SFT model and seed, each in a child process with its code on the path:
- 94a7b86, when issue 12 was filed: one `model.generate` per gathered batch on whole re-encoded
  prompts, every micro-batch as wide as the step's longest rollout. Settings it does not know
  are dropped and printed (ignore_void, loss_aggregation...: they change which rollouts carry
  loss, not what the step computes, since this code runs every rollout through the model);
- 3d94fad, before masked rollouts were skipped: the cached engine (each episode's KV cache
  kept across turns, every episode in flight decoded together; policies/cached_engine.py) and
  micro-batches trimmed to their own width;
- new, this tree: rollouts without loss (masked: 40-50% in the demo) skip the old-log-prob
  recompute and the update's forward and backward, and the recompute runs in micro-batches of
  similar length (train/batch_rows.py).
Sampling is seeded per turn and the engines draw the same tokens from the same logits, so the
paths roll out the same first step up to float noise (the share of identical turns is printed).

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
OLD_REVS = "94a7b86,3d94fad"
"""main when issue 12 was filed (before the cached engine), and main before masked rollouts were skipped."""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="runs/demo/sft/train/final", help="the SFT checkpoint RL starts from")
parser.add_argument("--data", default="runs/demo/data/train", help="the demo's training world (a synthetic folder)")
parser.add_argument("--steps", type=int, default=2, help="RL steps per path (default 2)")
parser.add_argument("--old-revs", default=OLD_REVS, help=f"git revisions of the older code, comma-separated (default {OLD_REVS})")
parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # run one path with the code on sys.path
args = parser.parse_args()


def demo_job(out: Path) -> dict:
    """The demo's RL job as this tree defines it, for `args.steps` steps, as a dict of settings."""
    from dataclasses import asdict

    from mini_o3.demo import pipeline

    job = pipeline.rl_job_config(pipeline.demo_config("default"), out, str(args.data), str(args.model), True)
    return {**asdict(job), "steps": args.steps, "save_steps": 10**6, "save_token_ids": True, "resume": False}


def run_child(out: Path) -> None:
    """One path: the job in `out/job.json` on the code on sys.path; print its figures as JSON."""
    from dataclasses import fields

    from mini_o3.train import rl
    from mini_o3.train.config import RLJobConfig

    settings = json.loads((out.parent / "job.json").read_text())
    known = {field.name for field in fields(RLJobConfig)}
    job = RLJobConfig(**{key: value for key, value in settings.items() if key in known}, output_dir=str(out / "train"))
    dropped = sorted(key for key in settings if key not in known and key != "output_dir")
    started = time.perf_counter()
    rl.run_rl(job)
    wall = time.perf_counter() - started
    log = [json.loads(line) for line in (out / "train" / rl.LOG_FILE).read_text().splitlines() if '"time/rollout_s"' in line]
    # Wall time between step records: older code logged one optimizer step's update time, not the RL step's.
    elapsed = [0.0] + [row["elapsed_s"] for row in log]
    steps = [elapsed[i + 1] - elapsed[i] for i in range(len(log))]
    print("FIGURES " + json.dumps({
        "step_s": [round(value, 2) for value in steps],
        "rollout_s": [round(row["time/rollout_s"], 2) for row in log],
        "update_s": [round(step - row["time/rollout_s"], 2) for step, row in zip(steps, log)],
        "rollouts_per_step": [row["rollouts/count"] for row in log],
        "step_s_mean": round(statistics.mean(steps), 2),
        "run_wall_s": round(wall, 1),
        "dropped_settings": dropped,
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
sys.path.insert(0, str(REPO / "src"))
settings = demo_job(root / "capture")
settings.pop("output_dir", None)
(root / "job.json").write_text(json.dumps(settings, indent=1))
print("job:", json.dumps({key: settings[key] for key in ("prompts_per_step", "mini_batch_prompts", "num_generations", "max_turns", "ignore_void", "overturn_mask")}), flush=True)

paths = []
for rev in [rev for rev in args.old_revs.split(",") if rev]:
    code = root / f"code_{rev}"
    code.mkdir(exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    paths.append((rev, code / "src"))
paths.append(("new", REPO / "src"))

figures, rollouts = {}, {}
for name, source in paths:
    out = root / name
    command = [sys.executable, __file__, "--child", str(out), "--model", str(Path(args.model).resolve()),
               "--data", str(Path(args.data).resolve()), "--steps", str(args.steps)]
    env = {**os.environ, "PYTHONPATH": str(source)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=root)
    lines = [line for line in result.stdout.splitlines() if line.startswith("FIGURES ")]
    if result.returncode or not lines:
        raise SystemExit(f"the {name} path failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    figures[name] = json.loads(lines[-1][len("FIGURES "):])
    records = [json.loads(line) for line in (out / "train" / "rollouts.jsonl").read_text().splitlines()]
    rollouts[name] = {
        (line, index): turn["token_ids"]
        for line, record in enumerate(records) if record["meta"]["rl_step"] == 1
        for index, turn in enumerate(record["turns"])
    }
    print(name, json.dumps(figures[name]), flush=True)

new = figures["new"]
report = {}
for name, _ in paths[:-1]:
    old = figures[name]
    report[f"new against {name}"] = {
        "speedup_step": round(old["step_s_mean"] / new["step_s_mean"], 2),
        "speedup_rollout": round(statistics.mean(old["rollout_s"]) / statistics.mean(new["rollout_s"]), 2),
        "speedup_update": round(statistics.mean(old["update_s"]) / statistics.mean(new["update_s"]), 2),
        "first_step_turns_identical": f"{sum(1 for key, ids in rollouts['new'].items() if rollouts[name].get(key) == ids)} of {len(rollouts['new'])} ({name}: {len(rollouts[name])})",
    }
print(json.dumps(report, indent=1))
