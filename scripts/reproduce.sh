#!/usr/bin/env bash
# The paper's whole pipeline at the paper's settings (RecLM-gen, ACL 2024), on one machine with GPUs:
#   1. MovieLens-1M in the raw RecLM-gen format
#   2. the SASRec teacher, trained to convergence (early stopping after 10 epochs without a better NDCG@10)
#   3. LoRA SFT of MODEL_DIR (the paper: Llama-2-7b-chat-hf) with configs/sft_llama2_7b_paper.yaml: 40 epochs,
#      64 sequences per update, lr 1e-3, ShareGPT mixed in at ratio 0.5 (with --sharegpt)
#   4. merge the best validation adapter into an HF folder
#   5. PPO of the merged SFT model with configs/rl_llama2_7b_paper.yaml (NR-20.1 reward, 2 episodes)
#   6. merge the RL actor
#   7. the test stage on every test user: the base model (as a general LLM), SFT and RL served one at a time by
#      vLLM (scripts/serve_vllm.sh) and asked the original's 7 test tasks; the teacher and popularity baselines
#   8. one report of all five: $RUNS/report/index.html
# Usage: scripts/reproduce.sh MODEL_DIR [--gpus N] [--sharegpt FILE] [--dry-run]
#   --gpus N        GPUs to train on: 1 (configs/mesh/gpu1.yaml, the default), 8 (gpu8_fsdp.yaml), or 2 or 4
#                   (gpu8_fsdp.yaml with mesh.fsdp=N); the global batch stays the paper's 64 sequences
#   --sharegpt FILE ShareGPT conversations (JSON or the original's pickle); without it the ShareChatGPT task is
#                   left out (reclm-jax does not ship ShareGPT)
#   --dry-run       print the commands instead of running them
# Folders: the dataset under $RECLM_JAX_CACHE/datasets/ml-1m (default ~/.cache/reclm_jax), runs under $RUNS
# ($RECLM_JAX_RUNS/paper, default ./runs/paper). Run it again after a stop: a finished stage is skipped (the
# teacher's metrics.json, SFT's and RL's merged/), a stopped SFT or RL run resumes from its latest checkpoint,
# and the test client re-asks nothing it has an answer for. EVAL_PORT (default 13579) is the servers' port.
# Expected time per stage: docs/scale.md, "Reproducing the paper".
set -euo pipefail
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$SCRIPT"; }  # the header above
die() { echo "error: $*" >&2; exit 2; }

MODEL_DIR="" GPUS=1 SHAREGPT="" DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --gpus) [ $# -ge 2 ] || die "--gpus needs a number"; GPUS="$2"; shift 2 ;;
    --sharegpt) [ $# -ge 2 ] || die "--sharegpt needs a file"; SHAREGPT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$MODEL_DIR" ] || die "one MODEL_DIR expected, got a second: $1"; MODEL_DIR="$1"; shift ;;
  esac
done
[ -n "$MODEL_DIR" ] || { usage >&2; die "MODEL_DIR is required (an HF Llama folder, e.g. Llama-2-7b-chat-hf)"; }
[ -f "$MODEL_DIR/config.json" ] || die "MODEL_DIR $MODEL_DIR: not an HF model folder (no config.json)"
[ -z "$SHAREGPT" ] || [ -f "$SHAREGPT" ] || die "--sharegpt $SHAREGPT: no such file"
# Paths as given are relative to the caller's folder; the stage commands run from the repository's root.
MODEL_DIR="$(cd "$MODEL_DIR" && pwd)"
[ -z "$SHAREGPT" ] || SHAREGPT="$(cd "$(dirname "$SHAREGPT")" && pwd)/$(basename "$SHAREGPT")"
cd "$(dirname "$SCRIPT")/.."
# The mesh: a preset of configs/mesh/ (why these: docs/scale.md, "Mesh presets and XLA flags").
case "$GPUS" in
  1) MESH=(mesh=configs/mesh/gpu1.yaml) ;;
  8) MESH=(mesh=configs/mesh/gpu8_fsdp.yaml) ;;
  2|4) MESH=(mesh=configs/mesh/gpu8_fsdp.yaml "mesh.fsdp=$GPUS" "mesh.devices=$GPUS") ;;
  *) die "--gpus must be 1, 2, 4 or 8 (one machine; several: docs/scale.md), got '$GPUS'" ;;
esac
if [ -n "$SHAREGPT" ]; then
  SFT_DATA=("data.share_chat_gpt_path=$SHAREGPT")
else
  SFT_DATA=("data.train_tasks=[SFTSeqRec,SFTPersonalControlRec,SFTControlRec_re,SFTPersonalCategoryRate]")
fi

CACHE="${RECLM_JAX_CACHE:-$HOME/.cache/reclm_jax}"
RUNS="${RECLM_JAX_RUNS:-runs}/paper"
DATA_DIR="$CACHE/datasets/ml-1m"
TEACHER_RUN="$RUNS/teacher_ml1m"
SFT_RUN="$RUNS/sft"
RL_RUN="$RUNS/rl"
EVAL_DIR="$RUNS/eval"
EVAL_PORT="${EVAL_PORT:-13579}"
if [ "$DRY_RUN" = 0 ]; then
  # An explicit (empty) extra: a bare 'source' would hand this script's arguments to setup_venv.sh.
  source scripts/setup_venv.sh ""
  mkdir -p "$EVAL_DIR"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }
run() { printf '%q ' "$@"; echo; [ "$DRY_RUN" = 1 ] || "$@"; }
done_already() { [ "$DRY_RUN" = 0 ] && [ -e "$1" ] && echo "already done ($1 exists; delete it to redo)"; }

stamp "== [1/8] dataset: ml-1m -> $DATA_DIR"
run python -m reclm_jax.datasets.prepare --dataset ml-1m --out "$DATA_DIR"
stamp "== [2/8] teacher: SASRec to convergence -> $TEACHER_RUN"
done_already "$TEACHER_RUN/metrics.json" ||
  run python -m reclm_jax.teacher.train --config configs/teacher_ml1m.yaml data_path="$DATA_DIR" \
    output_dir="$TEACHER_RUN"
stamp "== [3/8] LoRA SFT of $MODEL_DIR at the paper's settings on $GPUS GPU(s) -> $SFT_RUN"
done_already "$SFT_RUN/merged" ||
  run python -m reclm_jax.sft --config configs/sft_llama2_7b_paper.yaml model.path="$MODEL_DIR" \
    data_path="$DATA_DIR" teacher.checkpoint="$TEACHER_RUN" output_dir="$SFT_RUN" resume=true "${MESH[@]}" \
    "${SFT_DATA[@]}"
stamp "== [4/8] merge the best SFT adapter -> $SFT_RUN/merged"
done_already "$SFT_RUN/merged" || run python -m reclm_jax.sft.merge --run "$SFT_RUN"
stamp "== [5/8] PPO of the merged SFT model at the paper's settings -> $RL_RUN"
done_already "$RL_RUN/merged" ||
  run python -m reclm_jax.rl --config configs/rl_llama2_7b_paper.yaml model.path="$SFT_RUN/merged" \
    data_path="$DATA_DIR" teacher.checkpoint="$TEACHER_RUN" output_dir="$RL_RUN" resume=true "${MESH[@]}"
stamp "== [6/8] merge the RL actor -> $RL_RUN/merged"
done_already "$RL_RUN/merged" || run python -m reclm_jax.rl.merge --run "$RL_RUN"

stamp "== [7/8] test stage: base, SFT and RL on every test user (vLLM), and the baselines"
source scripts/serve_eval.sh
# bf16 as trained; 2048 positions hold the longest prompt (512 tokens, general-LLM prompts somewhat more) + 512
server_command() { SERVER=(bash scripts/serve_vllm.sh --name "$1" --dtype bfloat16 --max-model-len 2048 "$2" "$EVAL_PORT"); }
# The paper's test flags: llama-2 chat format, title64_t, numbered top-10 lists of up to 512 new tokens.
EVAL=(--item_index title64_t --chat_template llama-2 --topk 10 --max_tokens 512 --concurrency 64)
serve_and_eval base "$MODEL_DIR" "${EVAL[@]}" --general_llm
serve_and_eval sft "$SFT_RUN/merged" "${EVAL[@]}"
serve_and_eval rl "$RL_RUN/merged" "${EVAL[@]}"
for kind in teacher popularity; do
  run python -m reclm_jax.eval.baselines --kind "$kind" --data_path "$DATA_DIR" --teacher_checkpoint "$TEACHER_RUN" \
    --item_index title64_t --tokenizer "$MODEL_DIR" --output_dir "$EVAL_DIR/$kind"
done
stamp "== [8/8] report -> $RUNS/report/index.html"
run python -m reclm_jax.eval.report "$EVAL_DIR/base" "$EVAL_DIR/sft" "$EVAL_DIR/rl" "$EVAL_DIR/teacher" \
  "$EVAL_DIR/popularity" --out "$RUNS/report" --title "RecLM-gen reproduction on ml-1m: every test user"
stamp "reproduction done"
