"""Host memory and the rollout/update split over many GRPO steps with the tiny model (tiny-cpu preset)."""
import json, statistics, sys, time
from pathlib import Path
from mini_o3.data.synth import SynthOptions, load_synthetic, synthesize
from mini_o3.tiny import build_tiny
from mini_o3.train.config import load_preset, with_overrides
from mini_o3.train.rl import LOG_FILE, run_rl

root = Path(sys.argv[1]); steps = int(sys.argv[2])
root.mkdir(parents=True, exist_ok=True)
model = build_tiny(root / "tiny")
synthesize(root / "synth", 16, "grid", 448, 0, progress=False, options=SynthOptions(contact_sheet=0))
job = with_overrides(load_preset("tiny-cpu").rl, data=f"synthetic:{root / 'synth'}", model_path=str(model), output_dir=str(root / "out"),
                     steps=steps, save_steps=10**6, max_new_tokens=48, dynamic_sampling=False, resume=False)
started = time.time()
run_rl(job)
log = [json.loads(line) for line in (root / "out" / LOG_FILE).read_text().splitlines() if '"reward"' in line]
rss = [r["host_rss_mb"] for r in log]
warm = min(20, len(rss) - 1)
print(json.dumps({
    "steps": len(log), "wall_s": round(time.time() - started, 1),
    "rss_mb_first": rss[0], "rss_mb_after_warmup": rss[warm], "rss_mb_last": rss[-1], "rss_mb_max": max(rss),
    "growth_after_warmup_pct": round(100 * (rss[-1] - rss[warm]) / rss[warm], 2),
    "rollout_s_median": statistics.median(r["time/rollout_s"] for r in log),
    "update_s_median": statistics.median(r["time/update_s"] for r in log),
    "rss_every_20": rss[::20],
}, indent=1))
