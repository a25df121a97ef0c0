"""Device mesh with axes (data, fsdp, tp), partition rules for every Llama parameter, activation constraints.

Rules are matched against a parameter's dotted HF-style path (``model.layers.3.self_attn.q_proj.kernel``).
Kernels are ``[in, out]``: column-parallel layers (q/k/v/gate/up, lm_head) split ``out`` over ``tp`` and
``in`` over ``fsdp``; row-parallel layers (o/down) the other way round, so the pair needs one reduction.
A dimension that a mesh axis does not divide is replicated instead, and attention splits over ``tp`` only by
whole heads (``partition_rules`` takes the model's head counts: SmolLM2's 9 query heads x 64 = 576 columns
divide by tp=2 but would cut a head, so q and o stay whole on tp=2 and split into 3 heads each on tp=3). The
same code runs on 1 CPU, simulated CPU devices, one or many GPUs and several hosts. A layer stack's parameter
(``model.scan_layers``: ``model.layers.self_attn.q_proj.kernel`` [L, in, out], no layer index in the name) gets
its per-layer rule with the leading layer dim unsharded.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reclm_jax.errors import UserError
from reclm_jax.models.layer_stack import is_stacked_name, layer_name

if TYPE_CHECKING:
    from reclm_jax.models.llama_config import LlamaConfig

AXES = ("data", "fsdp", "tp")
BATCH = ("data", "fsdp")  # the batch dimension of activations is split over both data-like axes


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; at most one may be -1 (= all remaining devices).

    A stage config's ``mesh`` section; ``mesh=configs/mesh/NAME.yaml`` loads a preset file into it (see
    ``configs/mesh/`` and docs/scale.md). ``devices``: the device count the mesh is meant for (0: any), checked
    when the mesh is built, so a preset run on the wrong machine stops with a clear message. ``xla_flags``:
    ``--name=value`` flags the stage's entry point adds to ``XLA_FLAGS`` before JAX starts its backend
    (``reclm_jax.xla_flags``); the mesh itself does not read them.
    """

    data: int = -1
    fsdp: int = 1
    tp: int = 1
    devices: int = 0
    xla_flags: tuple[str, ...] = ()

    def __post_init__(self):
        sizes = {"mesh.data": self.data, "mesh.fsdp": self.fsdp, "mesh.tp": self.tp}
        bad = [k for k, v in sizes.items() if v == 0 or v < -1]
        if bad:
            raise UserError(f"{bad[0]} must be a positive size or -1 (all remaining devices), got {sizes[bad[0]]}")
        if sum(v == -1 for v in sizes.values()) > 1:
            raise UserError(f"at most one of mesh.data/fsdp/tp may be -1, got {sizes}")
        if self.devices < 0:
            raise UserError(f"mesh.devices must be >= 0 (0: any device count), got {self.devices}")
        known = math.prod(v for v in sizes.values() if v != -1)
        if self.devices and (self.devices % known if -1 in sizes.values() else self.devices != known):
            raise UserError(f"mesh.devices={self.devices} does not fit data x fsdp x tp = "
                            f"{self.data} x {self.fsdp} x {self.tp}")
        for i, flag in enumerate(self.xla_flags):
            if not re.fullmatch(r"--[a-z0-9_]+=\S+", flag):
                raise UserError(f"mesh.xla_flags[{i}] must look like --xla_name=value, got {flag!r}")


def make_mesh(cfg: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all) with axes ``("data", "fsdp", "tp")``; the axis sizes themselves
    were checked when ``cfg`` was made."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tp]
    if cfg.devices and cfg.devices != len(devices):
        raise UserError(f"mesh: this mesh is for {cfg.devices} devices (mesh.devices), found {len(devices)}; "
                        f"choose the preset in configs/mesh/ for this machine, or set mesh.devices=0")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise UserError(f"mesh: {len(devices)} devices are not divisible by {known} "
                            f"({dict(zip(AXES, sizes))})")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise UserError(f"mesh: {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, found {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), AXES)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Parameters whose dotted path matches ``pattern`` split dim ``i`` over mesh axis ``axes[i]`` (None: not
    split; missing trailing entries: not split). ``units[i]`` is how many indivisible pieces dim ``i`` holds
    (None: every element is one): an axis splits a dim only if it divides the pieces, so a tp split of a
    q/k/v column dim or an o row dim happens only when tp divides the head count and never cuts a head."""

    pattern: str
    axes: tuple
    units: tuple = ()


_COL = "q_proj|k_proj|v_proj|gate_proj|up_proj|lm_head"  # column-parallel: kernel [in, out], out over tp
_ROW = "o_proj|down_proj"  # row-parallel: kernel [in, out], in over tp
# An adapter's own full copy (``<module>.full.<adapter>``) is laid out as the kernel it copies.
_WEIGHT = r"(kernel|full\.[^.]+)"


def partition_rules(cfg: "LlamaConfig") -> tuple[Rule, ...]:
    """The rules for a model of ``cfg`` (its head counts decide whether attention splits over tp); first match
    wins. A LoRA factor splits its kernel-sized dim as the kernel does (B of q [r, H*hd] like q's columns, A of
    o [H*hd, r] like o's rows), so base and adapter products come out with the same layout."""
    heads, kv = cfg.num_heads, cfg.num_kv_heads
    return (
        Rule(r"embed_tokens\.weight$", ("tp", "fsdp")),
        Rule(rf"q_proj\.{_WEIGHT}$", ("fsdp", "tp"), (None, heads)),
        Rule(rf"(k_proj|v_proj)\.{_WEIGHT}$", ("fsdp", "tp"), (None, kv)),
        Rule(rf"({_COL})\.{_WEIGHT}$", ("fsdp", "tp")),
        Rule(rf"o_proj\.{_WEIGHT}$", ("tp", "fsdp"), (heads, None)),
        Rule(rf"({_ROW})\.{_WEIGHT}$", ("tp", "fsdp")),
        Rule(r"q_proj\.bias$", ("tp",), (heads,)),
        Rule(r"(k_proj|v_proj)\.bias$", ("tp",), (kv,)),
        Rule(rf"({_COL})\.bias$", ("tp",)),
        Rule(rf"({_COL})\.lora\.[^.]+\.a$", ("fsdp", None)),
        Rule(r"q_proj\.lora\.[^.]+\.b$", (None, "tp"), (None, heads)),
        Rule(r"(k_proj|v_proj)\.lora\.[^.]+\.b$", (None, "tp"), (None, kv)),
        Rule(rf"({_COL})\.lora\.[^.]+\.b$", (None, "tp")),
        Rule(r"o_proj\.lora\.[^.]+\.a$", ("tp", None), (heads, None)),
        Rule(rf"({_ROW})\.lora\.[^.]+\.a$", ("tp", None)),
        Rule(rf"({_ROW})\.lora\.[^.]+\.b$", (None, "fsdp")),
        Rule(r".*", ()),  # norms, row-parallel biases, value head, anything small: replicated
    )


def path_name(path: tuple) -> str:
    """Dotted name of an NNX state path: ("model", "layers", 0, "norm") -> "model.layers.0.norm"."""
    return ".".join(str(p) for p in path)


def partition_spec(name: str, shape: tuple[int, ...], mesh: Mesh, cfg: "LlamaConfig") -> P:
    """The ``PartitionSpec`` for parameter ``name`` of ``shape`` in a model of ``cfg``: the first matching
    rule's axes, each kept only where the axis size divides the dim and its pieces (whole heads), else that dim
    is replicated. A layer stack's parameter (no layer index in ``name``): the layer's spec behind an unsharded
    layer dim."""
    if is_stacked_name(name):
        return P(None, *partition_spec(layer_name(name, 0), shape[1:], mesh, cfg))
    for rule in partition_rules(cfg):
        if re.search(rule.pattern, name):
            axes = (tuple(rule.axes) + (None,) * len(shape))[: len(shape)]
            units = (tuple(rule.units) + (None,) * len(shape))[: len(shape)]
            return P(*(a if a is not None and shape[i] % mesh.shape[a] == 0
                       and (units[i] or shape[i]) % mesh.shape[a] == 0 else None
                       for i, a in enumerate(axes)))
    return P()


def param_sharding(name: str, shape: tuple[int, ...], mesh: Mesh, cfg: "LlamaConfig") -> NamedSharding:
    return NamedSharding(mesh, partition_spec(name, shape, mesh, cfg))


def shard_state(state, mesh: Mesh, cfg: "LlamaConfig"):
    """Places every array of an NNX ``State`` of a model of ``cfg`` on its rule's ``NamedSharding`` (returns
    a new state)."""
    from flax import nnx

    flat = nnx.to_flat_state(state)
    out = []
    for path, var in flat:
        value = var.get_value()
        placed = jax.device_put(value, param_sharding(path_name(path), value.shape, mesh, cfg))
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
