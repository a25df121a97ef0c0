"""Masked next-token cross-entropy returned as (numerator, denominator), so gradient accumulation is exact.

Two weightings:
- ``sequence`` (the original's): each sample's loss is the mean over its output tokens; the batch loss is the mean
  over samples. Numerator = sum of per-sample means, denominator = number of samples with any output token.
- ``token``: every output token weighs the same. Numerator = summed token losses, denominator = token count.

Summing numerators and denominators over micro-batches and dividing once gives the same value (and gradient) as
one large batch.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def token_nll(logits: jnp.ndarray, tokens: jnp.ndarray) -> jnp.ndarray:
    """Per-position loss of predicting ``tokens[:, t+1]`` from ``logits[:, t]``.

    logits: [B, T, V] (any float dtype; computed in fp32), tokens: [B, T] int32 -> [B, T-1] float32.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = tokens[:, 1:]
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logz - picked


def masked_lm_loss(logits: jnp.ndarray, tokens: jnp.ndarray, loss_mask: jnp.ndarray,
                   weighting: str = "sequence") -> tuple[jnp.ndarray, jnp.ndarray]:
    """(numerator, denominator) of the SFT loss.

    loss_mask: [B, T], 1 where ``tokens[:, t]`` is a label (output tokens incl. EOS), 0 on prompt and padding.
    Returns two fp32 scalars; the loss is numerator / max(denominator, 1).
    """
    return _weighted(token_nll(logits, tokens), loss_mask[:, 1:].astype(jnp.float32), weighting)


def _weighted(nll: jnp.ndarray, mask: jnp.ndarray, weighting: str) -> tuple[jnp.ndarray, jnp.ndarray]:
    """nll, mask: float32 [B, T'] -> (numerator, denominator) for ``weighting``."""
    per_token = nll * mask
    if weighting == "token":
        return per_token.sum(), mask.sum()
    if weighting != "sequence":
        raise ValueError(f"unknown loss weighting {weighting!r}")
    count = mask.sum(axis=1)
    has_tokens = (count > 0).astype(jnp.float32)
    return (per_token.sum(axis=1) / jnp.maximum(count, 1.0) * has_tokens).sum(), has_tokens.sum()


def chunked_lm_loss(head: Callable[[jnp.ndarray, jax.Array | None], jnp.ndarray], hidden: jnp.ndarray,
                    tokens: jnp.ndarray, loss_mask: jnp.ndarray, weighting: str = "sequence", chunk: int = 128,
                    rng: jax.Array | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``masked_lm_loss`` without ever materialising [B, T, vocab] logits.

    head(hidden_chunk [B, C, D], rng) -> logits [B, C, vocab]. The sequence is cut into chunks of ``chunk``
    positions; each chunk's logits are recomputed in the backward pass (``jax.checkpoint``), and chunks without
    a label token (the prompt) skip the head at run time. Memory: O(B * chunk * vocab) instead of
    O(B * T * vocab). hidden: [B, T, D]; tokens, loss_mask: [B, T]. Returns fp32 (numerator, denominator).

    The chunks are an unrolled Python loop, not ``lax.scan``: under a scan, JAX would save the head's kernel
    (closed over) once per iteration for the backward pass.
    """
    t = hidden.shape[1]
    targets = tokens[:, 1:]
    mask = loss_mask[:, 1:].astype(jnp.float32)

    @jax.checkpoint
    def chunk_nll(h_c, tgt_c, key):
        logits = head(h_c, key).astype(jnp.float32)
        logz = jax.nn.logsumexp(logits, axis=-1)
        return logz - jnp.take_along_axis(logits, tgt_c[..., None], axis=-1)[..., 0]

    parts = []
    for i, start in enumerate(range(0, t - 1, chunk)):
        stop = min(start + chunk, t - 1)
        h_c, tgt_c, m_c = hidden[:, start:stop], targets[:, start:stop], mask[:, start:stop]
        key = None if rng is None else jax.random.fold_in(rng, i)
        parts.append(jax.lax.cond(jnp.any(m_c > 0), chunk_nll, lambda h, tg, k: jnp.zeros(tg.shape, jnp.float32),
                                  h_c, tgt_c, key))
    return _weighted(jnp.concatenate(parts, axis=1), mask, weighting)
