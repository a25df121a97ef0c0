# Sourced by quickstart.sh and quickstart_test_stage.sh: their one flag (--small) and the folders they share.
# The sourcing script defines usage() (its --help text) first.
DATASET=ml-1m
for arg in "$@"; do
  case "$arg" in
    --small) DATASET=ml-100k ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $arg (use --small for MovieLens-100K)" >&2; exit 2 ;;
  esac
done
CACHE="${RECLM_JAX_CACHE:-$HOME/.cache/reclm_jax}"
RUNS="${RECLM_JAX_RUNS:-runs}"
DATA_DIR="$CACHE/datasets/$DATASET"
MODEL_DIR="$CACHE/models/smollm2-135m-instruct"
TEACHER_RUN="$RUNS/teacher_${DATASET/-/}"
SFT_RUN="$RUNS/quickstart_sft_${DATASET/-/}"
RL_RUN="$RUNS/quickstart_rl_${DATASET/-/}"
