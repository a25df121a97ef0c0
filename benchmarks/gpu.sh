#!/usr/bin/env bash
# LoRA SFT step throughput and MFU on one lent GPU, in under 8 minutes:
#   bash benchmarks/gpu.sh            (on the GPU machine, from the repository root)
#   bash benchmarks/gpu.sh --smoke    (tiny shapes on any machine: checks the whole path in about a minute)
# Each shape runs in its own process (an out-of-memory in one cannot take the others down) under a time
# guard; shapes that would overrun the budget are skipped and say so. Models are random (see gpu_sft.py).
# Python: $PYTHON, else python3. Needs only jax, flax, optax, numpy and tqdm (the lent H100/H200 image has them:
# jax 0.11.2, flax 0.12.10, optax 0.2.8 were seen to import reclm_jax there); no network, no model files.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
BUDGET=${GPU_BENCH_BUDGET_S:-420}  # seconds for all shapes together, leaving margin under 8 minutes

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
"$PY" benchmarks/gpu_sft.py --print-convention
echo "Weights are random (throughput does not depend on their values); SmolLM2 uses SmolLM2-135M-Instruct's config."

START=$(date +%s)
RESULTS=${GPU_BENCH_JSON:-/tmp/gpu_sft_results.jsonl}
: > "$RESULTS"
run() {  # run MAX_SECONDS ARGS...: one shape, skipped when less than MAX_SECONDS of the budget is left
  local want=$1; shift
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt "$want" ]; then echo "skipped (budget: ${left}s left, needs ${want}s): $*"; return; fi
  local extra=()
  [ "$SMOKE" = 1 ] && extra=(--smoke --steps 2 --warmup 1)
  timeout "$want" "$PY" benchmarks/gpu_sft.py "$@" "${extra[@]}" --json "$RESULTS" 2>&1 \
    | grep -v -e "^W0000" -e "^I0000"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "FAILED (exit $rc; 124 = timed out after ${want}s): $*"
}

if [ "$SMOKE" = 1 ]; then
  run 120 --model smollm2 --batch 2 --seq 64
  run 120 --model llama2-7b --batch 2 --seq 64 --remat
else
  run 140 --model smollm2 --batch 8 --seq 512              # the CPU benchmark's shape
  run 180 --model llama2-7b --batch 8 --seq 1024 --remat   # ~13 GB bf16 weights + per-layer checkpoints
  run 90 --model smollm2 --batch 32 --seq 1024              # a batch that fills the GPU better
  run 110 --model llama2-7b --batch 4 --seq 1024           # no remat, for remat's cost
fi
echo "total $(( $(date +%s) - START )) s; results: $RESULTS"
