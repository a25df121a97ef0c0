"""The key/value cache for incremental decoding: plain arrays in a NamedTuple (a pytree jit can carry).

Prompts are left-padded, so every row writes its next token into the same slot ``end``; padding slots are
marked invalid in ``valid`` and never attended to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from reclm_jax.models.sharding import constrain

if TYPE_CHECKING:  # kernels.py imports this module, and llama_config imports kernels.py
    from reclm_jax.models.llama_config import LlamaConfig


class KVCache(NamedTuple):
    # Heads before slots, so a decoding step's attention products read the cache without transposing it.
    # Unrolled model: a tuple of per-layer arrays; scan_layers: one stacked [L, B, num_kv_heads, S, head_dim].
    keys: tuple | jnp.ndarray  # per layer: [B, num_kv_heads, S, head_dim] in the cache dtype
    values: tuple | jnp.ndarray  # per layer: [B, num_kv_heads, S, head_dim]
    valid: jnp.ndarray  # bool [B, S]: slot holds a real (non-padding) token
    end: jnp.ndarray  # int32 scalar: first unwritten slot

    @property
    def size(self) -> int:
        return self.valid.shape[1]


def init_cache(cfg: LlamaConfig, batch: int, size: int, dtype=None) -> KVCache:
    """An empty cache of ``size`` slots; ``dtype`` defaults to the compute dtype (bf16 halves its memory)."""
    dtype = dtype or cfg.jnp_dtype
    shape = (batch, cfg.num_kv_heads, size, cfg.head_dim)
    valid, end = jnp.zeros((batch, size), bool), jnp.zeros((), jnp.int32)
    if cfg.scan_layers:  # the layer stack carries one array through its scan (layer_stack.run_stack)
        stacked = (cfg.num_layers, *shape)
        return KVCache(jnp.zeros(stacked, dtype), jnp.zeros(stacked, dtype), valid, end)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
                   valid=valid, end=end)


def constrain_cache(cache: KVCache) -> KVCache:
    """Batch over the data axes, KV heads over tp (the layout the projections produce); a stacked cache keeps
    its layer dim unsharded."""
    if isinstance(cache.keys, tuple):
        return cache._replace(keys=tuple(constrain(k, "batch", "tp", None, None) for k in cache.keys),
                              values=tuple(constrain(v, "batch", "tp", None, None) for v in cache.values))
    return cache._replace(keys=constrain(cache.keys, None, "batch", "tp", None, None),
                          values=constrain(cache.values, None, "batch", "tp", None, None))


def write_slots(cache: jnp.ndarray, new: jnp.ndarray, end) -> jnp.ndarray:
    """Writes new [B, T, K, H] into cache [B, K, S, H] at slots [end, end + T), in place.

    A 16-bit float cache is updated through an unsigned-integer view: XLA:CPU otherwise widens a bf16
    dynamic-update-slice to f32, copying the whole cache at every decoding step. Done for both ``kernels``
    choices: elsewhere the bitcasts are free and the update stays in place.
    """
    return update_slice(cache, new.transpose(0, 2, 1, 3).astype(cache.dtype), (0, 0, end, 0))


def bits_view(x: jnp.ndarray) -> jnp.ndarray:
    """A 16-bit float array as its uint16 bits (other dtypes unchanged): XLA:CPU widens a bf16
    dynamic-update-slice to f32, copying the whole buffer, but updates integer buffers in place."""
    if x.dtype.itemsize == 2 and jnp.issubdtype(x.dtype, jnp.floating):
        return jax.lax.bitcast_convert_type(x, jnp.uint16)
    return x


def update_slice(buf: jnp.ndarray, new: jnp.ndarray, index) -> jnp.ndarray:
    """``dynamic_update_slice(buf, new, index)`` in place for 16-bit floats too (through ``bits_view``)."""
    out = jax.lax.dynamic_update_slice(bits_view(buf), bits_view(new.astype(buf.dtype)), index)
    return jax.lax.bitcast_convert_type(out, buf.dtype) if out.dtype != buf.dtype else out
