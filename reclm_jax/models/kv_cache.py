"""The key/value cache for incremental decoding: plain arrays in a NamedTuple (a pytree jit can carry).

Prompts are left-padded, so every row writes its next token into the same slot ``end``; padding slots are
marked invalid in ``valid`` and never attended to.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from reclm_jax.models.llama_config import LlamaConfig


class KVCache(NamedTuple):
    keys: tuple  # per layer: [B, S, num_kv_heads, head_dim] in the cache dtype
    values: tuple  # per layer: [B, S, num_kv_heads, head_dim]
    valid: jnp.ndarray  # bool [B, S]: slot holds a real (non-padding) token
    end: jnp.ndarray  # int32 scalar: first unwritten slot

    @property
    def size(self) -> int:
        return self.valid.shape[1]


def init_cache(cfg: LlamaConfig, batch: int, size: int, dtype=None) -> KVCache:
    """An empty cache of ``size`` slots; ``dtype`` defaults to the compute dtype (bf16 halves its memory)."""
    dtype = dtype or cfg.jnp_dtype
    shape = (batch, size, cfg.num_kv_heads, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
                   valid=jnp.zeros((batch, size), bool), end=jnp.zeros((), jnp.int32))
