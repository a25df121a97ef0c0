"""The jitted SFT train step: gradient accumulation inside one compiled function, LoRA params only.

The model is split once into (graphdef, trainable, frozen). The step is a pure function of
(trainable, opt_state, frozen, batch, rng); only ``trainable`` is differentiated, and its buffers and the
optimiser state are donated so they are updated in place.

Batches carry a leading accumulation axis: tokens/attention_mask/loss_mask are int32 [A, B, T] for A
micro-batches of B rows. Micro-batches run in a ``lax.scan`` that sums loss numerators, denominators and
gradients; the update uses their ratio, so A micro-batches of B give the same update as one batch of A*B.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from reclm_jax.sft.loss import chunked_lm_loss


class Batch(NamedTuple):
    tokens: jax.Array  # int32 [A, B, T]
    attention_mask: jax.Array  # int32 [A, B, T], 1 on real tokens (prompt and output)
    loss_mask: jax.Array  # int32 [A, B, T], 1 on output tokens incl. EOS


# Positions per LM-head chunk: bounds the logits held at once to [B, LOSS_CHUNK, vocab] (vocab can be 85x the
# hidden size, e.g. SmolLM2), and lets prompt-only chunks skip the head.
LOSS_CHUNK = 128


def _loss_parts(graphdef, trainable, frozen, tokens, attention_mask, loss_mask, rng, adapter, weighting):
    model = nnx.merge(graphdef, trainable, frozen)
    hidden = model(tokens, attention_mask=attention_mask, adapter=adapter, dropout_rng=rng,
                   compute_logits=False).hidden
    head_rng = None if rng is None else jax.random.fold_in(rng, 1 << 20)

    def head(h, key):
        return model.head(h, adapter=adapter, dropout_rng=key)

    return chunked_lm_loss(head, hidden, tokens, loss_mask, weighting, LOSS_CHUNK, head_rng)


def make_train_step(graphdef, tx: optax.GradientTransformation, *, adapter: str = "default",
                    weighting: str = "sequence", dropout: bool = True, state_shardings: Any = None) -> Callable:
    """Returns ``step(trainable, opt_state, frozen, batch, rng) -> (trainable, opt_state, metrics)``.

    ``state_shardings``: ``(trainable, opt_state)`` pytrees of shardings (``reclm_jax.train.state.place_state``).
    Pinning the outputs to the inputs' shardings keeps the second call from recompiling (XLA may otherwise pick
    another layout for the updated parameters). Call the step inside ``Runtime.activate()`` so the model's
    activation sharding constraints apply.

    metrics: fp32 scalars ``loss`` (this update's loss), ``grad_norm`` (before clipping), ``denominator``
    (samples or tokens the loss averaged over) and ``tokens`` (label tokens seen).
    """

    def micro(trainable, frozen, tokens, attention_mask, loss_mask, rng):
        num, den = _loss_parts(graphdef, trainable, frozen, tokens, attention_mask, loss_mask,
                               rng if dropout else None, adapter, weighting)
        return num, den

    grad_fn = jax.value_and_grad(micro, has_aux=True)  # differentiates the numerator; aux = denominator

    def step(trainable, opt_state, frozen, batch: Batch, rng):
        accum = batch.tokens.shape[0]
        rngs = jax.random.split(rng, accum)

        def body(carry, xs):
            grads, num, den = carry
            tokens, attention_mask, loss_mask, r = xs
            (n, d), g = grad_fn(trainable, frozen, tokens, attention_mask, loss_mask, r)
            return (jax.tree.map(jnp.add, grads, g), num + n, den + d), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grads, num, den), _ = jax.lax.scan(body, init, (batch.tokens, batch.attention_mask, batch.loss_mask, rngs))
        den_safe = jnp.maximum(den, 1.0)
        grads = jax.tree.map(lambda g: g / den_safe, grads)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {"loss": num / den_safe, "grad_norm": optax.tree.norm(grads), "denominator": den,
                   "tokens": jnp.sum(batch.loss_mask[:, :, 1:]).astype(jnp.float32)}
        return trainable, opt_state, metrics

    out_shardings = None if state_shardings is None else (*state_shardings, None)
    return jax.jit(step, donate_argnums=(0, 1), out_shardings=out_shardings)
