"""The AMX tile products (models/native/amx_dot.cc) against the exact product, and where the model uses them."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.models import native_kernels

BF16, F32 = jnp.bfloat16, jnp.float32

pytestmark = pytest.mark.skipif(not native_kernels.has_amx(),
                                reason="no AMX tiles here (needs AVX512-BF16 + AMX-BF16, a C++ compiler, the OS's grant)")

# Every tail: rows not a multiple of the 32-row blocks, K not a multiple of the 32-deep tiles (odd, below 32),
# N not a multiple of the 16-column tiles or the 64-column strips.
SHAPES = [(129, 576, 1536), (256, 576, 192), (200, 17, 50), (160, 16, 64), (300, 33, 100), (131, 1, 3),
          (640, 1536, 576)]


def _bf16(rng, shape, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape) * scale, BF16)


def _check_exact_within_f32(out, x, w, transposed):
    # bf16 products are exact in f64: the tiles' f32 sums must be within f32 rounding of the exact sum (relative
    # to sum |x||w|, not to a result that cancels towards zero).
    x64, w64 = np.asarray(x.astype(F32), np.float64), np.asarray(w.astype(F32), np.float64)
    w64 = w64.T if transposed else w64
    exact, scale = x64 @ w64, np.abs(x64) @ np.abs(w64)
    k = x.shape[1]
    assert out.dtype == np.float32 and out.shape == exact.shape
    assert np.all(np.abs(out - exact) <= scale * k * 2.0 ** -24 + 1e-30)
    assert np.abs(out).max() > 0  # not a zero output that passes by cancellation


@pytest.mark.parametrize("transposed", [False, True], ids=["kn", "nk"])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_amx_product_within_f32_rounding_of_the_exact_one(m, k, n, transposed):
    rng = np.random.default_rng(m * 7 + k * 3 + n)
    x, w = _bf16(rng, (m, k)), _bf16(rng, (n, k) if transposed else (k, n), 0.05)
    out = np.asarray(jax.jit(native_kernels.amx_dot, static_argnums=2)(x, w, transposed))
    _check_exact_within_f32(out, x, w, transposed)
    # the same bits on a second call (no state left from the first: scratch buffers, tile configuration)
    np.testing.assert_array_equal(out, np.asarray(jax.jit(native_kernels.amx_dot, static_argnums=2)(x, w, transposed)))


@pytest.mark.parametrize("m,k,n", [(129, 576, 1536), (300, 33, 100), (200, 17, 50), (160, 1536, 576)])
def test_packed_amx_product_equals_the_unpacked_one(m, k, n):
    # The decoding programs' packed kernels (pack_kernel: K2 = ceil(K / 2) pair rows, not whole tiles) feed the
    # tiles directly; the last tile's missing pair rows are zero, so the sums are the unpacked product's.
    rng = np.random.default_rng(k + n)
    x, w = _bf16(rng, (m, k)), _bf16(rng, (k, n), 0.05)
    packed = np.asarray(jax.jit(native_kernels.amx_packed_dot, static_argnums=2)(x, native_kernels.pack_kernel(w), n))
    np.testing.assert_array_equal(packed, np.asarray(jax.jit(native_kernels.amx_dot)(x, w)))
    _check_exact_within_f32(packed, x, w, False)


# Weight gradients: M (the contracted rows) long and not a multiple of 32, K odd (a last column without a pair
# partner) or below one block, N off the tiles.
TN_SHAPES = [(10240, 128, 384), (1024, 3707, 128), (300, 17, 50), (33, 1, 3), (129, 64, 16), (5, 40, 70)]


@pytest.mark.parametrize("ones_row", [False, True], ids=["plain", "ones_row"])
@pytest.mark.parametrize("m,k,n", TN_SHAPES)
def test_transposed_amx_product_within_f32_rounding_of_the_exact_one(m, k, n, ones_row):
    rng = np.random.default_rng(m + 5 * k + n)
    a, b = _bf16(rng, (m, k)), _bf16(rng, (m, n), 0.05)
    tn = jax.jit(native_kernels.amx_tn_dot, static_argnums=2)
    out = np.asarray(tn(a, b, ones_row))
    ones = jnp.ones((m, 1), BF16)
    _check_exact_within_f32(out, jnp.concatenate([a, ones], 1).T if ones_row else a.T, b, False)
    np.testing.assert_array_equal(out, np.asarray(tn(a, b, ones_row)))  # no state left from the first call


def test_many_row_forward_products_take_the_tiles_and_gradients_stay_xla():
    from reclm_jax.models.matmul import matmul

    rng = np.random.default_rng(0)
    x, w = _bf16(rng, (native_kernels.MAX_ROWS + 3, 64)), _bf16(rng, (64, 48), 0.1)
    loss = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(matmul(x, w).astype(F32) ** 2), argnums=(0, 1)))
    text = loss.lower(x, w).as_text()
    assert "reclm_amx_kn" in text
    assert len(re.findall(r"stablehlo\.dot_general", text)) == 2  # the two gradient products
    few = jax.jit(matmul).lower(x[: native_kernels.MAX_ROWS], w).as_text()
    assert "reclm_amx" not in few  # decoding's few rows keep the pair-order kernels
    _, (dx, dw) = loss(x, w)
    assert dx.shape == x.shape and dw.shape == w.shape and bool(jnp.all(jnp.isfinite(dw.astype(F32))))


def test_decoding_on_the_tiles_gives_the_same_tokens_as_without_them(monkeypatch):
    # 16 prompts of 12 tokens: a prefill of at least 192 rows (> MAX_ROWS) and decoding steps of 16 rows
    # (AMX_PACKED_MIN_ROWS) run every projection on the tiles against the packed kernels.
    from flax import nnx

    from reclm_jax.models.llama import LlamaForCausalLM
    from reclm_jax.models.llama_config import LlamaConfig
    from reclm_jax.models.sampler import Sampler

    cfg = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=32, tie_word_embeddings=False, param_dtype="bfloat16",
                      dtype="bfloat16", kernels="cpu")
    model = LlamaForCausalLM(cfg, nnx.Rngs(0))
    prompts = np.random.default_rng(1).integers(1, 300, size=(16, 12)).tolist()
    calls = []
    real = native_kernels.amx_packed_dot
    monkeypatch.setattr(native_kernels, "amx_packed_dot", lambda *a: calls.append(a[0].shape) or real(*a))
    tiles = Sampler(model, pad_id=0)(prompts, max_new_tokens=8)
    rows = {shape[0] for shape in calls}
    assert 16 in rows and max(rows) >= 16 * 12 > native_kernels.MAX_ROWS  # steps, and the (bucketed) prefill
    monkeypatch.setattr(native_kernels, "has_amx", lambda: False)
    plain = Sampler(model, pad_id=0)(prompts, max_new_tokens=8)
    np.testing.assert_array_equal(tiles.tokens, plain.tokens)
    np.testing.assert_allclose(tiles.logprobs, plain.logprobs, atol=2e-2)
