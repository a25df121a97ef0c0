"""The start of a trainer's run, shared by every stage: save the config, resume if asked, open the run log."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from reclm_jax.config import save_config
from reclm_jax.train.run_log import RunLog


def start_run(cfg: Any, out: Path, runtime, restore_latest: Callable[[], bool], progress: bool) -> tuple[bool, RunLog]:
    """Writes ``cfg`` to ``out/config.yaml`` (primary process only), restores the latest checkpoint when
    ``cfg.resume`` (``restore_latest()``: True when one was found) and opens the run's ``RunLog``.

    Returns (resumed, log)."""
    if runtime.is_primary:
        save_config(cfg, out)
    resumed = bool(cfg.resume) and restore_latest()
    if cfg.resume and not resumed and runtime.is_primary:
        print(f"no checkpoint in {out / 'checkpoints'}; starting from scratch")
    return resumed, RunLog(out, primary=runtime.is_primary, progress=progress)
