#!/usr/bin/env bash
# The quickstart's test stage (scripts/quickstart.sh runs it last; it also runs on its own after a quickstart):
#   1. each model the quickstart made is served by `python -m reclm_jax.serve` (one at a time) and evaluated
#      with the original's test client on the first EVAL_USERS test users: the base model as a general LLM
#      (the original's flattened prompt and parser), the SFT and the RL models as fine-tuned ones, and the SFT
#      model once more with constrained decoding (`--constrain-data`: every list of real, distinct catalogue
#      items that obey the task's instruction; reclm_jax/decoding)
#   2. the teacher's and popularity's own lists, scored the same way
#   3. one report comparing them: $RUNS/report_<dataset>/index.html (+ $RUNS/report_<dataset>.png with chromium)
# Usage: scripts/quickstart_test_stage.sh [--small]   (--small: MovieLens-100K, as the quickstart's flag)
# Budgets: EVAL_USERS (default 60 users, x 7 tasks per model), EVAL_MAX_TOKENS (default 256 new tokens per
# answer), EVAL_PORT (default 13579). Answers are cached per model and task: a second run re-asks nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,12p' "$0"; }
source scripts/quickstart_layout.sh
for need in "$DATA_DIR" "$MODEL_DIR" "$TEACHER_RUN" "$SFT_RUN/merged"; do
  [ -e "$need" ] || { echo "error: $need not found: run scripts/quickstart.sh first" >&2; exit 2; }
done
# An explicit (empty) extra: a bare 'source' would hand this script's own arguments to setup_venv.sh.
source scripts/setup_venv.sh ""
EVAL_DIR="$RUNS/eval_${DATASET/-/}"
REPORT_DIR="$RUNS/report_${DATASET/-/}"
EVAL_USERS="${EVAL_USERS:-60}"
EVAL_MAX_TOKENS="${EVAL_MAX_TOKENS:-256}"
EVAL_PORT="${EVAL_PORT:-13579}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$EVAL_DIR"
source scripts/serve_eval.sh
SERVER_EXTRA=()  # more server flags for the next model (the constrained run's catalogue)
# bf16 weights and compute, as SFT and RL trained and validated them (configs/*_smollm2_ml1m.yaml) and as
# scripts/reproduce.sh's vLLM servers do: the exported folders say float32, which `--dtype auto` would decode at
# about a third of the speed (64 SeqRec users: 275 s in f32 against 89-116 s in bf16 on a 2-core Sapphire Rapids).
server_command() {
  SERVER=(python -m reclm_jax.serve --model "$2" --port "$EVAL_PORT" --served-model-name "$1" --max-batch 32
          --dtype bfloat16
          ${SERVER_EXTRA[@]+"${SERVER_EXTRA[@]}"})
}
# Serves $2 as model name $1 and evaluates it on the first EVAL_USERS users (extra client flags after).
evaluate() {
  serve_and_eval "$@" --item_index title64_t --max_users "$EVAL_USERS" --max_tokens "$EVAL_MAX_TOKENS" --concurrency 32
}

runs=()
evaluate base "$MODEL_DIR" --general_llm
runs+=("$EVAL_DIR/base")
evaluate sft "$SFT_RUN/merged"
runs+=("$EVAL_DIR/sft")
SERVER_EXTRA=(--constrain-data "$DATA_DIR" --item-index title64_t)
evaluate sft_constrained "$SFT_RUN/merged" --constrained
SERVER_EXTRA=()
runs+=("$EVAL_DIR/sft_constrained")
if [ -d "$RL_RUN/merged" ]; then
  evaluate rl "$RL_RUN/merged"
  runs+=("$EVAL_DIR/rl")
fi
for kind in teacher popularity; do
  echo "-- $kind baseline"
  python -m reclm_jax.eval.baselines --kind "$kind" --data_path "$DATA_DIR" --teacher_checkpoint "$TEACHER_RUN" \
    --item_index title64_t --tokenizer "$MODEL_DIR" --max_users "$EVAL_USERS" --output_dir "$EVAL_DIR/$kind"
  runs+=("$EVAL_DIR/$kind")
done
python -m reclm_jax.eval.report "${runs[@]}" --out "$REPORT_DIR" \
  --title "Quickstart on $DATASET: $EVAL_USERS test users" --screenshot "$RUNS/report_${DATASET/-/}.png"
