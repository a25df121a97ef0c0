"""JAX's persistent compilation cache, on by default under the reclm-jax cache root.

A stage's programs (the LoRA SFT step, generation's prefill/decode buckets, the teacher's steps) are the same
from run to run, so every ``python -m reclm_jax.<stage>`` stores its compiled executables on disk and the next
run loads them instead of compiling again (how much that saves on XLA:CPU: see ``MIN_COMPILE_TIME_SECS``).

Where (``RECLM_JAX_COMPILATION_CACHE``):

- unset, empty, ``1``/``on``/``true``/``yes``: ``<cache root>/jax_compilation_cache`` (cache root:
  ``$RECLM_JAX_CACHE``, default ``~/.cache/reclm_jax``), unless the user set JAX's own options
  (``JAX_COMPILATION_CACHE_DIR``: that folder; ``JAX_ENABLE_COMPILATION_CACHE=false``: off; or the same
  options through ``jax.config``);
- ``0``/``off``/``false``/``no``: the persistent cache is off (``jax_enable_compilation_cache`` false, which
  also overrides a ``JAX_COMPILATION_CACHE_DIR``: the opt-out means no cache);
- anything else: a directory to use instead.

The folder can be deleted at any time (entries are recompiled on demand). Entries are keyed by the program's
StableHLO (without source locations), the compile options (XLA_FLAGS included), the devices and the
jax/jaxlib versions, so a code change, another shape or another jax version makes new entries instead of
reusing stale ones; old ones stay until the folder is removed (JAX does no eviction unless
``jax_compilation_cache_max_size`` is set). The entries are executables that the process runs: never point
the cache at a folder other users can write to.

Configure it before the first compile of the process: JAX builds its cache object at the first compile that
consults it and keeps it. Setting ``JAX_COMPILATION_CACHE_DIR`` in ``os.environ`` after ``import jax`` does
nothing at all (JAX reads its environment variables once, at import), so once jax is imported this module uses
``jax.config.update`` instead, and resets JAX's cache object when it changes the configuration.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "RECLM_JAX_COMPILATION_CACHE"
SUBDIR = "jax_compilation_cache"

_OFF = {"0", "off", "false", "no"}
_ON = {"", "1", "on", "true", "yes"}
_JAX_FALSE = {"n", "no", "f", "false", "off", "0"}  # what JAX's own boolean environment variables read as false

# Programs that compiled faster than this are not written. JAX's default (1 s) would skip many of the test
# suite's tiny-model programs (a fraction of a second to a few seconds each, many per test); below ~0.1 s
# (eager op-by-op dispatch: one tiny executable per primitive and shape) a disk read plus deserialisation saves
# nothing and would only fill the folder with thousands of files.
#
# A hit is not free on XLA:CPU (jaxlib 0.10.2): loading rebuilds the buffer assignment (alias analysis over the
# whole HLO module), every thunk and each thunk executor's dependency graph, and that grows faster than the
# program. Measured on a loaded 2-CPU machine, SFT step of SmolLM2 widths (cold compile -> load): 1 layer
# 13 s -> 0.5 s, 8 layers 33 s -> 5 s, all 30 layers (unrolled) 214 s -> 174-203 s. So the cache pays off for
# small and medium programs (the test suite, short generation buckets) and on GPU/TPU, and for the full CPU step
# a hit costs about what compiling would; it stays on everywhere because a hit was never slower than a compile.
MIN_COMPILE_TIME_SECS = 0.1

# Left at JAX's defaults, on purpose:
# - jax_persistent_cache_min_entry_size_bytes (0: JAX may pick a filesystem-specific floor; open-source JAX
#   picks 0, i.e. no size floor): the compile-time floor above already keeps out the trivial programs.
# - jax_persistent_cache_enable_xla_caches ("xla_gpu_per_fusion_autotune_cache_dir"): on GPU, XLA's per-fusion
#   autotuning results are stored in a subfolder of the same cache, so a miss there still skips autotuning; no
#   effect on CPU or TPU.
# - jax_compilation_cache_max_size (-1: no limit): eviction needs a lock file and a directory scan on every
#   write; the entries of one setup are a few MB each, and deleting the folder is the way to reclaim space.


def resolve_dir() -> Path | None:
    """The folder the persistent cache should use, or ``None`` if ``RECLM_JAX_COMPILATION_CACHE`` turns it off."""
    from reclm_jax.assets import cache_dir

    env = os.environ
    value = env.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value.lower() not in _ON:
        return Path(value).expanduser()
    # Without a RECLM_JAX_COMPILATION_CACHE value, the user's own JAX settings (JAX_ENABLE_COMPILATION_CACHE,
    # JAX_COMPILATION_CACHE_DIR, or the same options set in code) win over the default folder.
    if "jax" in sys.modules:
        config = sys.modules["jax"].config
        enabled, chosen = config.jax_enable_compilation_cache, config.jax_compilation_cache_dir
    else:
        enabled = env.get("JAX_ENABLE_COMPILATION_CACHE", "1").strip().lower() not in _JAX_FALSE
        chosen = env.get("JAX_COMPILATION_CACHE_DIR")
    if not enabled:
        return None
    return Path(chosen).expanduser() if chosen else cache_dir() / SUBDIR


def enable_compilation_cache() -> Path | None:
    """Configures JAX's persistent compilation cache as ``RECLM_JAX_COMPILATION_CACHE`` says (see the module
    docstring) and returns its folder, or ``None`` when turned off. Idempotent; call it before the first compile.

    Before ``import jax`` it sets JAX's environment variables (read once, at import), so stages that import jax
    lazily, or never, pay nothing here; child processes inherit the same setting. After ``import jax`` it uses
    ``jax.config.update``. ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` already in the environment keeps its
    value (a user's explicit choice wins over ``MIN_COMPILE_TIME_SECS``).
    """
    try:
        path = resolve_dir()
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
    except Exception as e:
        # E.g. a read-only home, or no home at all (Path.home() raises RuntimeError): a slower start, never a
        # reason to stop the stage (run_main calls this before every stage). One line, whatever the message.
        message = " ".join(f"{type(e).__name__}: {e}".split())
        print(f"warning: JAX compilation cache off ({message})", file=sys.stderr)
        return None
    if "jax" not in sys.modules:
        if path is None:
            os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
        else:
            os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "true"
            os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
            os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_COMPILE_TIME_SECS))
        return path

    import jax
    from jax.experimental.compilation_cache import compilation_cache as jax_cc

    before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", str(path))
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    if (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir) != before:
        # JAX decides whether to use the cache, and opens its folder, once per process at the first compile
        # that consults it; a reset makes it decide again (a no-op when nothing has compiled yet).
        jax_cc.reset_cache()
    return path
