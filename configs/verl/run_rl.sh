#!/usr/bin/env bash
# Mini-o3's RL stage on verl 0.9.1 with the mini_o3 agent loop, on NNODES nodes of 8 GPUs.
#
#   mini-o3 export verl visualprobe:/data/visualprobe/train.json data/verl/train.parquet
#   mini-o3 export verl visualprobe:/data/visualprobe/val.json data/verl/val.parquet --max-turns 12
#   ray start --head (on node 0; ray start --address=HEAD:6379 on the others), then on node 0:
#   NNODES=8 MODEL=/ckpt/mini-o3-sft bash configs/verl/run_rl.sh [more hydra overrides]
#
# The paper's settings: 6 turns and 12 images (configs/verl/agent_loop.yaml), 16 rollouts per
# question, 256 questions per step, mini-batch 32, lr 1e-6 constant, clip 0.2 / 0.3, no KL and no
# entropy bonus, dynamic sampling (groups whose rewards all agree are dropped and sampling
# continues), over-turn masking, the released objective's normaliser (seq-mean-token-mean over a
# fixed rollout count: a masked rollout counts as a zero). docs/verl.md explains each line.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NNODES=${NNODES:-1}
MODEL=${MODEL:?set MODEL to the cold-start SFT checkpoint (a Qwen2.5-VL-7B-Instruct directory)}
TRAIN=${TRAIN:-data/verl/train.parquet}
VAL=${VAL:-data/verl/val.parquet}
NAME=${NAME:-mini-o3-rl-${NNODES}x8}

python3 -m verl.trainer.main_ppo \
  trainer.use_v1=true \
  trainer.v1.trainer_mode=sync \
  trainer.nnodes="$NNODES" \
  trainer.n_gpus_per_node=8 \
  trainer.project_name=mini-o3 \
  trainer.experiment_name="$NAME" \
  trainer.logger='["console"]' \
  trainer.total_epochs=1 \
  trainer.save_freq=20 \
  trainer.test_freq=20 \
  data.train_files="$TRAIN" \
  data.val_files="$VAL" \
  data.train_batch_size=256 \
  data.max_prompt_length=4096 \
  data.max_response_length=28672 \
  data.filter_overlong_prompts=false \
  data.return_raw_chat=true \
  algorithm.adv_estimator=grpo \
  algorithm.norm_adv_by_std_in_grpo=true \
  algorithm.use_kl_in_reward=false \
  algorithm.filter_groups.enable=true \
  algorithm.filter_groups.metric=reward \
  actor_rollout_ref.model.path="$MODEL" \
  actor_rollout_ref.actor.optim.lr=1e-6 \
  actor_rollout_ref.actor.ppo_mini_batch_size=32 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1 \
  actor_rollout_ref.actor.ppo_epochs=1 \
  actor_rollout_ref.actor.clip_ratio_low=0.2 \
  actor_rollout_ref.actor.clip_ratio_high=0.3 \
  actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean \
  actor_rollout_ref.actor.use_kl_loss=false \
  actor_rollout_ref.actor.kl_loss_coef=0 \
  actor_rollout_ref.actor.entropy_coeff=0 \
  actor_rollout_ref.actor.grad_clip=1.0 \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.mode=async \
  actor_rollout_ref.rollout.n=16 \
  actor_rollout_ref.rollout.temperature=1.0 \
  actor_rollout_ref.rollout.top_p=1.0 \
  actor_rollout_ref.rollout.calculate_log_probs=true \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
  actor_rollout_ref.rollout.max_model_len=32768 \
  actor_rollout_ref.rollout.max_num_batched_tokens=32768 \
  ++actor_rollout_ref.rollout.limit_images=12 \
  actor_rollout_ref.rollout.val_kwargs.do_sample=true \
  actor_rollout_ref.rollout.val_kwargs.temperature=1.0 \
  actor_rollout_ref.rollout.val_kwargs.n=1 \
  actor_rollout_ref.rollout.agent.agent_loop_config_path="$HERE/agent_loop.yaml" \
  actor_rollout_ref.rollout.agent.default_agent_loop=mini_o3 \
  "$@"
