"""bf16 products accumulated in f32 (the XLA:CPU fast path) and the LoRA dropout mask."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.models import native_kernels
from reclm_jax.models.linear import dropout_keep
from reclm_jax.models.matmul import matmul


def _operands(transposed: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(64, 96)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(48, 96) if transposed else (96, 48)), jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(64, 48)), jnp.bfloat16)
    return x, w, g


def _reference(x, w, transposed):
    # The same product done in f32 on the bf16 values: what an f32-accumulating bf16 dot must give.
    x, w = x.astype(jnp.float32), w.astype(jnp.float32)
    return x @ (w.T if transposed else w)


@pytest.mark.parametrize("transposed", [False, True])
def test_bf16_matmul_and_its_gradients_match_f32_math(transposed):
    x, w, g = _operands(transposed)
    y = matmul(x, w, transposed)
    assert y.dtype == jnp.bfloat16 and y.shape == (64, 48)
    want = _reference(x, w, transposed)
    # Accumulated in f32 and rounded once: within one bf16 rounding of the exact value.
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(want), rtol=2 ** -8, atol=1e-2)
    dx, dw = jax.grad(lambda x, w: jnp.sum(matmul(x, w, transposed).astype(jnp.float32) * g), argnums=(0, 1))(x, w)
    rx, rw = jax.grad(lambda x, w: jnp.sum(_reference(x, w, transposed) * g.astype(jnp.float32)),
                      argnums=(0, 1))(x.astype(jnp.float32), w.astype(jnp.float32))
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16 and dw.shape == w.shape
    np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(rx), rtol=2 ** -7, atol=5e-2)
    np.testing.assert_allclose(np.asarray(dw, np.float32), np.asarray(rw), rtol=2 ** -7, atol=5e-2)


@pytest.mark.parametrize("bf16_dot", [True, False], ids=["avx512-bf16", "no-bf16-dot"])
def test_every_bf16_dot_of_forward_and_backward_accumulates_in_f32(bf16_dot, monkeypatch):
    # The point of matmul on CPU: XLA:CPU only uses the bf16 dot instructions for bf16 x bf16 -> f32 dots; on a
    # CPU without them the operands are widened to f32 first (native_kernels.has_bf16_dot), the sums f32 either way.
    # More rows than the native few-row kernel takes (native_kernels.MAX_ROWS), so every product is XLA's.
    monkeypatch.setattr(native_kernels, "has_bf16_dot", lambda: bf16_dot)
    monkeypatch.setattr(native_kernels, "has_amx", lambda: False)  # AMX CPUs: the forward is a tile kernel's
    operand = "bf16" if bf16_dot else "f32"
    x, w, g = _operands(False)
    x = jnp.tile(x, (3, 1))
    assert x.shape[0] > native_kernels.MAX_ROWS
    fn = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(matmul(x, w).astype(jnp.float32) ** 2), argnums=(0, 1)))
    text = fn.lower(x, w).as_text()
    dots = re.findall(r"stablehlo\.dot_general.*", text)
    assert len(dots) == 3  # forward, input gradient, kernel gradient
    for line in dots:
        assert re.search(rf"\(tensor<[\dx]+x{operand}>, tensor<[\dx]+x{operand}>\) -> tensor<[\dx]+xf32>", line), line


@pytest.mark.parametrize("transposed", [False, True])
def test_one_row_bf16_product_equals_the_same_row_in_a_batch(transposed):
    # One row is padded to two (XLA:CPU's one-row bf16 dot is slow): the row's result must not change.
    x, w, _ = _operands(transposed)
    one = jax.jit(matmul, static_argnums=2)(x[3:4], w, transposed)
    many = jax.jit(matmul, static_argnums=2)(x, w, transposed)
    assert one.shape == (1, 48) and one.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(one, np.float32), np.asarray(many[3:4], np.float32))


def test_f32_matmul_is_the_plain_product():
    rng = np.random.default_rng(1)
    x, w = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32), jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    # f32 rounding of the sums, whatever order a backend adds them in (relative to |x| @ |w|, not to a result
    # that cancels towards zero)
    tol = 1e-6 * np.asarray(jnp.abs(x) @ jnp.abs(w))
    for got in (matmul(x, w), matmul(x, w.T, transposed=True)):
        assert got.dtype == jnp.float32
        assert np.all(np.abs(np.asarray(got) - np.asarray(x @ w)) <= tol)


@pytest.mark.parametrize("shape", [(512, 576), (300, 77)])
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_mask_rate_and_determinism(shape, rate):
    key = jax.random.key(3)
    keep = dropout_keep(key, rate, shape)
    assert keep.dtype == jnp.bool_ and keep.shape == shape
    n = keep.size
    dropped = 1.0 - float(keep.mean())
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)  # 5 sigma
    np.testing.assert_array_equal(np.asarray(keep), np.asarray(dropout_keep(key, rate, shape)))
    # Independent masks disagree on a fraction 2p(1-p) of entries: a different key, and the two halves of the
    # last axis (drawn from the low and high bits of the same words), must both behave so.
    expected = 2 * rate * (1 - rate)
    other = dropout_keep(jax.random.key(4), rate, shape)
    half = shape[-1] // 2
    for a, b in ((keep, other), (keep[:, :half], keep[:, half:2 * half])):
        assert abs(float(jnp.mean(a != b)) - expected) < 5 * np.sqrt(expected * (1 - expected) / a.size)
