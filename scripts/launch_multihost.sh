#!/usr/bin/env bash
# Starts one reclm-jax stage as a multi-host JAX program: N hosts x M GPUs, one process per host (it sees all M
# GPUs) or, with --process-per-gpu, M processes per host (one GPU each). Every process gets the same command
# and three variables that reclm_jax/train/distributed.py reads before anything touches a device:
#   RECLM_JAX_COORDINATOR=<first host>:<port>  RECLM_JAX_NUM_PROCESSES=<N or N*M>  RECLM_JAX_PROCESS_ID=<k>
# (and RECLM_JAX_LOCAL_DEVICE_IDS=<j> with --process-per-gpu). Process 0 runs on the first host and is the
# primary: it writes the run's logs, config, adapters and exports; every process writes its own checkpoint
# shards, so output_dir must be on a filesystem all hosts share (as must the model and data paths).
#
#   scripts/launch_multihost.sh --hosts gpu0,gpu1 -- python -m reclm_jax.sft --config configs/sft_X.yaml ...
#       from one machine: ssh to each host (the first host may be this one), wait for all, exit with the first
#       failure's code.
#   scripts/launch_multihost.sh --hosts gpu0,gpu1 --host-index 1 -- python -m reclm_jax.sft ...
#       on host 1 itself (your own launcher starts the script once per host): only that host's processes.
#   --dry-run prints the command of every process instead of running it.
#
# SLURM (scripts/slurm_example.sbatch) and Cloud TPU VMs need no launcher: JAX reads their environment.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/launch_multihost.sh --hosts H0,H1,... [options] -- COMMAND [ARG ...]

  --hosts LIST        comma-separated hosts; the first runs process 0 and the coordinator (required)
  --port P            coordinator port on the first host (default 29500)
  --gpus-per-host M   GPUs on each host (default 1); matters with --process-per-gpu
  --process-per-gpu   M processes per host, one GPU each (default: one process per host, all its GPUs)
  --host-index I      run only host I's processes, here, without ssh (for launchers that start every host)
  --workdir DIR       directory the remote commands run in (default: this directory)
  --export NAME=VAL   extra environment for every process (repeatable; e.g. XLA_FLAGS=...)
  --dry-run           print each process's command, run nothing
  -h, --help          this text
EOF
}

hosts="" port=29500 gpus=1 per_gpu=0 host_index="" workdir="$PWD" dry=0
exports=()
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts) hosts="${2:?--hosts needs a value}"; shift 2 ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --gpus-per-host) gpus="${2:?--gpus-per-host needs a value}"; shift 2 ;;
    --process-per-gpu) per_gpu=1; shift ;;
    --host-index) host_index="${2:?--host-index needs a value}"; shift 2 ;;
    --workdir) workdir="${2:?--workdir needs a value}"; shift 2 ;;
    --export) exports+=("${2:?--export needs NAME=VALUE}"); shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown argument $1 (the stage command goes after --)" >&2; usage >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "error: no command given after --" >&2; usage >&2; exit 2; }
[ -n "$hosts" ] || { echo "error: --hosts is required" >&2; exit 2; }
for v in port gpus; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "error: --${v/gpus/gpus-per-host} must be a positive integer, got '${!v}'" >&2; exit 2; }
done
for e in "${exports[@]+"${exports[@]}"}"; do
  [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "error: --export wants NAME=VALUE, got '$e'" >&2; exit 2; }
done
IFS=, read -r -a host_list <<< "$hosts"
n_hosts=${#host_list[@]}
for h in "${host_list[@]}"; do
  [ -n "$h" ] || { echo "error: --hosts has an empty entry: '$hosts'" >&2; exit 2; }
done
if [ -n "$host_index" ] && ! { [[ "$host_index" =~ ^[0-9]+$ ]] && [ "$host_index" -lt "$n_hosts" ]; }; then
  echo "error: --host-index must be in 0..$((n_hosts - 1)), got '$host_index'" >&2; exit 2
fi
per_host=1
[ "$per_gpu" = 1 ] && per_host=$gpus
total=$((n_hosts * per_host))
coordinator="${host_list[0]}:$port"

is_here() {  # run this host's processes without ssh
  case "$1" in localhost|127.0.0.1|::1|"$(hostname)"|"$(hostname -f 2>/dev/null || hostname)") return 0 ;; esac
  return 1
}

pids=()
for ((i = 0; i < n_hosts; i++)); do
  [ -n "$host_index" ] && [ "$i" != "$host_index" ] && continue
  host="${host_list[$i]}"
  for ((j = 0; j < per_host; j++)); do
    pid=$((i * per_host + j))
    vars=("RECLM_JAX_COORDINATOR=$coordinator" "RECLM_JAX_NUM_PROCESSES=$total" "RECLM_JAX_PROCESS_ID=$pid")
    [ "$per_gpu" = 1 ] && vars+=("RECLM_JAX_LOCAL_DEVICE_IDS=$j")
    vars+=("${exports[@]+"${exports[@]}"}")
    line="env $(printf '%q ' "${vars[@]}")$(printf '%q ' "$@")"
    line="${line% }"
    if [ -n "$host_index" ] || is_here "$host"; then
      run=(bash -c "cd $(printf '%q' "$workdir") && $line")  # --workdir holds here as over ssh
      shown="[$host process $pid] $line"
    else
      remote="cd $(printf '%q' "$workdir") && $line"
      run=(ssh -o BatchMode=yes "$host" "$remote")
      shown="[$host process $pid] ssh $host '$remote'"
    fi
    if [ "$dry" = 1 ]; then
      echo "$shown"
    else
      "${run[@]}" &
      pids+=($!)
    fi
  done
done
[ "$dry" = 1 ] && exit 0
code=0
for p in "${pids[@]}"; do
  wait "$p" || { rc=$?; [ "$code" = 0 ] && code=$rc; }  # the others stop on their own: JAX's heartbeat
done
exit "$code"
