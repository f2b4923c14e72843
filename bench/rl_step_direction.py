"""Direction of one RL step on a demo SFT model (8 easy training questions x 8 rollouts): how one SGD, sign (Adam's first step) or Adam-with-eps step moves the per-token log-probs of positive- and negative-advantage rollouts.

Run from the folder the demo ran in: python bench/rl_step_direction.py . runs/final-s0
"""
import json, sys, torch
from pathlib import Path
from mini_o3.train.config import RLJobConfig
from mini_o3.train.rl import build_trainer
from mini_o3.data.synth_loading import load_synthetic
torch.manual_seed(0)
root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")  # the folder the demo ran in
run = sys.argv[2] if len(sys.argv) > 2 else "runs/sft200-s0"
samples = load_synthetic(root / run / "data/train")
def depth(s):
    r, c = s.meta["cell"]; return int(r) * int(s.meta["grid"][1]) + int(c) + 1
samples = [s for s in samples if depth(s) <= 3][:8]
job = RLJobConfig(data="x", model_path=str(root / run / "sft/train/final"), output_dir=str(root / run / "step_direction"), steps=1,
    prompts_per_step=8, mini_batch_prompts=8, num_generations=8, learning_rate=1e-4, max_turns=6, max_images=12, max_new_tokens=160,
    image_max_pixels=12544, image_min_pixels=3136, concurrency=32, policy_batch_size=32, seed=0, freeze_vision=False, save_rollouts=False)
tr = build_trainer(job, samples=samples)
inputs = [{"sample_index": i, "prompt": ""} for i in range(8) for _ in range(8)]
tr.model.eval()
batch = tr._generate_and_score_completions(inputs)
tr.model.train()
with torch.no_grad():
    lp0 = tr._logprobs(tr.model, batch)
mask = batch["loss_mask"]; adv = batch["advantages"]
# compare with sampled logprobs: gather the sampled turn logprobs in order
import itertools
print("rollouts", mask.shape, "adv", adv[:16].tolist())
# SGD step on the loss
tr.current_gradient_accumulation_steps = 1
tr.model.zero_grad()
loss = tr._compute_loss(tr.model, batch)
loss.backward()
g2 = sum(float((p.grad**2).sum()) for p in tr.model.parameters() if p.grad is not None)
print("loss", float(loss), "grad norm", g2**0.5)
params = [p for p in tr.model.parameters() if p.grad is not None]
for lr in (1e-2, 1e-1):
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params: p -= lr * p.grad
        lp1 = tr._logprobs(tr.model, batch)
        for p, s in zip(params, saved): p.copy_(s)
    d = ((lp1 - lp0) * mask).sum(1) / mask.sum(1).clamp(min=1)
    pos = d[adv > 0]; neg = d[adv < 0]
    print(f"SGD lr {lr}: mean dlogp per token pos {pos.mean():.5f} neg {neg.mean():.5f}; objective change {float((d*adv).sum()):.5f}")

def trial(name, step):
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for n_, p in named:
            u = step(n_, p)
            if u is not None: p -= u
        lp1 = tr._logprobs(tr.model, batch)
        for p, s in zip(params, saved): p.copy_(s)
    d = ((lp1 - lp0) * mask).sum(1) / mask.sum(1).clamp(min=1)
    pos = d[adv > 0]; neg = d[adv < 0]
    print(f"{name}: dlogp/token pos {pos.mean():.5f} neg {neg.mean():.5f}; objective {float((d*adv).sum()):.4f}", flush=True)
named = [(n_, p) for n_, p in tr.model.named_parameters() if p.grad is not None]
print([n_ for n_, _ in named if "embed" in n_ or "lm_head" in n_])
for lr in (2e-4, 1e-3):
    trial(f"sign {lr}", lambda n_, p: lr * torch.sign(p.grad))
    trial(f"sign {lr} no-embed", lambda n_, p: None if "embed" in n_ else lr * torch.sign(p.grad))
    for eps in (1e-6, 1e-5, 1e-4):
        trial(f"adam1 {lr} eps {eps}", lambda n_, p: lr * p.grad / (p.grad.abs() + eps))
emb = [p for n_, p in named if "embed" in n_][0]
rowg = emb.grad.abs().max(1).values
print("embed rows with grad>0:", int((rowg>0).sum()), "rows with max|g|<1e-7:", int(((rowg>0)&(rowg<1e-7)).sum()), "quantiles", torch.quantile(rowg[rowg>0], torch.tensor([0.1,0.5,0.9])).tolist())
