# Sourced by quickstart_test_stage.sh and reproduce.sh: serve_and_eval NAME MODEL_DIR [client flags...] starts
# the caller's server for MODEL_DIR in the background (the caller defines server_command NAME MODEL_DIR, which
# sets the array SERVER), waits until its /health answers, runs the test client (`python -m reclm_jax.eval`) on
# it with the flags given, and stops it. Needs EVAL_PORT, EVAL_DIR and DATA_DIR. With DRY_RUN=1 it prints the
# two commands instead (the server's with a trailing &).
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null || true' EXIT

serve_and_eval() {
  local name=$1 dir=$2
  shift 2
  server_command "$name" "$dir"
  local client=(python -m reclm_jax.eval --base-url "http://127.0.0.1:$EVAL_PORT/v1" --model-name "$name"
                --data_path "$DATA_DIR" --tokenizer "$dir" --output_dir "$EVAL_DIR/$name" "$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${SERVER[@]}"; echo "&"
    printf '%q ' "${client[@]}"; echo
    return
  fi
  echo "-- $name: serving $dir on port $EVAL_PORT"
  "${SERVER[@]}" >"$EVAL_DIR/$name.serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 1800); do
    curl -sf "http://127.0.0.1:$EVAL_PORT/health" >/dev/null 2>&1 && break
    if ! kill -0 "$server" 2>/dev/null; then
      echo "error: the server for $name stopped; the end of $EVAL_DIR/$name.serve.log:" >&2
      tail -20 "$EVAL_DIR/$name.serve.log" >&2
      exit 1
    fi
    sleep 1
  done
  if ! curl -sf "http://127.0.0.1:$EVAL_PORT/health" >/dev/null 2>&1; then
    echo "error: the server for $name did not answer /health within 30 minutes; the end of $EVAL_DIR/$name.serve.log:" >&2
    tail -20 "$EVAL_DIR/$name.serve.log" >&2
    exit 1
  fi
  "${client[@]}"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
}
