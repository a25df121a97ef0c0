"""The token axis of the RL arrays: aligning next-token statistics with their tokens, and masked reductions.

Every per-token RL array is indexed by the token it is about (see ``reclm_jax.rl``): ``logp[b, t]`` is the
log-probability of token t given the tokens before it, ``entropy[b, t]`` the entropy of that same distribution,
``values[b, t]`` the critic's value of the state before token t, ``mask[b, t]`` true where token t is an action.
``models.token_stats.token_logprobs`` returns [B, T-1] arrays where position t is about token t+1;
``to_token_axis`` moves them onto the token axis.

Loss normalisation (``token_weights``), selectable because the original's choice is not the usual one:

- ``sequence`` (the original, audit R4): the mean over each sequence's action tokens, then the mean over the
  sequences that have any. ``w[b, t] = mask[b, t] / n_b / S`` with n_b the row's action-token count and S the
  number of rows with n_b > 0. Every sequence weighs the same whatever its length (DeepSeekMath's GRPO too).
- ``token``: every action token weighs the same, ``w[b, t] = mask[b, t] / N`` with N the batch's action tokens.

A loss is then ``sum(w * per_token_loss)``. ``denominator`` (S or N) can be given for a whole mini-batch that is
split into micro-batches: summing the micro-batches' losses then gives exactly the mini-batch's loss and gradient.
"""

from __future__ import annotations

import jax.numpy as jnp

NORMALISATIONS = ("sequence", "token")


def to_token_axis(next_token_stat: jnp.ndarray, fill: float = 0.0) -> jnp.ndarray:
    """[B, T-1] statistics where position t is about token t+1 -> [B, T] where position t is about token t.

    Column 0 (the first token has no prediction) is ``fill``. Used for log-probs and entropies from
    ``models.token_stats.token_logprobs``: the entropy that goes with action token t is the one of the
    distribution that predicted it (the original paired it with the next one: spec §10.6).
    """
    pad = jnp.full(next_token_stat.shape[:-1] + (1,), fill, next_token_stat.dtype)
    return jnp.concatenate([pad, next_token_stat], axis=-1)


def check_normalisation(normalisation: str) -> None:
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown loss normalisation {normalisation!r}; valid: {', '.join(NORMALISATIONS)}")


def normaliser(mask: jnp.ndarray, normalisation: str) -> jnp.ndarray:
    """This batch's denominator: float32 scalar, rows with any action token (``sequence``) or action tokens."""
    check_normalisation(normalisation)
    m = mask.astype(jnp.float32)
    if normalisation == "token":
        return m.sum()
    return (m.sum(axis=-1) > 0).astype(jnp.float32).sum()


def token_weights(mask: jnp.ndarray, normalisation: str = "sequence",
                  denominator: jnp.ndarray | float | None = None) -> jnp.ndarray:
    """Per-token weights w [B, T] float32 (0 off the mask) such that a loss is ``sum(w * per_token)``.

    mask: bool or 0/1 [B, T]. denominator: the S or N of the module docstring for the whole mini-batch (a
    float32 scalar); None uses this batch's own (``normaliser``). A row without action tokens weighs 0; an
    all-masked batch gives all-zero weights (a zero loss, not NaN).
    """
    check_normalisation(normalisation)
    m = mask.astype(jnp.float32)
    den = normaliser(mask, normalisation) if denominator is None else jnp.asarray(denominator, jnp.float32)
    den = jnp.maximum(den, 1.0)
    if normalisation == "token":
        return m / den
    count = m.sum(axis=-1, keepdims=True)
    return m / jnp.maximum(count, 1.0) / den


def weighted_sum(x: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """``sum(weights * x)`` as float32, with x zeroed where the weight is 0 (so inf/NaN off the mask never leak)."""
    x = jnp.where(weights != 0, x.astype(jnp.float32), 0.0)
    return jnp.sum(weights * x)


def masked_mean(x: jnp.ndarray, mask: jnp.ndarray, axis=None) -> jnp.ndarray:
    """Mean of x over the mask (float32); 0 where the mask selects nothing."""
    m = mask.astype(jnp.float32)
    x = jnp.where(m > 0, x.astype(jnp.float32), 0.0)
    return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)
