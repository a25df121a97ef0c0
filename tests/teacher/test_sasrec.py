from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reclm_jax.models import native_kernels
from reclm_jax.teacher.config import SASRecConfig
from reclm_jax.teacher.sasrec import SASRec, Dropout, dropout_bits, layer_norm, matmul


def test_parameter_count_matches_the_original_movie_teacher():
    # the original's sub_movie SASRec: n_items 18730 including [PAD] -> 2,664,064 parameters
    model = nnx.eval_shape(lambda: SASRec(18729, SASRecConfig(), nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == 2_664_064


def _small():
    return SASRec(20, SASRecConfig(dim=16, num_heads=2, inner_dim=32, window=5), nnx.Rngs(0))


def test_padding_is_inert_and_never_scored():
    m = _small()
    h = jnp.array([[0, 0, 3, 4, 5]], jnp.int32)
    before = m(h)
    assert np.isneginf(np.asarray(before)[0, 0]) and np.isfinite(np.asarray(before)[0, 1:]).all()
    # whatever the pad row holds, it does not reach the output
    m.item_emb.embedding[...] = m.item_emb.embedding[...].at[0].set(5.0)
    np.testing.assert_allclose(np.asarray(m(h))[0, 1:], np.asarray(before)[0, 1:], rtol=1e-5)


def test_causal_mask_hides_future_positions():
    m = _small()
    h1 = jnp.array([[1, 2, 3, 4, 5]], jnp.int32)
    h2 = jnp.array([[1, 2, 3, 4, 9]], jnp.int32)
    a, b = m.hidden_states(h1), m.hidden_states(h2)
    np.testing.assert_allclose(np.asarray(a[:, :4]), np.asarray(b[:, :4]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(a[:, 4]), np.asarray(b[:, 4]))
    # the user state is the last position
    np.testing.assert_allclose(np.asarray(m.user_state(h1)), np.asarray(a[:, -1]), rtol=1e-6)


def test_dropout_only_in_training_mode():
    m = SASRec(20, SASRecConfig(dim=16, num_heads=2, inner_dim=32, window=5, dropout=0.5), nnx.Rngs(0))
    h = jnp.array([[0, 1, 2, 3, 4]], jnp.int32)
    np.testing.assert_array_equal(np.asarray(m(h)), np.asarray(m(h)))
    t1 = m(h, deterministic=False, rngs=nnx.Rngs(dropout=1))
    t2 = m(h, deterministic=False, rngs=nnx.Rngs(dropout=2))
    assert not np.allclose(np.asarray(t1)[:, 1:], np.asarray(t2)[:, 1:])


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.1])
def test_dropout_keeps_each_element_with_one_minus_rate_and_stays_unbiased(rate):
    drop = Dropout(rate)
    x = jnp.ones((400, 500), jnp.float32)
    y = np.asarray(drop(x, deterministic=False, rngs=nnx.Rngs(dropout=3)))
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 0.005
    np.testing.assert_allclose(y.mean(), 1.0, atol=0.01)  # kept values scaled by 1 / keep probability
    assert np.allclose(y[kept], y[kept][0])
    # independent masks for different keys, the identity when deterministic
    y2 = np.asarray(drop(x, deterministic=False, rngs=nnx.Rngs(dropout=4)))
    assert 0.3 < np.mean(kept == (y2 != 0)) < 0.9
    np.testing.assert_array_equal(np.asarray(drop(x, deterministic=True, rngs=None)), np.asarray(x))


def test_dropout_bits_represent_the_rate_exactly_when_they_can():
    assert [dropout_bits(r) for r in (0.5, 0.25, 0.75, 0.125, 1 / 256, 0.1, 0.3)] == [1, 2, 2, 4, 8, 16, 16]


def test_layer_norm_gradient_matches_autodiff_of_the_flax_layer():
    ln = nnx.LayerNorm(16, epsilon=1e-12, rngs=nnx.Rngs(0))
    ln.scale[...] = jnp.linspace(0.5, 1.5, 16)
    ln.bias[...] = jnp.linspace(-1.0, 1.0, 16)
    graphdef, state = nnx.split(ln)
    x = jax.random.normal(jax.random.key(1), (3, 5, 16)) * 3 + 1
    g = jax.random.normal(jax.random.key(2), (3, 5, 16))

    def loss(fn, state, x):
        return jnp.sum(fn(nnx.merge(graphdef, state), x) * g)

    ref = jax.grad(lambda s, x: loss(lambda m, x: m(x), s, x), argnums=(0, 1))(state, x)
    new = jax.grad(lambda s, x: loss(layer_norm, s, x), argnums=(0, 1))(state, x)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(new)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
def test_bf16_products_follow_the_f32_ones_gradients_included(transposed):
    x = jax.random.normal(jax.random.key(0), (64, 32))
    w = jax.random.normal(jax.random.key(1), (48, 32) if transposed else (32, 48))

    def loss(dtype, x, w):
        return 0.5 * jnp.sum(matmul(x, w, dtype, transposed) ** 2)

    g32, g16 = (jax.grad(loss, argnums=(1, 2))(d, x, w) for d in ("float32", "bfloat16"))
    for a, b in zip(g32, g16):
        assert a.shape == b.shape and b.dtype == jnp.float32
        assert np.abs(np.asarray(a - b)).max() < 0.02 * np.abs(np.asarray(a)).max()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_last_layer_run_for_the_last_position_only_gives_the_full_stacks_state(dtype):
    m = SASRec(20, SASRecConfig(dim=16, num_heads=2, inner_dim=32, window=5, num_layers=2, matmul_dtype=dtype),
               nnx.Rngs(0))
    h = jnp.array([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]], jnp.int32)
    np.testing.assert_allclose(np.asarray(m.user_state(h)), np.asarray(m.hidden_states(h)[:, -1]), rtol=1e-5,
                               atol=1e-5)


def test_bf16_affine_gradient_includes_the_bias():
    x = jax.random.normal(jax.random.key(0), (64, 32))
    w = jax.random.normal(jax.random.key(1), (32, 48))
    b = jax.random.normal(jax.random.key(2), (48,))

    def loss(dtype, x, w, b):
        return 0.5 * jnp.sum(matmul(x, w, dtype, bias=b) ** 2)

    g32, g16 = (jax.grad(loss, argnums=(1, 2, 3))(d, x, w, b) for d in ("float32", "bfloat16"))
    for a, c in zip(g32, g16):
        assert a.shape == c.shape
        assert np.abs(np.asarray(a - c)).max() < 0.02 * np.abs(np.asarray(a)).max()


@pytest.mark.skipif(not native_kernels.has_amx(), reason="no AMX tiles here")
@pytest.mark.parametrize("form", ["plain", "transposed", "bias"])
def test_bf16_products_and_their_gradients_on_the_tiles_follow_xlas(form, monkeypatch):
    # 300 rows (> native_kernels.MAX_ROWS): the forward, input-gradient and weight-gradient products all take the
    # tiles, the weight gradient (and the bias's, as its last row) without a transpose in XLA.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((300, 40)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((70, 40) if form == "transposed" else (40, 70)), jnp.float32)
    b = jnp.asarray(rng.standard_normal(70), jnp.float32)

    def loss(x, w, b):
        y = matmul(x, w, "bfloat16", transposed=form == "transposed", bias=b if form == "bias" else None)
        return 0.5 * jnp.sum(y ** 2)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    text = grad.lower(x, w, b).as_text()
    assert "reclm_amx_tn" in text and "dot_general" not in text
    tiles = grad(x, w, b)
    monkeypatch.setattr(native_kernels, "has_amx", lambda: False)
    plain = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, w, b)
    for a, c in zip(jax.tree.leaves(plain), jax.tree.leaves(tiles)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=2e-5, atol=1e-4 * np.abs(np.asarray(a)).max())
    assert (np.abs(np.asarray(tiles[1][2])).max() > 0) == (form == "bias")  # db: the tn product's ones row
