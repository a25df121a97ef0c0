"""The teacher's run folder: resolved config, item order, best parameters (Orbax) and the final report.

    <output_dir>/config.yaml    TeacherConfig (data_path is how a Teacher finds the raw dataset again)
    <output_dir>/items.json     catalogue item ids in embedding-row order (row = index + 1)
    <output_dir>/best/          Orbax checkpoint of the best-on-valid parameters
    <output_dir>/metrics.json   final valid/test report (written last: its presence means training finished)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from reclm_jax.atomic import recover_dir
from reclm_jax.config import CONFIG_FILENAME, load_config
from reclm_jax.errors import UserError
from reclm_jax.teacher.config import TeacherConfig
from reclm_jax.teacher.sasrec import SASRec
from reclm_jax.train.checkpoint import restore_snapshot, save_snapshot

ITEMS_FILE = "items.json"
BEST_DIR = "best"
METRICS_FILE = "metrics.json"


def _params_dict(model: SASRec) -> dict:
    # String keys throughout: Orbax stores list indices as strings anyway.
    def strkeys(d: Any) -> Any:
        return {str(k): strkeys(v) for k, v in d.items()} if isinstance(d, dict) else d

    return strkeys(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def save_params(model: SASRec, out_dir: str | Path) -> Path:
    """Saves the model's parameters to ``<out_dir>/best`` (written beside it, then renamed into place)."""
    return save_snapshot(Path(out_dir) / BEST_DIR, jax.tree.map(np.asarray, _params_dict(model)))


def load_run_config(run_dir: str | Path) -> TeacherConfig:
    run = Path(run_dir)
    if not (run / CONFIG_FILENAME).is_file():
        raise UserError(f"{run}: not a teacher run folder (no {CONFIG_FILENAME}); pass the training output_dir")
    return load_config(TeacherConfig, run / CONFIG_FILENAME)


def load_items(run_dir: str | Path) -> list[str]:
    path = Path(run_dir) / ITEMS_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing; the teacher run folder is incomplete")
    items = json.loads(path.read_text())
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise UserError(f"{path}: must hold a JSON list of item id strings")
    return items


def load_model(run_dir: str | Path, cfg: TeacherConfig, n_items: int) -> SASRec:
    """Builds the model abstractly and fills it from ``<run_dir>/best``."""
    path = (Path(run_dir) / BEST_DIR).absolute()
    recover_dir(path)  # a run killed while replacing best/ leaves the previous best as best.old
    if not path.is_dir():
        raise UserError(f"{path}: no best checkpoint; training has not saved one yet")
    abstract = nnx.eval_shape(lambda: SASRec(n_items, cfg.model, nnx.Rngs(0)))
    restored = restore_snapshot(path, _params_dict(abstract))
    params = nnx.state(abstract, nnx.Param)

    def intkeys(d: Any) -> Any:
        return {(int(k) if k.isdigit() else k): intkeys(v) for k, v in d.items()} if isinstance(d, dict) else d

    nnx.replace_by_pure_dict(params, intkeys(jax.tree.map(jax.numpy.asarray, restored)))
    nnx.update(abstract, params)
    return abstract
