"""The decoder layers as one stack (``model.scan_layers: true``): stacked parameters, a ``lax.scan``, per-layer names.

Unrolled, ``model.model.layers`` is an ``nnx.List`` of ``num_layers`` ``DecoderLayer`` modules and XLA compiles
every layer's forward and backward pass separately (a 30-layer SmolLM2 SFT step: minutes on XLA:CPU). Stacked,
it is *one* ``DecoderLayer`` whose every parameter has a leading layer dim ``[L, ...]`` (LoRA factors and
adapters' full copies included), and the forward pass is a ``jax.lax.scan`` over that dim: XLA compiles one
layer, whatever ``L``.

Names. A stacked parameter's NNX path has no layer index (``model.layers.self_attn.q_proj.kernel``, shape
``[L, in, out]``); everything a user or a file sees keeps the unrolled names (``model.layers.3.self_attn.q_proj``):
``unrolled_items`` expands a flat state into per-layer entries in the unrolled model's order, so HF loading,
merged export and adapter files are the same as for the unrolled model, and LoRA target patterns are matched
against per-layer names. The sharding rules see the stacked name and keep the layer dim unsharded
(``sharding.partition_spec``).

Decoding: the KV cache of a stacked model holds one ``[L, B, K, S, H]`` array for keys and one for values
(``kv_cache.init_cache``), carried through the scan and updated in place layer by layer. LoRA dropout draws the
unrolled model's masks (each layer's index reaches its linears' dropout keys).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

STACK_PREFIX = ("model", "layers")
_STACKED_NAME = re.compile(r"model\.layers\.(?!\d+(\.|$))")
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


def is_stacked_path(path: tuple) -> bool:
    """Whether an NNX state path lies in a layer stack: ``("model", "layers", "mlp", ...)``, not ``(..., 3, ...)``."""
    return len(path) > 2 and tuple(path[:2]) == STACK_PREFIX and not isinstance(path[2], int) \
        and not str(path[2]).isdigit()


def is_stacked_name(name: str) -> bool:
    """The dotted form of ``is_stacked_path``: ``model.layers.mlp.up_proj.kernel`` yes, ``model.layers.0.mlp`` no."""
    return _STACKED_NAME.match(name) is not None


def layer_name(stacked: str, layer: int) -> str:
    """``model.layers.mlp.up_proj`` and 3 -> ``model.layers.3.mlp.up_proj`` (the unrolled name of one slice)."""
    return f"model.layers.{layer}.{stacked[len('model.layers.'):]}"


def stacked_name(name: str) -> tuple[str, int] | None:
    """``model.layers.3.mlp.up_proj`` -> (``model.layers.mlp.up_proj``, 3); None for a name outside the layers."""
    m = _LAYER_NAME.fullmatch(name)
    return None if m is None else (f"model.layers.{m.group(2)}", int(m.group(1)))


def name_order(name: str) -> tuple:
    """Sort key that orders dotted names as NNX orders state paths (layer indices as numbers: 2 before 10)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def _path_order(path: tuple) -> tuple:
    return name_order(".".join(str(p) for p in path))


def unrolled_items(flat) -> list[tuple[tuple, object, int | None]]:
    """``(path, variable, layer)`` for every entry of a flat NNX state, each stacked entry expanded into its
    ``L`` layers, sorted as the unrolled model's flat state.

    ``path`` is the unrolled path (``("model", "layers", 3, "mlp", "up_proj", "kernel")``); ``layer`` is the
    index into the variable's leading dim, or None for an entry that is not stacked (then ``path`` is its own).
    """
    items = []
    for path, var in flat:
        path = tuple(path)
        if is_stacked_path(path):
            n = var.get_value().shape[0]
            items += [(path[:2] + (i,) + path[2:], var, i) for i in range(n)]
        else:
            items.append((path, var, None))
    return sorted(items, key=lambda item: _path_order(item[0]))


def take_layer(x, layer: int | None):
    """``x[layer]`` for a stacked value, ``x`` itself when ``layer`` is None."""
    return x if layer is None else x[layer]


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
    """One module of ``modules[0]``'s structure whose every variable stacks the modules' values on a new dim 0.

    All modules must have the same structure (same adapters, shapes and dtypes). Static attributes are
    ``modules[0]``'s: the layers' ``Linear.uid`` (the dropout fold-in) is then layer 0's, and ``run_stack`` passes
    each layer's index so that its linears add the layer's offset (the unrolled model's masks, exactly).
    """
    graphdef, first = nnx.split(modules[0])
    states = [first] + [nnx.state(m) for m in modules[1:]]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    return nnx.merge(graphdef, stacked)


def run_stack(layers: nnx.Module, x: jnp.ndarray, cos, sin, mask, *, kv=None, end=None, adapter=None, rng=None,
              prefill: bool = False, remat: bool = False):
    """Runs the stacked ``DecoderLayer`` ``layers`` over its leading dim with ``jax.lax.scan``.

    x: [B, T, D] in the compute dtype; cos, sin, mask as ``DecoderLayer.__call__``. kv: None or (keys, values)
    [L, B, K, S, H], the stacked cache, carried through the scan and written layer by layer (in place).
    ``rng`` (LoRA dropout) gives each layer the unrolled model's masks. ``remat`` checkpoints each layer (no cache
    only).
    Returns (x [B, T, D], (keys, values) or None).
    """
    from reclm_jax.models.kv_cache import bits_view, update_slice  # kv_cache -> sharding -> this module

    graphdef, state = nnx.split(layers)
    n = jax.tree_util.tree_leaves(state)[0].shape[0]

    def body(carry, xs):
        h, cache = carry
        layer_state, i = xs
        layer = nnx.merge(graphdef, layer_state)
        if cache is None:
            h, _ = layer(h, cos, sin, mask, None, None, adapter, rng, False, layer=i)
            return (h, None), None
        keys, values = cache  # the stacked cache as its bits (kv_cache.bits_view): written in place
        kv_i = (_layer_of(keys, i, dtype), _layer_of(values, i, dtype))
        h, (k, v) = layer(h, cos, sin, mask, kv_i, end, adapter, rng, prefill, layer=i)
        at = (i, 0, 0, 0, 0)
        return (h, (update_slice(keys, bits_view(k)[None], at), update_slice(values, bits_view(v)[None], at))), None

    if remat and kv is None:
        body = jax.checkpoint(body, prevent_cse=False)  # inside a scan, CSE cannot undo the recomputation
    dtype = None if kv is None else kv[0].dtype
    carry_kv = None if kv is None else (bits_view(kv[0]), bits_view(kv[1]))
    (x, carry_kv), _ = jax.lax.scan(body, (x, carry_kv), (state, jnp.arange(n)))
    if carry_kv is None:
        return x, None
    return x, tuple(jax.lax.bitcast_convert_type(c, dtype) if c.dtype != dtype else c for c in carry_kv)


def _layer_of(stack: jnp.ndarray, i, dtype) -> jnp.ndarray:
    """Layer ``i`` of a stacked cache (or of its bits view) in the cache dtype."""
    one = jax.lax.dynamic_index_in_dim(stack, i, keepdims=False)
    return jax.lax.bitcast_convert_type(one, dtype) if one.dtype != dtype else one
