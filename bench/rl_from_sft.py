"""RL from a finished demo run's SFT model with any RLJobConfig override, then the demo's held-out eval; one summary line.

Run from the folder the demo ran in (its stage files hold relative paths):
    python bench/rl_from_sft.py OUT SFT_RUN [key=value ...]
keys: RLJobConfig fields (learning_rate=2e-4 mini_batch_prompts=1 ignore_void=true max_turns=8 ...), and
levels=easy|easymed|all (train on those questions only), limit_q=N (the first N: a fixed set), eval_samples=K,
eval_seed=S, skip_rl=1 (evaluate the SFT model), adv=pos (diagnostic: negative advantages set to 0).
docs/results.md lists the runs made with it.
"""
import json, sys, time, os
from dataclasses import replace, asdict
from pathlib import Path
from mini_o3.demo import pipeline as p
from mini_o3.train.config import RLJobConfig, override_value
from mini_o3.train.rl import run_rl
from mini_o3.data.synth_loading import load_synthetic

out, sft_run = Path(sys.argv[1]), Path(sys.argv[2])
kv = dict(a.split("=", 1) for a in sys.argv[3:])
cfg = json.loads((sft_run / "demo_config.json").read_text())
config = p.DemoConfig(**{k: v for k, v in cfg.items() if k in p.DemoConfig.__dataclass_fields__})
data = json.loads((sft_run / "data" / "stage.json").read_text())["result"]
model = json.loads((sft_run / "sft" / "stage.json").read_text())["result"]["model"]
if not Path(model).is_absolute(): model = str(sft_run.parent.parent / model) if not Path(model).exists() else model
levels_mode = kv.pop("levels", "all"); limit_q = int(kv.pop("limit_q", 0))
eval_samples = int(kv.pop("eval_samples", config.eval_samples)); eval_seed = int(kv.pop("eval_seed", config.seed))
skip_rl = kv.pop("skip_rl", "0") == "1"
adv_mode = kv.pop("adv", "grpo")
if adv_mode != "grpo":
    from mini_o3.train import masking as _m
    _orig = _m.group_advantages
    def _patched(rewards, eps=1e-6):
        a = _orig(rewards, eps)
        return a.clamp(min=0) if adv_mode == "pos" else a
    _m.group_advantages = _patched
    if adv_mode == "ignore_void":
        _m.group_advantages = _orig
        _rw = _m.rollout_weights
        def _rw2(statuses, overturn_mask=True, void=None):
            statuses = list(statuses); void = list(void) if void is not None else [False] * len(statuses)
            w = _rw(statuses, overturn_mask, void)
            for i, (st, v) in enumerate(zip(statuses, void)):
                if str(getattr(st, "value", st)) == "no_answer" or v:
                    w[i] = 0.0
            return w
        _m.rollout_weights = _rw2
samples = load_synthetic(data["train"])
def depth(s):
    r, c = s.meta["cell"]; return int(r) * int(s.meta["grid"][1]) + int(c) + 1
if levels_mode == "easy": samples = [s for s in samples if depth(s) <= 3]
elif levels_mode == "easymed": samples = [s for s in samples if depth(s) + 1 <= 6]
if limit_q: samples = samples[:limit_q]
base = dict(
    data=f"synthetic:{data['train']}", model_path=model, output_dir=str(out / "rl"), steps=config.rl_steps,
    prompts_per_step=8, mini_batch_prompts=8, num_generations=8, learning_rate=5e-5, max_turns=6,
    max_images=12, max_new_tokens=160, image_max_pixels=config.view_pixels, image_min_pixels=min(config.view_pixels, 56 * 56),
    overturn_mask=True, concurrency=32, policy_batch_size=32, save_steps=100, seed=0, freeze_vision=False,
)
base.update({k: override_value(v) for k, v in kv.items()})
job = RLJobConfig(**base)
out.mkdir(parents=True, exist_ok=True)
(out / "lab.json").write_text(json.dumps({"argv": sys.argv, "levels": levels_mode, "n_train": len(samples)}, indent=1))
t0 = time.time()
final = model if skip_rl else str(run_rl(job, samples=samples))
t1 = time.time()
econf = replace(config, eval_samples=eval_samples, seed=eval_seed)
ev = p._stage_eval(econf, out / "eval", data["test"], final)
t2 = time.time()
levels = p.levels_by_sample(config, data["test"])
row = p.model_row(config, ev["run"], levels)
lv = {k: round(v["accuracy"], 3) for k, v in row["by_level"].items()}
rew = []
log = out / "rl" / "log.jsonl"
if log.exists():
    rew = [round(json.loads(l).get("reward", 0), 2) for l in open(log) if '"reward"' in l]
summary = {"name": out.name, "acc": round(row["accuracy"], 3), "levels": lv, "status": row["status_counts"],
           "turns_correct": row["turns_correct"]["mean"], "beyond6": row["beyond_train_turns"], "train_reward": rew,
           "rl_s": round(t1 - t0), "eval_s": round(t2 - t1), "kv": sys.argv[3:]}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print("SUMMARY", json.dumps(summary))
