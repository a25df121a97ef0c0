"""The key/value cache for incremental decoding: plain arrays in a NamedTuple (a pytree jit can carry).

Prompts are left-padded, so every row writes its next token into the same slot ``end``; padding slots are
marked invalid in ``valid`` and never attended to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # kernels.py imports this module, and llama_config imports kernels.py
    from reclm_jax.models.llama_config import LlamaConfig


class KVCache(NamedTuple):
    # Heads before slots, so a decoding step's attention products read the cache without transposing it.
    keys: tuple  # per layer: [B, num_kv_heads, S, head_dim] in the cache dtype
    values: tuple  # per layer: [B, num_kv_heads, S, head_dim]
    valid: jnp.ndarray  # bool [B, S]: slot holds a real (non-padding) token
    end: jnp.ndarray  # int32 scalar: first unwritten slot

    @property
    def size(self) -> int:
        return self.valid.shape[1]


def init_cache(cfg: LlamaConfig, batch: int, size: int, dtype=None) -> KVCache:
    """An empty cache of ``size`` slots; ``dtype`` defaults to the compute dtype (bf16 halves its memory)."""
    dtype = dtype or cfg.jnp_dtype
    shape = (batch, cfg.num_kv_heads, size, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
                   valid=jnp.zeros((batch, size), bool), end=jnp.zeros((), jnp.int32))


def write_slots(cache: jnp.ndarray, new: jnp.ndarray, end) -> jnp.ndarray:
    """Writes new [B, T, K, H] into cache [B, K, S, H] at slots [end, end + T), in place.

    A 16-bit float cache is updated through an unsigned-integer view: XLA:CPU otherwise widens a bf16
    dynamic-update-slice to f32, copying the whole cache at every decoding step. Done for both ``kernels``
    choices: elsewhere the bitcasts are free and the update stays in place.
    """
    new = new.transpose(0, 2, 1, 3).astype(cache.dtype)
    if cache.dtype.itemsize == 2 and jnp.issubdtype(cache.dtype, jnp.floating):
        bits = jax.lax.dynamic_update_slice(jax.lax.bitcast_convert_type(cache, jnp.uint16),
                                            jax.lax.bitcast_convert_type(new, jnp.uint16), (0, 0, end, 0))
        return jax.lax.bitcast_convert_type(bits, cache.dtype)
    return jax.lax.dynamic_update_slice(cache, new, (0, 0, end, 0))
