"""RL from a finished demo run's SFT model for STEPS steps with a checkpoint every EVERY, then the demo's evaluation of each.

Run from the folder the demo ran in (its stage files hold relative paths):
    python bench/rl_curve.py SFT_RUN OUT STEPS EVERY [key=value ...]
keys: RLJobConfig fields (ppo_epochs=2 learning_rate=4e-4 ...). A checkpoint at step k is the demo's RL model
with --rl-steps k (constant learning rate, seeded sampling). Prints one STEP line per checkpoint and writes
OUT/curve.json. docs/results.md lists the runs made with it.
"""
import json, sys, time
from pathlib import Path
from mini_o3.demo import pipeline as p
from mini_o3.train import rl
from mini_o3.train.config import override_value, with_overrides
if len(sys.argv) < 5:
    raise SystemExit(__doc__)
run, out, steps, every = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
kv = dict(a.split("=", 1) for a in sys.argv[5:])
cfg = json.loads((run / "demo_config.json").read_text())
config = p.DemoConfig(**{k: v for k, v in cfg.items() if k in p.DemoConfig.__dataclass_fields__})
data = json.loads((run / "data" / "stage.json").read_text())["result"]
model = json.loads((run / "sft" / "stage.json").read_text())["result"]["model"]
job = with_overrides(p.rl_job_config(config, out, data["train"], model, True), steps=steps, save_steps=every, save_total_limit=None, **{k: override_value(v) for k, v in kv.items()})
t0 = time.time()
if not (out / "train" / "final").exists():
    rl.run_rl(job)
t1 = time.time()
levels = p.levels_by_sample(config, data["test"])
res = {"rl_s": round(t1 - t0)}
for k in list(range(every, steps, every)) + [steps]:
    ck = out / "train" / (f"checkpoint-{k * job.optimizer_steps_per_rl_step()}" if k < steps else "final")
    if not ck.exists():
        print("missing", ck); continue
    ev = p._stage_eval(config, out / f"eval{k}", data["test"], str(ck))
    row = p.model_row(config, ev["run"], levels)
    res[k] = {"acc": round(row["accuracy"], 3), "status": row["status_counts"]}
    print("STEP", k, json.dumps(res[k]), flush=True)
(out / "curve.json").write_text(json.dumps(res, indent=1))
print("CURVE", json.dumps(res))
