"""Orbax checkpoints of a training run (SFT, PPO and the teacher alike): an array pytree plus JSON metadata.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed at any moment
leaves the previous checkpoint as the latest one. ``keep`` bounds how many are kept.

Layout: ``<dir>/<step>/state`` (array pytree) and ``<dir>/<step>/meta`` (JSON: data state, counters).
With several processes every process calls ``save``/``restore`` (Orbax coordinates them and writes each
array's shards once); the JSON metadata is written by the primary process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointStore:
    """Saves and restores the complete training state; one instance per run directory."""

    def __init__(self, directory: str | Path, keep: int = 3, create: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, replace: bool = False) -> None:
        """``state``: pytree of arrays (params, optimiser state, raw RNG key data); ``meta``: JSON-able dict.

        ``replace=True`` rewrites ``step`` if it was saved already (e.g. with metadata that a validation at the
        same step has since changed). The old copy is deleted first, so an interruption in between leaves the
        previous step as the latest: a resumed run repeats a few steps, it never reads a stale or half copy."""
        if replace and step in self._manager.all_steps():
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """(state, meta) of ``step``; ``like`` is a pytree with the target structure, shardings and dtypes."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                  meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def read_meta(self, step: int) -> dict:
        """The JSON metadata of ``step`` alone (no arrays are read)."""
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def close(self) -> None:
        self._manager.close()


def save_snapshot(directory: str | Path, tree: Any) -> Path:
    """One array pytree saved to ``directory`` on its own (no steps, no metadata): e.g. the teacher's best
    parameters. Written beside it and renamed into place, so a reader never sees half a snapshot."""
    from reclm_jax.atomic import replace_dir, temp_dir

    final = Path(directory).absolute()
    tmp = temp_dir(final, create=False)  # Orbax creates the folder itself
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp, tree)
        ckptr.wait_until_finished()
    return replace_dir(tmp, final)


def restore_snapshot(directory: str | Path, like: Any) -> Any:
    """The pytree ``save_snapshot`` wrote; ``like`` gives the structure, shapes and dtypes (arrays or
    ``ShapeDtypeStruct``s). Raises ``UserError`` naming the folder when it does not match ``like``."""
    from reclm_jax.atomic import recover_dir
    from reclm_jax.errors import UserError

    path = Path(directory).absolute()
    recover_dir(path)  # a save interrupted mid-swap leaves the previous snapshot as <dir>.old
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            return ckptr.restore(path, abstract)
        except Exception as e:  # structure or shape mismatch: the snapshot is not of this model
            first = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"{path}: cannot be restored into this model ({type(e).__name__}: {first})") from None
