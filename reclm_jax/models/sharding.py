"""Device mesh with axes (data, fsdp, tp), partition rules for every Llama parameter, activation constraints.

Rules are matched against a parameter's dotted HF-style path (``model.layers.3.self_attn.q_proj.kernel``).
Kernels are ``[in, out]``: column-parallel layers (q/k/v/gate/up, lm_head) split ``out`` over ``tp`` and
``in`` over ``fsdp``; row-parallel layers (o/down) the other way round, so the pair needs one reduction.
A dimension that a mesh axis does not divide is replicated instead (e.g. 3 KV heads on tp=2), and the
same code runs on 1 CPU, simulated CPU devices, one or many GPUs and several hosts. A layer stack's parameter
(``model.scan_layers``: ``model.layers.self_attn.q_proj.kernel`` [L, in, out], no layer index in the name) gets
its per-layer rule with the leading layer dim unsharded.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reclm_jax.errors import UserError
from reclm_jax.models.layer_stack import is_stacked_name, layer_name

AXES = ("data", "fsdp", "tp")
BATCH = ("data", "fsdp")  # the batch dimension of activations is split over both data-like axes


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; exactly one may be -1 (= all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tp: int = 1


def make_mesh(cfg: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all) with axes ``("data", "fsdp", "tp")``."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tp]
    if sum(s == -1 for s in sizes) > 1:
        raise UserError(f"mesh: at most one of data/fsdp/tp may be -1, got {dict(zip(AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh: axis sizes must be positive or -1, got {dict(zip(AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise UserError(f"mesh: {len(devices)} devices are not divisible by {known} "
                            f"({dict(zip(AXES, sizes))})")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise UserError(f"mesh: {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, found {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), AXES)


# (regex on the dotted path, spec for the parameter's dims); first match wins.
PARTITION_RULES: tuple[tuple[str, tuple], ...] = (
    (r"embed_tokens\.weight$", ("tp", "fsdp")),
    # An adapter's own full copy (``<module>.full.<adapter>``) is laid out as the kernel it copies.
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|lm_head)\.(kernel|full\.[^.]+)$", ("fsdp", "tp")),
    (r"(o_proj|down_proj)\.(kernel|full\.[^.]+)$", ("tp", "fsdp")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|lm_head)\.bias$", ("tp",)),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|lm_head)\.lora\.[^.]+\.a$", ("fsdp", None)),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|lm_head)\.lora\.[^.]+\.b$", (None, "tp")),
    (r"(o_proj|down_proj)\.lora\.[^.]+\.a$", ("tp", None)),
    (r"(o_proj|down_proj)\.lora\.[^.]+\.b$", (None, "fsdp")),
    (r".*", ()),  # norms, row-parallel biases, value head, anything small: replicated
)


def path_name(path: tuple) -> str:
    """Dotted name of an NNX state path: ("model", "layers", 0, "norm") -> "model.layers.0.norm"."""
    return ".".join(str(p) for p in path)


def partition_spec(name: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The ``PartitionSpec`` for parameter ``name`` of ``shape``; undivisible dims are replicated."""
    if is_stacked_name(name):  # a layer stack: the layer dim stays whole, the rest as one layer's parameter
        return P(None, *partition_spec(layer_name(name, 0), shape[1:], mesh))
    for pattern, axes in PARTITION_RULES:
        if re.search(pattern, name):
            axes = tuple(axes) + (None,) * (len(shape) - len(axes))
            axes = axes[: len(shape)]
            fixed = tuple(a if a is None or shape[i] % mesh.shape[a] == 0 else None for i, a in enumerate(axes))
            return P(*fixed)
    return P()


def param_sharding(name: str, shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(name, shape, mesh))


def shard_state(state, mesh: Mesh):
    """Places every array of an NNX ``State`` on its rule's ``NamedSharding`` (returns a new state)."""
    from flax import nnx

    flat = nnx.to_flat_state(state)
    out = []
    for path, var in flat:
        value = var.get_value()
        placed = jax.device_put(value, param_sharding(path_name(path), value.shape, mesh))
        out.append((path, var.replace(placed)))
    return nnx.from_flat_state(out)


def constrain(x: jax.Array, *axes) -> jax.Array:
    """``with_sharding_constraint`` against the mesh set by ``jax.set_mesh``; a no-op without one, and on a
    one-device mesh (where a constraint has nothing to place but still sits in the program between ops).

    ``axes`` name one entry per dim: "batch" (data+fsdp), "tp", or None.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    spec = []
    for i, a in enumerate(axes):
        if a == "batch":
            n = math.prod(mesh.shape[k] for k in BATCH if k in mesh.shape)
            spec.append(tuple(k for k in BATCH if k in mesh.shape) if x.shape[i] % n == 0 else None)
        elif a is not None and a in mesh.shape and x.shape[i] % mesh.shape[a] == 0:
            spec.append(a)
        else:
            spec.append(None)
    return jax.lax.with_sharding_constraint(x, P(*spec))
