"""The explicit device runtime every entry point builds once: the mesh, this process's place in it, batch placement.

Why one object: the activation sharding constraints of ``models/sharding.py`` only apply while a mesh is set
(``jax.set_mesh``), batches must be assembled from *process-local* rows on more than one host, and only one
process may write files. Passing a ``Runtime`` makes all three explicit instead of each stage guessing.

``train.batch_size`` (and every other batch size in a config) is **global**: summed over all processes. Each
process loads ``batch_size // process_count`` rows (``local_rows``) and ``place`` assembles the global array.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reclm_jax.errors import UserError
from reclm_jax.models.adapter_io import host_array
from reclm_jax.models.sharding import BATCH, MeshConfig, make_mesh


@dataclasses.dataclass(frozen=True)
class Runtime:
    """mesh: the (data, fsdp, tp) mesh over every device of every process; process_index / process_count:
    this process and how many there are (``jax.process_index()``, ``jax.process_count()``)."""

    mesh: Mesh
    process_index: int = 0
    process_count: int = 1

    @classmethod
    def create(cls, mesh: MeshConfig = MeshConfig(), devices=None) -> "Runtime":
        """The runtime over ``devices`` (default: all devices of all processes)."""
        return cls(make_mesh(mesh, devices), jax.process_index(), jax.process_count())

    @property
    def is_primary(self) -> bool:
        """Process 0: the one that writes logs, configs, adapters and exports."""
        return self.process_index == 0

    @contextlib.contextmanager
    def activate(self) -> Iterator["Runtime"]:
        """Sets the mesh (``jax.set_mesh``) so traced code sees it: the models' ``constrain`` calls apply."""
        with jax.set_mesh(self.mesh):
            yield self

    # -- agreement across processes ---------------------------------------------------------------------
    def agree_max(self, values: Sequence[int]) -> list[int]:
        """Element-wise maximum of ``values`` over all processes (a collective: every process calls it), so
        that processes padding their own rows choose the same bucketed global shape. Identity with one
        process."""
        values = [int(v) for v in values]
        if self.process_count == 1:
            return values
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(np.asarray(values, np.int64))
        return [int(v) for v in np.max(np.asarray(gathered).reshape(self.process_count, -1), axis=0)]

    def primary_decides(self, flag: bool) -> bool:
        """The primary process's ``flag`` on every process (a collective), for decisions such as "the time
        budget is spent" that each process's own clock could answer differently."""
        if self.process_count == 1:
            return bool(flag)
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))

    # -- batches ----------------------------------------------------------------------------------------
    @property
    def batch_ways(self) -> int:
        """How many ways the batch dimension is split (the mesh's data x fsdp axes)."""
        return int(np.prod([self.mesh.shape[a] for a in BATCH]))

    def local_rows(self, global_rows: int, what: str = "batch size") -> int:
        """Rows this process supplies for a global batch of ``global_rows`` (``UserError`` if it does not divide)."""
        if global_rows % self.process_count:
            raise UserError(f"{what} {global_rows} is global and must be divisible by the number of processes "
                            f"({self.process_count})")
        return global_rows // self.process_count

    def batch_sharding(self, ndim: int, global_rows: int, batch_dim: int = 0) -> NamedSharding:
        """Sharding of an array whose dim ``batch_dim`` is the batch: split over (data, fsdp) when they divide
        ``global_rows``, else replicated (only possible with one process)."""
        spec = [None] * ndim
        if global_rows % self.batch_ways == 0:
            spec[batch_dim] = BATCH
        elif self.process_count > 1:
            raise UserError(f"a batch of {global_rows} rows cannot be split over the mesh's data x fsdp = "
                            f"{self.batch_ways} ways; choose a multiple")
        return NamedSharding(self.mesh, P(*spec))

    def place(self, local: np.ndarray, batch_dim: int = 0) -> jax.Array:
        """This process's rows (dim ``batch_dim``) -> the global array, sharded over the batch axes.

        ``jax.make_array_from_process_local_data`` builds the global array from each process's rows (a plain
        ``device_put`` of a local array onto a global sharding is wrong as soon as there are two processes).
        """
        local = np.asarray(local)
        global_rows = local.shape[batch_dim] * self.process_count
        sharding = self.batch_sharding(local.ndim, global_rows, batch_dim)
        global_shape = tuple(global_rows if i == batch_dim else s for i, s in enumerate(local.shape))
        return jax.make_array_from_process_local_data(sharding, local, global_shape)

    def place_tree(self, tree: Any, batch_dim: int = 0) -> Any:
        """``place`` on every array of a pytree (all share the batch dimension)."""
        return jax.tree.map(lambda x: self.place(x, batch_dim), tree)

    def replicate(self, tree: Any) -> Any:
        """Every leaf on a fully replicated sharding of the mesh (small state such as an optimiser's count)."""
        rep = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda x: x if isinstance(getattr(x, "sharding", None), NamedSharding)
                            else jax.device_put(x, rep), tree)

    def to_host(self, tree: Any) -> Any:
        """Every array of ``tree`` as a full numpy array on every process (gathered across hosts if needed: a
        collective, every process calls it)."""
        return jax.tree.map(host_array, tree)


def local_runtime() -> Runtime:
    """The default single-process runtime over every local device (data-parallel mesh)."""
    return Runtime.create(MeshConfig())
