#!/usr/bin/env bash
# LoRA SFT step throughput and MFU, greedy decoding tokens/s and one PPO iteration (rollout / log-probs / update),
# for SmolLM2-135M and a Llama-2-7B-shaped model, on one lent GPU, in under 8 minutes:
#   bash benchmarks/gpu.sh            (on the GPU machine, from the repository root)
#   bash benchmarks/gpu.sh --smoke    (tiny shapes on any machine: checks the whole path; a few minutes on a CPU)
# Each shape runs in its own process (an out-of-memory in one cannot take the others down) under a time
# guard; shapes that would overrun the budget are skipped and say so. Models are random (model_shapes.py), bf16:
# gpu_decode.py times the Sampler (kernels=xla, prompt 256 + 128 new tokens, batch 1 and 64, compile apart),
# gpu_sft.py the LoRA step at seq 1024 (SmolLM2 8 x 1024, Llama-2-7B 8 x 1024 with remat), gpu_ppo.py one PPO
# iteration of the RL trainer (8 prompts x 2 responses, ~256-token prompts, 128 new tokens, the paper's PPO
# settings, toy reward; warm-up iteration apart). Decoding runs first (issue 12), then SFT, then PPO.
# Nothing here has run on a GPU yet: each guard is a ceiling guessed from the work (the 7B's 13 GB of weights
# and its compile dominate), not a measured time, and the six guards add up to more than the budget, so a slow
# first shape makes the last ones skip (run those by hand: python benchmarks/gpu_<x>.py --model ... [--json F]).
# Dropped to fit: SmolLM2 32 x 1024 and Llama-2-7B 4 x 1024 without remat (gpu_sft.py --batch/--seq/--remat).
# Python: $PYTHON, else python3. Decoding and SFT need only jax, flax, optax, numpy and tqdm (the lent H100/H200
# image has them: jax 0.11.2, flax 0.12.10, optax 0.2.8 were seen to import reclm_jax there); the PPO iteration
# imports the RL trainer, which also needs transformers, tokenizers, orbax-checkpoint, omegaconf, grain and
# rapidfuzz (the image lacked the last three: bring them as wheels; without them the PPO shapes are skipped and
# say why). No network, no model files.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
# Seconds for all shapes together, leaving margin under 8 minutes; a CPU compiles the smoke shapes slowly.
BUDGET=${GPU_BENCH_BUDGET_S:-$([ "$SMOKE" = 1 ] && echo 1500 || echo 420)}

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
      gpu_ppo.py) extra=(--smoke) ;;
      *) extra=(--smoke --repeats 1) ;;
    esac
  fi
  timeout "$want" "$PY" "benchmarks/$script" "$@" "${extra[@]}" --json "$RESULTS" 2>&1 \
    | grep -v -e "^W0000" -e "^I0000"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "FAILED (exit $rc; 124 = timed out after ${want}s): $script $*"; FAILED=1; }
}
FAILED=0
# The RL trainer's imports (see the header): checked once, so a missing package skips PPO instead of failing it.
PPO_MISSING=$("$PY" -c "import reclm_jax.rl.trainer, reclm_jax.testing.tiny_model" 2>&1 | grep -o "No module named .*")
ppo() {  # ppo MAX_SECONDS ARGS...: run gpu_ppo.py, or say why not
  if [ -n "$PPO_MISSING" ]; then echo "skipped (the RL trainer does not import: $PPO_MISSING): gpu_ppo.py ${*:2}"; return; fi
  run "$1" gpu_ppo.py "${@:2}"
}

if [ "$SMOKE" = 1 ]; then
  run 120 gpu_decode.py --model smollm2 --batches 1,4 --prompt-len 32 --new-tokens 16
  run 120 gpu_decode.py --model llama2-7b --batches 1,4 --prompt-len 32 --new-tokens 16
  run 120 gpu_sft.py --model smollm2 --batch 2 --seq 64
  run 120 gpu_sft.py --model llama2-7b --batch 2 --seq 64 --remat
  ppo 300 --model smollm2     # 8 prompts x 2, prompt 64 + 8 new tokens; 5 programs compile on the CPU
  ppo 300 --model llama2-7b
else
  run 100 gpu_decode.py --model smollm2 --batches 1,64       # two programs to compile, 4 calls each
  run 130 gpu_decode.py --model llama2-7b --batches 1,64     # ~13 GB bf16 weights + a 13 GB cache at batch 64
  run 120 gpu_sft.py --model smollm2 --batch 8 --seq 1024            # compile dominates: seq 1024 costs about what 512 did
  run 180 gpu_sft.py --model llama2-7b --batch 8 --seq 1024 --remat   # ~13 GB bf16 weights + per-layer checkpoints
  ppo 150 --model smollm2                    # 5 programs (sampler, log-probs, advantages, update), 3 iterations
  ppo 220 --model llama2-7b --iterations 1   # ~13 GB weights; an iteration ~5-10 s (1.3 PFLOP of updates), compile rules
fi
echo "total $(( $(date +%s) - START )) s; results: $RESULTS"
exit $FAILED  # a skipped shape is not a failure; a crashed or timed-out one is
