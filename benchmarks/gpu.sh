#!/usr/bin/env bash
# LoRA SFT step throughput and MFU, and greedy decoding tokens/s, on one lent GPU, in about 7 minutes:
#   bash benchmarks/gpu.sh            (on the GPU machine, from the repository root)
#   bash benchmarks/gpu.sh --smoke    (tiny shapes on any machine: checks the whole path in about a minute)
# Each shape runs in its own process (an out-of-memory in one cannot take the others down) under a time
# guard; shapes that would overrun the budget are skipped and say so. Models are random (model_shapes.py):
# gpu_decode.py times the Sampler (bf16, kernels=xla, prompt 256 + 128 new tokens, batch 1 and 64, compile
# apart), gpu_sft.py the LoRA step. Decoding runs first (issue 12); the SFT list kept its two main shapes
# (SmolLM2 8 x 512, Llama-2-7B 8 x 1024 with remat) and dropped SmolLM2 32 x 1024 and Llama-2-7B 4 x 1024
# without remat to fit (run them by hand: python benchmarks/gpu_sft.py --model ... --batch ... --seq ...).
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
RESULTS=${GPU_BENCH_JSON:-/tmp/gpu_bench_results.jsonl}
: > "$RESULTS"
run() {  # run MAX_SECONDS SCRIPT ARGS...: one shape, skipped when less than MAX_SECONDS of the budget is left
  local want=$1 script=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt "$want" ]; then echo "skipped (budget: ${left}s left, needs ${want}s): $script $*"; return; fi
  local extra=()
  if [ "$SMOKE" = 1 ]; then
    case $script in
      gpu_sft.py) extra=(--smoke --steps 2 --warmup 1) ;;
      *) extra=(--smoke --repeats 1) ;;
    esac
  fi
  timeout "$want" "$PY" "benchmarks/$script" "$@" "${extra[@]}" --json "$RESULTS" 2>&1 \
    | grep -v -e "^W0000" -e "^I0000"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "FAILED (exit $rc; 124 = timed out after ${want}s): $script $*"; FAILED=1; }
}
FAILED=0

if [ "$SMOKE" = 1 ]; then
  run 120 gpu_decode.py --model smollm2 --batches 1,4 --prompt-len 32 --new-tokens 16
  run 120 gpu_decode.py --model llama2-7b --batches 1,4 --prompt-len 32 --new-tokens 16
  run 120 gpu_sft.py --model smollm2 --batch 2 --seq 64
  run 120 gpu_sft.py --model llama2-7b --batch 2 --seq 64 --remat
else
  run 100 gpu_decode.py --model smollm2 --batches 1,64       # two programs to compile, 4 calls each
  run 130 gpu_decode.py --model llama2-7b --batches 1,64     # ~13 GB bf16 weights + a 13 GB cache at batch 64
  run 140 gpu_sft.py --model smollm2 --batch 8 --seq 512              # the CPU benchmark's shape
  run 180 gpu_sft.py --model llama2-7b --batch 8 --seq 1024 --remat   # ~13 GB bf16 weights + per-layer checkpoints
fi
echo "total $(( $(date +%s) - START )) s; results: $RESULTS"
exit $FAILED  # a skipped shape is not a failure; a crashed or timed-out one is
