"""JAX's persistent compilation cache: a second process loads the SFT step instead of compiling it; opt-out.

Every check runs in fresh subprocesses (the cache only matters across processes, and JAX configures it once
per process) and counts JAX's own monitoring events around one compile, never wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from reclm_jax.compile_cache import ENV, SUBDIR

ROOT = Path(__file__).resolve().parents[1]

# Counts JAX's persistent-cache events of the compiles inside `counted()` only, and prints them with the folder
# the cache setup chose as one JSON line.
COUNTING = """
import collections, contextlib, json, sys
import jax
from jax import monitoring

_events = collections.Counter()
monitoring.register_event_listener(lambda event, **_: _events.update([event]))


@contextlib.contextmanager
def counted(out):
    before = dict(_events)
    yield
    for name in ("cache_hits", "cache_misses", "compile_requests_use_cache"):
        key = "/jax/compilation_cache/" + name
        out[name] = _events[key] - before.get(key, 0)
"""

# The library's real SFT step (LoRA on every linear layer, dropout on, AdamW, 2 micro-batches) on the tiny
# SmolLM2-shaped model, compiled ahead of time. jax is imported before the cache is configured, as
# `python -m reclm_jax.sft` does (its module imports jax before run_main runs).
SFT_STEP = COUNTING + """
from reclm_jax.compile_cache import enable_compilation_cache
import jax.numpy as jnp
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.lora import LoraConfig, add_lora, split_trainable
from reclm_jax.train.optim import OptimConfig, make_optimizer
from reclm_jax.sft.step import Batch, make_train_step

out = {"dir": str(enable_compilation_cache())}
model = load_llama(sys.argv[1], progress=False)
add_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.1, targets=("q_proj", "v_proj", "down_proj", "lm_head")),
         "default", seed=0)
graphdef, trainable, frozen = split_trainable(model)
tx = make_optimizer(OptimConfig(), total_steps=10)
step = make_train_step(graphdef, tx, weighting="token")
ones = jnp.ones((2, 2, 16), jnp.int32)
lowered = step.lower(trainable, tx.init(trainable), frozen, Batch(ones * 5, ones, ones), jax.random.key(0))
with counted(out):
    lowered.compile()
print("RESULT " + json.dumps(out))
"""

# A small program through the stage entry wrapper, before jax is imported (as the stages that import jax
# lazily: generate, export).
VIA_RUN_MAIN = """
from reclm_jax.cli import run_main

def main():
    from reclm_jax.compile_cache import resolve_dir
""" + textwrap.indent(COUNTING, "    ") + """
    import jax.numpy as jnp
    out = {"dir": str(resolve_dir())}
    lowered = jax.jit(lambda x: jnp.tanh(x @ x.T) * 3.0).lower(jax.ShapeDtypeStruct((32, 32), jnp.float32))
    with counted(out):
        lowered.compile()
    print("RESULT " + json.dumps(out))

run_main(main)
"""


# The cache root cannot be found (no home: Path.home() raises RuntimeError): the stage still runs, without a
# persistent cache, after one warning line.
NO_CACHE_ROOT = """
import reclm_jax.assets
from reclm_jax.cli import run_main


def no_home():
    raise RuntimeError("Could not determine home directory.")


reclm_jax.assets.cache_dir = no_home  # what compile_cache.resolve_dir calls for the default folder


def main():
    import json
    import jax
    import jax.numpy as jnp
    value = float(jax.jit(lambda x: jnp.tanh(x).sum())(jnp.ones(4)))
    print("RESULT " + json.dumps({"value": value, "dir": jax.config.jax_compilation_cache_dir}))

run_main(main)
"""


def _run(code: str, env: dict, *args: str, stderr: list | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "RECLM_JAX_"))} | env
    env |= {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stderr[-3000:]
    if stderr is not None:
        stderr.append(r.stderr)
    return json.loads(lines[-1][len("RESULT "):])


def test_second_process_loads_the_sft_step_from_the_persistent_cache(tiny_llama_factory, tmp_path):
    cache = tmp_path / "xla"
    env = {ENV: str(cache)}
    model = str(tiny_llama_factory("smollm2", num_layers=1))  # one layer: the same step, half the compile
    first = _run(SFT_STEP, env, model)
    assert first["dir"] == str(cache)
    assert (first["cache_hits"], first["cache_misses"]) == (0, 1)
    # The default threshold (0.1 s of compile) let the step in: its compile is far above it even on a fast CPU.
    steps = sorted(p.name for p in cache.glob("jit_step-*"))
    assert len(steps) == 1, steps
    second = _run(SFT_STEP, env, model)
    assert (second["cache_hits"], second["cache_misses"]) == (1, 0)
    # Same key in the second process (small eager programs near the threshold may add entries under load).
    assert sorted(p.name for p in cache.glob("jit_step-*")) == steps


def test_run_main_turns_the_cache_on_under_the_cache_root(tmp_path):
    # No RECLM_JAX_COMPILATION_CACHE: the default folder under $RECLM_JAX_CACHE. The threshold is lifted because
    # this small program may compile in under 0.1 s; what is tested is the setup done before `import jax`.
    env = {"RECLM_JAX_CACHE": str(tmp_path), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    first = _run(VIA_RUN_MAIN, env)
    assert first["dir"] == str(tmp_path / SUBDIR)
    assert (first["cache_hits"], first["cache_misses"]) == (0, 1)
    second = _run(VIA_RUN_MAIN, env)
    assert (second["cache_hits"], second["cache_misses"]) == (1, 0)


def test_opt_out_turns_the_cache_off_even_with_a_jax_cache_dir(tmp_path):
    jax_dir = tmp_path / "jax_dir"
    env = {"RECLM_JAX_CACHE": str(tmp_path), ENV: "0", "JAX_COMPILATION_CACHE_DIR": str(jax_dir),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    for _ in range(2):
        out = _run(VIA_RUN_MAIN, env)
        assert out["dir"] == "None"
        assert out["compile_requests_use_cache"] == 0  # the cache is not even consulted
    assert not (tmp_path / SUBDIR).exists()
    assert not jax_dir.exists() or not any(jax_dir.iterdir())


def test_a_jax_cache_dir_is_kept_when_reclm_sets_none(tmp_path):
    jax_dir = tmp_path / "jax_dir"
    env = {"RECLM_JAX_CACHE": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": str(jax_dir),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    out = _run(VIA_RUN_MAIN, env)
    assert out["dir"] == str(jax_dir)
    assert any(p.name.startswith("jit_") for p in jax_dir.iterdir())
    assert not (tmp_path / SUBDIR).exists()


def test_a_failing_cache_root_warns_once_and_the_stage_runs_without_a_cache():
    stderr = []
    out = _run(NO_CACHE_ROOT, {}, stderr=stderr)
    assert out["value"] > 0 and out["dir"] is None  # the program ran; no persistent cache folder was set
    warnings = [ln for ln in stderr[0].splitlines() if "compilation cache" in ln]
    assert warnings == ["warning: JAX compilation cache off (RuntimeError: Could not determine home directory.)"]
