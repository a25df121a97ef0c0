"""The blocked causal attention used on XLA:CPU against jax.nn.dot_product_attention, values and gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.models.attention import cached_attention, causal_attention
from reclm_jax.models.kv_cache import write_slots


def _inputs(b=2, t=300, n=6, k=2, h=32, pad=37, seed=0):
    rng = np.random.default_rng(seed)
    q, key, v = (jnp.asarray(rng.normal(size=(b, t, heads, h)), jnp.float32) for heads in (n, k, k))
    valid = np.ones((b, t), bool)
    valid[1, :pad] = False  # left padding on the second row
    i = np.arange(t)
    # As the model builds it: causal, padding keys hidden, and every query sees at least itself.
    mask = ((i[None] <= i[:, None])[None] & valid[:, None, :]) | (i[None] == i[:, None])[None]
    out_grad = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
    return q, key, v, jnp.asarray(mask[:, None]), out_grad


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("block", [128, 64, 512])
def test_matches_dot_product_attention(dtype, tol, block):
    q, k, v, mask, out_grad = _inputs()
    scale = 1.0 / math.sqrt(q.shape[-1])
    args = [x.astype(dtype) for x in (q, k, v)]

    def ref(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)

    def new(q, k, v):
        return causal_attention(q, k, v, mask, scale, block)

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * out_grad)

    want, got = jax.jit(ref)(*args), jax.jit(new)(*args)
    assert got.dtype == dtype and got.shape == q.shape
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol, rtol=0)
    g_want = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(*args)
    g_got = jax.jit(jax.grad(loss(new), argnums=(0, 1, 2)))(*args)
    for name, a, b in zip("qkv", g_got, g_want):
        assert a.dtype == dtype, name
        scale_ = float(jnp.max(jnp.abs(b.astype(jnp.float32))))
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol * scale_, rtol=0,
                                   err_msg=f"gradient of {name}")


def test_future_keys_do_not_leak():
    # Changing the last token's key and value must leave every earlier query's output unchanged.
    q, k, v, mask, _ = _inputs(t=200, pad=0)
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = causal_attention(q, k, v, mask, scale, 64)
    out2 = causal_attention(q, k.at[:, -1].add(5.0), v.at[:, -1].add(5.0), mask, scale, 64)
    np.testing.assert_array_equal(np.asarray(out[:, :-1]), np.asarray(out2[:, :-1]))
    assert not np.allclose(np.asarray(out[:, -1]), np.asarray(out2[:, -1]))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads,kv_heads,t", [(6, 2, 1), (4, 4, 1), (4, 1, 3)])
def test_cached_attention_matches_dot_product_attention(dtype, tol, heads, kv_heads, t):
    rng = np.random.default_rng(1)
    slots, h = 40, 32
    q = jnp.asarray(rng.normal(size=(2, t, heads, h)), dtype)
    k, v = (jnp.asarray(rng.normal(size=(2, kv_heads, slots, h)), dtype) for _ in range(2))
    mask = jnp.asarray(rng.random((2, 1, t, slots)) < 0.6).at[..., 0].set(True)
    scale = 1.0 / math.sqrt(h)
    got = jax.jit(cached_attention, static_argnums=4)(q, k, v, mask, scale)
    want = jax.nn.dot_product_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask=mask, scale=scale)
    assert got.dtype == dtype and got.shape == q.shape
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_write_slots_writes_exactly_the_new_slots(dtype):
    rng = np.random.default_rng(2)
    cache = jnp.asarray(rng.normal(size=(2, 3, 10, 4)), dtype)
    new = jnp.asarray(rng.normal(size=(2, 2, 3, 4)), jnp.float32)  # [B, T, K, H]
    out = jax.jit(write_slots)(cache, new, jnp.int32(5))
    want = np.asarray(cache).copy()
    want[:, :, 5:7] = np.asarray(new.astype(dtype)).transpose(0, 2, 1, 3)
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out), want)
