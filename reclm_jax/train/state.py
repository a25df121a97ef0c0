"""Training-state placement: every leaf of (trainable, optimiser state) on a ``NamedSharding`` of the mesh, and the
matching sharding pytrees that pin a jitted step's outputs to its inputs' layout (so the second call does not
recompile because XLA chose another layout for the updated parameters)."""

from __future__ import annotations

from typing import Any

import jax

from reclm_jax.train.runtime import Runtime


def place_state(trainable: Any, opt_state: Any, runtime: Runtime) -> tuple[Any, Any, tuple[Any, Any]]:
    """``(trainable, opt_state, (trainable_shardings, opt_shardings))``.

    Parameters keep the ``NamedSharding`` they were loaded with (``models.sharding`` rules); leaves that have
    none (Adam's step count, fresh scalars) are replicated over the mesh.
    """
    trainable, opt_state = runtime.replicate(trainable), runtime.replicate(opt_state)
    return trainable, opt_state, (shardings_of(trainable), shardings_of(opt_state))


def shardings_of(tree: Any) -> Any:
    """The pytree of each array's sharding."""
    return jax.tree.map(lambda x: x.sharding, tree)

