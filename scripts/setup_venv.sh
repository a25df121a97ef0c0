# Sourced by the other scripts: makes sure .venv exists and holds reclm-jax (editable) with the given extras.
# Usage: source scripts/setup_venv.sh [extra]
# Idempotent: re-installs only when pyproject.toml or the extras changed since the last successful install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRA="${1:-}"
if [[ -n "$EXTRA" && ! "$EXTRA" =~ ^[a-z0-9][a-z0-9_,-]*$ ]]; then
  echo "error: setup_venv.sh: '$EXTRA' is not a pyproject extra (e.g. test, gpu)" >&2
  exit 2
fi
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  echo "error: reclm-jax needs Python >= 3.10 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.1x" >&2
  exit 2
fi
LOG="$VENV/pip-install.log"
pip_quiet() {  # pip's own chatter goes to a log; it is shown only if the install fails
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" >>"$LOG" 2>&1; then
    echo "error: pip install $* failed; the end of $LOG:" >&2
    grep -v 'WARNING: Location' "$LOG" | tail -n 25 >&2
    exit 1
  fi
}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
  : >"$LOG"
  pip_quiet --upgrade pip
fi
STAMP="$VENV/.reclm_jax_installed${EXTRA:+_$EXTRA}"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) ${EXTRA}"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  if [ "$EXTRA" = "test" ] && ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    # torch is only a test/baseline dependency. Name the CPU build explicitly: a bare 'torch' requirement can
    # resolve to a multi-GB CUDA build. Override with TORCH_SPEC (e.g. TORCH_SPEC='torch==2.5.1').
    echo "[setup] installing ${TORCH_SPEC:-torch==2.13.0} (tests only)"
    pip_quiet "${TORCH_SPEC:-torch==2.13.0}"
  fi
  echo "[setup] installing reclm-jax${EXTRA:+[$EXTRA]} into $VENV (first run takes a minute)"
  pip_quiet -e "$ROOT${EXTRA:+[$EXTRA]}"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
