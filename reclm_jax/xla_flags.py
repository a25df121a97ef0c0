"""A mesh preset's XLA flags (``mesh.xla_flags``) added to ``XLA_FLAGS`` before JAX starts its backend.

XLA reads ``XLA_FLAGS`` once, when the first backend is created (the first ``jax.devices()`` or computation),
so a stage's entry point calls ``apply_xla_flags`` right after its config is loaded and before the trainer
touches a device. A flag the user already set in ``XLA_FLAGS`` keeps the user's value: the launch environment
wins over the preset. Why each preset sets its flags: the comments in ``configs/mesh/*.yaml`` and
docs/scale.md ("Mesh presets and XLA flags").
"""

from __future__ import annotations

import os
import sys
from typing import MutableMapping, Sequence

ENV = "XLA_FLAGS"


def flag_name(flag: str) -> str:
    """``--xla_gpu_x=true`` -> ``--xla_gpu_x``."""
    return flag.split("=", 1)[0]


def merged_xla_flags(current: str, flags: Sequence[str]) -> str:
    """``current`` (an ``XLA_FLAGS`` value) plus every flag of ``flags`` whose name it does not already set."""
    have = {flag_name(f) for f in current.split()}
    extra = [f for f in flags if flag_name(f) not in have]
    return " ".join([current.strip(), *extra]).strip()


def apply_xla_flags(flags: Sequence[str], env: MutableMapping[str, str] | None = None) -> str:
    """Adds ``flags`` to ``env[XLA_FLAGS]`` (default: this process's environment) and returns the new value.

    If JAX's backend is already running the flags cannot take effect any more: a warning on stderr says so
    (the values stay in the environment, e.g. for subprocesses).
    """
    env = os.environ if env is None else env
    before = env.get(ENV, "")
    after = merged_xla_flags(before, flags)
    if after != before:
        env[ENV] = after
        if env is os.environ and _backend_started():
            print(f"warning: XLA_FLAGS set after JAX started its backend, so these have no effect: "
                  f"{after[len(before):].strip()}; set them in the launch environment instead", file=sys.stderr)
    return after


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge  # private, but the only way to ask; absent API reads as "not started"

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False
