"""Causal self-attention for training on XLA:CPU: query blocks that skip the masked-out future, bf16 dots
accumulated in f32, and a hand-written backward pass. ``causal_attention`` is the ``kernels="cpu"`` cache-free
pass (see ``kernels.py``); ``cached_attention`` (decoding) serves both kernel choices.

``jax.nn.dot_product_attention``'s XLA path computes the whole [T, T] score square, transposes it between
layouts several times and runs its backward products in f32 (half the CPU's bf16 rate). Here queries are
cut into blocks of ``block`` rows; block i attends to keys ``[0, end_i)`` only, so causal attention does about
(n + 1) / 2n of the square's work for n blocks (62.5% at T = 512). Each block's softmax sees all its
keys, so the result is exact (no online rescaling); the probabilities are kept for the backward pass in the
compute dtype, as the forward's probability-value product used them.

GQA is handled without repeating keys: queries are viewed as [B, T, K, G, H] (K key heads, G query heads
per key head) and every product batches over (B, K).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

F32 = jnp.float32


def _blocks(t: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(s + block, t)) for s in range(0, t, block)]


def _einsum(spec: str, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    return jnp.einsum(spec, a, b, preferred_element_type=F32)


def _masked_softmax(s: jnp.ndarray, allowed: jnp.ndarray, dtype) -> jnp.ndarray:
    """f32 scores, bool mask broadcastable to them -> probabilities over the last axis in ``dtype``."""
    return jax.nn.softmax(jnp.where(allowed, s, jnp.finfo(F32).min), axis=-1).astype(dtype)


def _forward(q, k, v, mask, scale, block):
    b, t, n, h = q.shape
    kh = k.shape[2]
    g = n // kh
    outs, probs = [], []
    for start, stop in _blocks(t, block):
        qb = q[:, start:stop].reshape(b, stop - start, kh, g, h)
        s = _einsum("bqkgh,bskh->bkqgs", qb, k[:, :stop]) * scale  # [B, K, tq, G, stop] f32
        p = _masked_softmax(s, mask[:, 0, start:stop, :stop][:, None, :, None, :], q.dtype)
        o = _einsum("bkqgs,bskh->bqkgh", p, v[:, :stop])
        outs.append(o.reshape(b, stop - start, n, h).astype(q.dtype))
        probs.append(p)
    return jnp.concatenate(outs, axis=1), probs


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def causal_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray, scale: float,
                     block: int = 128) -> jnp.ndarray:
    """Self-attention of T tokens over themselves.

    q: [B, T, N, H]; k, v: [B, T, K, H] with N a multiple of K (GQA), all in the compute dtype. mask: bool
    [B, 1, T, T], True where query t may attend key s; it must be causal (no key after its query), so blocks
    may skip the future, and every row must allow at least one key. Returns [B, T, N, H] in q's dtype.
    """
    return _forward(q, k, v, mask, scale, block)[0]


def _fwd(q, k, v, mask, scale, block):
    out, probs = _forward(q, k, v, mask, scale, block)
    return out, (q, k, v, mask, out, probs)


def _bwd(scale, block, res, d_out):
    q, k, v, mask, out, probs = res
    b, t, n, h = q.shape
    kh = k.shape[2]
    g = n // kh
    # Softmax backward: dS = P * (dP - D), D = rowsum(dO * O), taken per query row.
    d_rows = jnp.sum(d_out.astype(F32) * out.astype(F32), axis=-1).reshape(b, t, kh, g)
    d_q, d_k, d_v = [], jnp.zeros(k.shape, F32), jnp.zeros(v.shape, F32)
    for (start, stop), p in zip(_blocks(t, block), probs):
        tq = stop - start
        qb = q[:, start:stop].reshape(b, tq, kh, g, h)
        dob = d_out[:, start:stop].reshape(b, tq, kh, g, h)
        dp = _einsum("bqkgh,bskh->bkqgs", dob, v[:, :stop])
        dd = jnp.transpose(d_rows[:, start:stop], (0, 2, 1, 3))[..., None]  # [B, K, tq, G, 1]
        ds = (p.astype(F32) * (dp - dd) * scale).astype(q.dtype)
        pad = ((0, 0), (0, t - stop), (0, 0), (0, 0))
        d_v = d_v + jnp.pad(_einsum("bkqgs,bqkgh->bskh", p, dob), pad)
        d_k = d_k + jnp.pad(_einsum("bkqgs,bqkgh->bskh", ds, qb), pad)
        d_q.append(_einsum("bkqgs,bskh->bqkgh", ds, k[:, :stop]).reshape(b, tq, n, h))
    d_q = jnp.concatenate(d_q, axis=1).astype(q.dtype)
    return d_q, d_k.astype(k.dtype), d_v.astype(v.dtype), None


causal_attention.defvjp(_fwd, _bwd)


def cached_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray, scale: float) -> jnp.ndarray:
    """Attention of T new tokens over the cache's S slots (decoding; no gradient needed).

    q: [B, T, N, H]; k, v: [B, K, S, H] in the cache layout (heads first, so neither is transposed per step);
    mask: bool [B, 1, T, S]. Products accumulate in f32. Returns [B, T, N, H] in q's dtype.
    """
    b, t, n, h = q.shape
    kh, slots = k.shape[1], k.shape[2]
    g = n // kh
    # Rows = (new token, query head of the group), merged into one dimension: XLA:CPU lowers these 4-D
    # products to its bf16 library kernel; a degenerate T = 1 dimension left apart sends it to a fallback
    # that rejects bf16 x bf16 -> f32.
    qm = q.reshape(b, t, kh, g, h).transpose(0, 2, 1, 3, 4).reshape(b, kh, t * g, h)
    s = (_einsum("bkmh,bksh->bkms", qm, k) * scale).reshape(b, kh, t, g, slots)
    p = _masked_softmax(s, mask[:, :, :, None, :], q.dtype).reshape(b, kh, t * g, slots)
    o = _einsum("bkms,bksh->bkmh", p, v).reshape(b, kh, t, g, h)
    return o.transpose(0, 2, 1, 3, 4).reshape(b, t, n, h).astype(q.dtype)
