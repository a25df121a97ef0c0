#!/usr/bin/env bash
# The quickstart's test stage (scripts/quickstart.sh runs it last; it also runs on its own after a quickstart):
#   1. each model the quickstart made is served by `python -m reclm_jax.serve` (one at a time) and evaluated
#      with the original's test client on the first EVAL_USERS test users: the base model as a general LLM
#      (the original's flattened prompt and parser), the SFT and the RL models as fine-tuned ones
#   2. the teacher's and popularity's own lists, scored the same way
#   3. one report comparing them: $RUNS/report_<dataset>/index.html (+ $RUNS/report_<dataset>.png with chromium)
# Usage: scripts/quickstart_test_stage.sh [--small]   (--small: MovieLens-100K, as the quickstart's flag)
# Budgets: EVAL_USERS (default 60 users, x 7 tasks per model), EVAL_MAX_TOKENS (default 256 new tokens per
# answer), EVAL_PORT (default 13579). Answers are cached per model and task: a second run re-asks nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,11p' "$0"; }
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
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null || true' EXIT

# Serves $2 as model name $1, evaluates it (extra client flags after), stops the server.
evaluate() {
  local name=$1 dir=$2
  shift 2
  echo "-- $name: serving $dir on port $EVAL_PORT"
  python -m reclm_jax.serve --model "$dir" --port "$EVAL_PORT" --served-model-name "$name" --max-batch 32 \
    >"$EVAL_DIR/$name.serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$EVAL_PORT/health" >/dev/null 2>&1 && break
    if ! kill -0 "$server" 2>/dev/null; then
      echo "error: the server for $name stopped; the end of $EVAL_DIR/$name.serve.log:" >&2
      tail -20 "$EVAL_DIR/$name.serve.log" >&2
      exit 1
    fi
    sleep 1
  done
  python -m reclm_jax.eval --base-url "http://127.0.0.1:$EVAL_PORT/v1" --model-name "$name" --data_path "$DATA_DIR" \
    --item_index title64_t --tokenizer "$dir" --output_dir "$EVAL_DIR/$name" --max_users "$EVAL_USERS" \
    --max_tokens "$EVAL_MAX_TOKENS" --concurrency 32 "$@"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
}

runs=()
evaluate base "$MODEL_DIR" --general_llm
runs+=("$EVAL_DIR/base")
evaluate sft "$SFT_RUN/merged"
runs+=("$EVAL_DIR/sft")
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
