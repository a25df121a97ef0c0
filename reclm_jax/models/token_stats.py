"""Per-token log-probabilities and entropies of the next token, without ever holding [B, T, vocab] logits.

SFT's loss needs ``log p(tokens[t+1] | tokens[:t+1])`` on the output positions; PPO needs the same for the
actor and the reference policy, plus the actor's entropy. The vocabulary (49k for SmolLM2, 128k for
Llama-3) makes full [B, T, vocab] logits the largest array of a step, so the sequence is cut into chunks of
``chunk`` positions and the LM head runs on one chunk at a time:

- each chunk is under ``jax.checkpoint``: the backward pass recomputes its logits instead of keeping them;
- a chunk where ``mask`` selects no position (the prompt) skips the head at run time (``lax.cond``);
- the chunks are an unrolled Python loop, not ``lax.scan``: under a scan JAX would save the head's kernel
  (closed over) once per iteration for the backward pass.

Memory: O(B * chunk * vocab) instead of O(B * T * vocab).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Head = Callable[[jnp.ndarray, "jax.Array | None"], jnp.ndarray]


def token_logprobs(head: Head, hidden: jnp.ndarray, tokens: jnp.ndarray, mask: jnp.ndarray | None = None, *,
                   chunk: int = 128, temperature: float = 1.0, entropy: bool = True,
                   rng: jax.Array | None = None) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """``(logprobs, entropy)`` of the next token at every position, chunk by chunk.

    head(hidden_chunk [B, C, D], key) -> logits [B, C, vocab] (any float dtype; statistics are taken in
    float32 of ``logits / temperature``). key is ``fold_in(rng, chunk index)``, or None without ``rng``
    (e.g. LoRA dropout keys). hidden: [B, T, D] (the final-norm output); tokens: int [B, T].
    mask: optional [B, T-1], aligned with the outputs (position t predicts ``tokens[:, t+1]``): chunks
    where it is all zero skip the head, and both outputs are 0 wherever it is 0.

    Returns logprobs float32 [B, T-1], ``log softmax(logits[:, t] / temperature)[tokens[:, t+1]]``, and
    entropy float32 [B, T-1] of the same distribution (None when ``entropy=False``, which skips its work).
    """
    b, t = tokens.shape
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    targets = tokens[:, 1:]
    keep = None if mask is None else mask.astype(bool)

    @jax.checkpoint
    def stats(h_c, tgt_c, key):
        logits = head(h_c, key).astype(jnp.float32)
        if temperature != 1.0:
            logits = logits / temperature
        logz = jax.nn.logsumexp(logits, axis=-1)
        logp = jnp.take_along_axis(logits, tgt_c[..., None], axis=-1)[..., 0] - logz
        if not entropy:
            return logp, jnp.zeros_like(logp)
        # H = logZ - E_p[logits]: one pass over the vocabulary, no [.., vocab] log-probabilities kept.
        ent = logz - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
        return logp, ent

    def skipped(h_c, tgt_c, key):
        zeros = jnp.zeros(tgt_c.shape, jnp.float32)
        return zeros, zeros

    logps, ents = [], []
    for i, start in enumerate(range(0, t - 1, chunk)):
        stop = min(start + chunk, t - 1)
        h_c, tgt_c = hidden[:, start:stop], targets[:, start:stop]
        key = None if rng is None else jax.random.fold_in(rng, i)
        if keep is None:
            lp, en = stats(h_c, tgt_c, key)
        else:
            k_c = keep[:, start:stop]
            lp, en = jax.lax.cond(jnp.any(k_c), stats, skipped, h_c, tgt_c, key)
            lp, en = jnp.where(k_c, lp, 0.0), jnp.where(k_c, en, 0.0)
        logps.append(lp)
        ents.append(en)
    if not logps:  # T == 1: nothing to predict
        empty = jnp.zeros((b, 0), jnp.float32)
        return empty, (empty if entropy else None)
    logp = jnp.concatenate(logps, axis=1)
    return logp, (jnp.concatenate(ents, axis=1) if entropy else None)
