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


def _layers(cache: KVCache) -> tuple[list, bool]:
    """The cache's key and value buffers as one list, and whether they are stacked ([L, B, K, S, H])."""
    if isinstance(cache.keys, tuple):
        return [*cache.keys, *cache.values], False
    return [cache.keys, cache.values], True


def _rebuild(cache: KVCache, bufs: list, stacked: bool, valid, end) -> KVCache:
    if stacked:
        return KVCache(bufs[0], bufs[1], valid, end)
    n = len(bufs) // 2
    return KVCache(tuple(bufs[:n]), tuple(bufs[n:]), valid, end)


def put_rows(cache: KVCache, new: KVCache, rows: jnp.ndarray, start) -> KVCache:
    """Copies ``new``'s n rows (P slots each) into rows ``rows`` (int32 [n]) of ``cache``, at slots
    [start, start + P); each such row's ``valid`` becomes ``new``'s placed there (False everywhere else).

    Rows are written one after the other, in place (uint16 views for 16-bit floats, as ``update_slice``); a
    row listed twice must carry the same data twice (the SlotDecoder pads its admissions so). ``end`` is kept.
    """
    bufs, stacked = _layers(cache)
    small, _ = _layers(new)
    placed = jax.lax.dynamic_update_slice(jnp.zeros((new.valid.shape[0], cache.size), bool), new.valid, (0, start))

    def one(i, bufs):
        r = rows[i]
        if stacked:
            return [update_slice(b, jax.lax.dynamic_slice_in_dim(s, i, 1, 1), (0, r, 0, start, 0))
                    for b, s in zip(bufs, small)]
        return [update_slice(b, jax.lax.dynamic_slice_in_dim(s, i, 1, 0), (r, 0, start, 0)) for b, s in zip(bufs, small)]

    bufs = jax.lax.fori_loop(0, rows.shape[0], one, bufs)
    return _rebuild(cache, bufs, stacked, cache.valid.at[rows].set(placed), cache.end)


def shift_slots(cache: KVCache, start, width: int) -> KVCache:
    """Moves slots [start, start + width) of every row to [0, width) and ``end`` down by ``start``; ``valid``
    is False from the new ``end`` on. ``start + width`` must not pass the cache size (the SlotDecoder's
    compaction: the slots before ``start`` are no live row's)."""
    bufs, stacked = _layers(cache)
    axis = 3 if stacked else 2
    moved = [update_slice(b, jax.lax.dynamic_slice_in_dim(b, start, width, axis), (0,) * b.ndim) for b in bufs]
    end = cache.end - start
    slot = jnp.arange(cache.size)
    valid = jnp.roll(cache.valid, -start, axis=1) & (slot < end)[None, :]
    return _rebuild(cache, moved, stacked, valid, end)
