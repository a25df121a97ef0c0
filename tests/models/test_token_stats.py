"""Chunked per-token log-probs and entropies: equal to the full-logits computation (values and gradients),
masked chunks skip the head, and no [B, T, vocab] array is ever built."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.lora import LoraConfig, adapter_modules, add_lora
from reclm_jax.models.token_stats import token_logprobs


def full_stats(logits, tokens, temperature=1.0):
    """Reference: log_softmax over the whole [B, T, V] logits."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32) / temperature, axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return picked, -jnp.sum(jnp.exp(logp) * logp, axis=-1)


@pytest.fixture(scope="module")
def head_case(tiny_llama_factory):
    """A tied tiny model whose head carries a trained LoRA adapter; its final hidden states and tokens."""
    model = load_llama(tiny_llama_factory("smollm2"), progress=False)
    add_lora(model, LoraConfig(rank=4, targets=("lm_head",)), "actor")
    for lin in adapter_modules(model, "actor").values():
        b = lin.lora["actor"]["b"]
        b.set_value(jax.random.normal(jax.random.key(0), b[...].shape) * 0.1)
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, 500, (2, 45)), jnp.int32)
    hidden = model(tokens, compute_logits=False).hidden
    return model, hidden, tokens


def test_equals_full_log_softmax_and_entropy_with_gradients(head_case):
    model, hidden, tokens = head_case

    def head(h, _key):
        return model.head(h, adapter="actor")

    coef = jnp.asarray(np.random.default_rng(1).normal(size=(2, 44, 2)), jnp.float32)

    def objective(stats):
        def f(h):
            lp, ent = stats(h)
            return jnp.sum(lp * coef[..., 0] + ent * coef[..., 1])

        return f

    def chunked(h):
        return token_logprobs(head, h, tokens, chunk=16, temperature=0.7)

    def full(h):
        return full_stats(model.head(h, adapter="actor"), tokens, temperature=0.7)

    (lp, ent), (lp_ref, ent_ref) = jax.jit(chunked)(hidden), jax.jit(full)(hidden)
    assert lp.shape == ent.shape == (2, 44) and lp.dtype == ent.dtype == jnp.float32
    assert float(ent.min()) > 0.5 and float(lp.max()) < 0  # a real distribution, not a constant
    np.testing.assert_allclose(np.asarray(lp), np.asarray(lp_ref), atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent), np.asarray(ent_ref), atol=2e-5)
    g, g_ref = jax.jit(jax.grad(objective(chunked)))(hidden), jax.jit(jax.grad(objective(full)))(hidden)
    assert float(jnp.abs(g_ref).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-5)
    assert token_logprobs(head, hidden[:, :8], tokens[:, :8], chunk=16, entropy=False)[1] is None
    lp_only = jax.jit(lambda h: token_logprobs(head, h, tokens, chunk=16, temperature=0.7, entropy=False)[0])(hidden)
    np.testing.assert_array_equal(np.asarray(lp_only), np.asarray(lp))


def test_masked_chunks_skip_the_head(head_case):
    model, hidden, tokens = head_case
    runs = []

    def head(h, _key):
        jax.debug.callback(lambda: runs.append(1))  # fires only when the head really runs
        return model.head(h)

    mask = np.zeros((2, 44), bool)
    mask[0, 20:23] = True  # chunk 1 of [0, 16), [16, 32), [32, 44)
    mask[1, 40:] = True  # chunk 2
    lp, ent = jax.jit(lambda h, m: token_logprobs(head, h, tokens, m, chunk=16))(hidden, jnp.asarray(mask))
    jax.effects_barrier()
    assert len(runs) == 2  # chunk 0 has no masked position: skipped
    lp_ref, ent_ref = jax.jit(lambda h: full_stats(model.head(h), tokens))(hidden)
    np.testing.assert_allclose(np.asarray(lp), np.where(mask, np.asarray(lp_ref), 0), atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent), np.where(mask, np.asarray(ent_ref), 0), atol=2e-5)
    assert (np.asarray(lp)[mask] < 0).all()


def _all_shapes(jaxpr) -> list[tuple[int, ...]]:
    """Shapes of every value produced anywhere in ``jaxpr``, sub-jaxprs (cond, checkpoint, pjit) included."""
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes += _all_shapes(inner)
    return shapes


def test_no_batch_by_length_by_vocab_array_exists():
    b, t, d, v, chunk = 2, 40, 8, 50, 8
    rng = np.random.default_rng(2)
    hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
    mask = jnp.asarray(rng.random((b, t - 1)) < 0.5)

    def loss(stats_fn):
        def f(hidden, w):
            lp, ent = stats_fn(hidden, w)
            return jnp.sum(lp) + jnp.sum(ent)

        return jax.grad(f, argnums=(0, 1))

    def chunked(hidden, w):
        return token_logprobs(lambda h, _: h @ w, hidden, tokens, mask, chunk=chunk)

    def full(hidden, w):
        lp, ent = full_stats(hidden @ w, tokens)
        return jnp.where(mask, lp, 0), jnp.where(mask, ent, 0)

    def biggest_vocab_array(fn):
        shapes = _all_shapes(jax.make_jaxpr(loss(fn))(hidden, w).jaxpr)
        return max(int(np.prod(s)) for s in shapes if s and s[-1] == v)

    assert biggest_vocab_array(full) >= b * (t - 1) * v  # the check sees a full-logits array when there is one
    assert biggest_vocab_array(chunked) <= b * chunk * v
    g = jax.jit(loss(chunked))(hidden, w)
    g_ref = jax.jit(loss(full))(hidden, w)
    for a, r in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-5)
