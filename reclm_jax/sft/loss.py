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

from reclm_jax.models.token_stats import token_logprobs


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

    head(hidden_chunk [B, C, D], rng) -> logits [B, C, vocab]. The per-token log-probabilities come from
    ``models.token_stats.token_logprobs`` in chunks of ``chunk`` positions (logits recomputed in the backward
    pass, chunks without a label token skip the head). hidden: [B, T, D]; tokens, loss_mask: [B, T].
    Returns fp32 (numerator, denominator).
    """
    mask = loss_mask[:, 1:].astype(jnp.float32)
    logp, _ = token_logprobs(head, hidden, tokens, mask > 0, chunk=chunk, entropy=False, rng=rng)
    return _weighted(-logp, mask, weighting)
