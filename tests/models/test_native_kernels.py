"""The native decoding kernels (models/native_kernels.py) against the XLA path they replace."""

from __future__ import annotations

import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reclm_jax.models import native_kernels
from reclm_jax.models.attention import cached_attention
from reclm_jax.models.kv_cache import write_slots

BF16, F32 = jnp.bfloat16, jnp.float32

pytestmark = pytest.mark.skipif(native_kernels.library() is None,
                                reason="native kernels not built here (no AVX-512 CPU or no C++ compiler)")


@pytest.fixture(params=[None, *native_kernels.other_builds()], ids=lambda b: b or "own-build")
def build(request):
    """This machine's build (None), then each other build its CPU runs (the AVX2 one on an AVX-512 CPU): every
    kernel checked against XLA where it can run, not only where the model would pick it."""
    if request.param is not None and not native_kernels.load_build(request.param):
        pytest.fail(f"the {request.param} build of the native kernels did not build or load here")
    return request.param


def _xla_dot(x, w, transposed):
    dims = (((1,), (1 if transposed else 0,)), ((), ()))
    return jax.lax.dot_general(x, w, dims, preferred_element_type=F32)


def _bf16(rng, shape, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape) * scale, BF16)


def _pair_order_dot(x, w):
    """x [M, K] @ w [K, N] (bf16) -> f32 [M, N] summed as vdpbf16ps sums: along K in pairs, the odd product of a
    pair added before the even one, every add rounded to f32 (bf16 products are exact in f32).

    The kernels' documented order, and the reference of the bit-identity tests. XLA:CPU's own bf16 dot is not a
    fixed reference: jax 0.10 lowers it to a YNNPACK fusion whose kernel, hence summation order, depends on the
    CPU (it matched this order on Zen 4/5, Skylake-SP and Zen 2, not on Sapphire Rapids)."""
    x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
    acc = np.zeros((x.shape[0], w.shape[1]), np.float32)
    for j in range(0, x.shape[1], 2):
        if j + 1 < x.shape[1]:
            acc = acc + np.outer(x[:, j + 1], w[j + 1]).astype(np.float32)
        acc = acc + np.outer(x[:, j], w[j]).astype(np.float32)
    return acc


def _assert_within_f32_rounding(out, x, w, transposed=False):
    """out within f32 summation rounding of the exact product (bf16 products are exact in f64)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    w = w.T if transposed else w
    exact, scale = x @ w, np.abs(x) @ np.abs(w)
    assert np.all(np.abs(np.asarray(out, np.float64) - exact) <= 4 * x.shape[1] * 2.0 ** -24 * scale + 1e-30)


# Shapes with every tail: odd K, N not a multiple of the 64-column strips, row counts around the 6-row blocks.
SHAPES = [(2, 576, 1536), (3, 577, 100), (16, 576, 192), (13, 64, 33), (7, 31, 7), (64, 1536, 576), (128, 96, 130)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_product_sums_in_the_pair_order(m, k, n, build):
    # Bit for bit the documented order (so every build gives the same bits), and XLA's product to f32 rounding.
    rng = np.random.default_rng(m * 1000 + k)
    x, w = _bf16(rng, (m, k)), _bf16(rng, (k, n), 0.05)
    ours = np.asarray(jax.jit(lambda x, w: native_kernels.native_dot(x, w, build=build))(x, w))
    np.testing.assert_array_equal(ours, _pair_order_dot(x, w))
    _assert_within_f32_rounding(np.asarray(jax.jit(_xla_dot, static_argnums=2)(x, w, False)), x, w)


@pytest.mark.parametrize("k,n", [(576, 1536), (1536, 576), (577, 100), (64, 33), (3, 40), (1, 17)])
def test_one_row_product_within_f32_rounding(k, n, build):
    # One row is split along K into a fixed number of blocks whose f32 partial sums are added in order: not
    # XLA's order along K, so the reference is the exact product (bf16 products are exact in f64), and the
    # result must not change from call to call (the split does not depend on the threads).
    rng = np.random.default_rng(k + n)
    x, w = _bf16(rng, (1, k)), _bf16(rng, (k, n), 0.05)
    fn = jax.jit(lambda x, w: native_kernels.native_dot(x, w, build=build))
    ours = np.asarray(fn(x, w))
    _assert_within_f32_rounding(ours, x, w)
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(fn(x, w)), ours)


@pytest.mark.parametrize("m,k,n", [(1, 576, 1000), (5, 31, 7), (16, 576, 4099), (64, 96, 130)])
def test_transposed_product_within_f32_rounding(m, k, n, build):
    rng = np.random.default_rng(n)
    x, w = _bf16(rng, (m, k)), _bf16(rng, (n, k), 0.05)
    ours = jax.jit(lambda x, w: native_kernels.native_dot(x, w, True, build))(x, w)
    _assert_within_f32_rounding(ours, x, w, transposed=True)


def test_concurrent_products_from_two_threads_are_correct():
    # XLA may run independent products at once; the second caller then computes alone.
    rng = np.random.default_rng(0)
    x, w = _bf16(rng, (16, 576)), _bf16(rng, (576, 1536), 0.05)
    fn = jax.jit(native_kernels.native_dot)
    want = _pair_order_dot(x, w)
    errors = []

    def run():
        for _ in range(20):
            if not np.array_equal(np.asarray(fn(x, w)), want):
                errors.append("mismatch")

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_back_to_back_products_of_different_sizes_stay_correct():
    # Consecutive products with different work counts, hundreds of times in one program: a worker still
    # finishing one product must never take work of the next (a packed job counter guards this). Every 61st
    # column of each product is kept from every round (a column in each 64-column strip, each time at another
    # lane), so a wrong unit of work anywhere is seen.
    rng = np.random.default_rng(4)
    x = _bf16(rng, (3, 64))
    ws = [_bf16(rng, (64, n), 0.1) for n in (64, 2560, 192, 4096, 128)]

    def chain(x):
        def body(carry, _):
            ys = [native_kernels.native_dot(x + carry, w) for w in ws]
            kept = jnp.concatenate([y[:, ::61] for y in ys], axis=1)
            return carry + jnp.asarray(0, BF16) * ys[0][0, 0].astype(BF16), kept  # a dependence between rounds
        return jax.lax.scan(body, jnp.asarray(0, BF16), None, length=300)[1]

    got = np.asarray(jax.jit(chain)(x))
    want = np.concatenate([_pair_order_dot(x, w)[:, ::61] for w in ws], axis=1)
    np.testing.assert_array_equal(got, np.broadcast_to(want, got.shape))


def _attention_case(rng, b, n, kv, h, s, end):
    q, k, v = _bf16(rng, (b, 1, n, h)), _bf16(rng, (b, 1, kv, h)), _bf16(rng, (b, 1, kv, h))
    keys, values = _bf16(rng, (b, kv, s, h)), _bf16(rng, (b, kv, s, h))
    valid = rng.random((b, s)) < 0.8
    valid[:, end + 1:] = False
    valid[:, end] = True
    return q, k, v, keys, values, jnp.asarray(valid)[:, None, None, :]


def _xla_step(q, k, v, keys, values, mask, end, scale):
    keys, values = write_slots(keys, k, end), write_slots(values, v, end)
    return cached_attention(q, keys, values, mask, scale), keys, values


@pytest.mark.parametrize("b,n,kv,h,s,end", [(2, 9, 3, 64, 40, 17), (16, 9, 3, 64, 384, 300), (1, 4, 1, 32, 7, 0),
                                            (3, 8, 2, 128, 50, 49), (2, 32, 2, 64, 20, 5)])
def test_decode_attention_matches_the_xla_step(b, n, kv, h, s, end, build):
    rng = np.random.default_rng(s + end)
    args = _attention_case(rng, b, n, kv, h, s, end)
    scale = 1.0 / np.sqrt(h)
    want = jax.jit(_xla_step, static_argnums=7)(*args, end, scale)
    step = functools.partial(native_kernels.decode_attention, build=build)
    got = jax.jit(step, static_argnums=7)(*args, jnp.int32(end), scale)
    # The caches: the new slot written, nothing else touched.
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    np.testing.assert_array_equal(np.asarray(got[2]), np.asarray(want[2]))
    # The output: the same up to summation order, i.e. at most one bf16 step apart, and almost always equal.
    a, w = np.asarray(got[0], np.float32), np.asarray(want[0], np.float32)
    np.testing.assert_allclose(a, w, rtol=2 ** -7, atol=1e-3)
    assert np.mean(a != w) < 0.01


def test_decode_attention_ignores_masked_and_future_slots(build):
    rng = np.random.default_rng(1)
    q, k, v, keys, values, mask = _attention_case(rng, 2, 6, 2, 64, 48, 30)
    step = jax.jit(functools.partial(native_kernels.decode_attention, build=build), static_argnums=7)
    base = np.asarray(step(q, k, v, keys, values, mask, jnp.int32(30), 0.125)[0])
    hidden = ~np.asarray(mask[:, 0, 0])  # masked-out slots, and every slot after 30
    noise = jnp.asarray(np.where(hidden[:, None, :, None], 50.0, 0.0), BF16)
    moved = np.asarray(step(q, k, v, keys + noise, values - noise, mask, jnp.int32(30), 0.125)[0])
    np.testing.assert_array_equal(base, moved)
    # ... while a visible slot does matter.
    visible = np.zeros_like(hidden)
    visible[:, 3] = ~hidden[:, 3]
    bump = jnp.asarray(np.where(visible[:, None, :, None], 3.0, 0.0), BF16)
    assert not np.array_equal(base, np.asarray(step(q, k, v, keys, values + bump, mask, jnp.int32(30), 0.125)[0]))


def test_greedy_decoding_is_unchanged_by_the_native_kernels(monkeypatch):
    # A tiny bf16 model decoded with and without the kernels (fresh Samplers, so both trace anew).
    from reclm_jax.models.llama import LlamaForCausalLM
    from reclm_jax.models.llama_config import LlamaConfig
    from reclm_jax.models.sampler import Sampler
    from flax import nnx

    cfg = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=32, tie_word_embeddings=True, param_dtype="bfloat16", dtype="bfloat16",
                      kernels="cpu")
    model = LlamaForCausalLM(cfg, nnx.Rngs(0))
    prompts = np.random.default_rng(0).integers(1, 300, size=(5, 11)).tolist()
    # Five rows (the strip kernel) and one row at a time (the K-split one-row kernel).
    native = Sampler(model, pad_id=0)(prompts, max_new_tokens=12)
    single = [Sampler(model, pad_id=0)([p], max_new_tokens=12) for p in prompts[:2]]
    monkeypatch.setattr(native_kernels, "library", lambda: None)
    plain = Sampler(model, pad_id=0)(prompts, max_new_tokens=12)
    np.testing.assert_array_equal(native.tokens, plain.tokens)
    np.testing.assert_allclose(native.logprobs, plain.logprobs, atol=2e-2)
    for i, one in enumerate(single):
        alone = Sampler(model, pad_id=0)([prompts[i]], max_new_tokens=12)
        np.testing.assert_array_equal(one.tokens, alone.tokens)
        np.testing.assert_allclose(one.logprobs, alone.logprobs, atol=2e-2)


@pytest.mark.parametrize("m,k,n", [(1, 576, 1536), (2, 577, 100), (3, 64, 33), (16, 576, 192), (16, 1536, 576),
                                   (64, 31, 7), (128, 96, 130)])
def test_packed_product_sums_in_the_pair_order(m, k, n, build):
    # The packed kernel sums the strip kernel's pairs in its order, at every row count, one row too.
    rng = np.random.default_rng(m + k + n)
    x, w = _bf16(rng, (m, k)), _bf16(rng, (k, n), 0.05)
    wp = native_kernels.pack_kernel(w)
    assert wp.shape == (-(-n // 64), -(-k // 2), 64, 2)
    ours = np.asarray(jax.jit(functools.partial(native_kernels.packed_dot, build=build), static_argnums=2)(x, wp, n))
    np.testing.assert_array_equal(ours, _pair_order_dot(x, w))


def _tiny_bf16_model(**kw):
    from flax import nnx

    from reclm_jax.models.llama import LlamaForCausalLM
    from reclm_jax.models.llama_config import LlamaConfig

    cfg = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=32, param_dtype="bfloat16", dtype="bfloat16", kernels="cpu", **kw)
    return LlamaForCausalLM(cfg, nnx.Rngs(0))


def test_pack_linears_packs_every_plain_kernel_once():
    from reclm_jax.models.linear import Linear, pack_linears
    from flax import nnx

    model = _tiny_bf16_model(tie_word_embeddings=False)
    packed = pack_linears(model)
    linears = [m for _, m in nnx.iter_modules(model) if isinstance(m, Linear)]
    assert sorted(packed) == sorted(m.uid for m in linears)  # 7 per layer and the untied head
    for m in linears:
        np.testing.assert_array_equal(np.asarray(packed[m.uid]), np.asarray(native_kernels.pack_kernel(m.kernel[...])))
    # A second Linear with a uid already taken: neither is packed (the uid would pick the wrong kernel).
    model.extra = Linear(128, 4, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16, uid=linears[0].uid, kernels="cpu",
                         rngs=nnx.Rngs(1))
    assert linears[0].uid not in pack_linears(model)
    # Kernels on the XLA path are never packed.
    model.model.layers[0].mlp.down_proj.kernels = "xla"
    assert model.model.layers[0].mlp.down_proj.uid not in pack_linears(model)


def test_sampler_packs_once_per_set_of_weights():
    from reclm_jax.models.lora import LoraConfig, add_lora
    from reclm_jax.models.sampler import Sampler

    model = _tiny_bf16_model(tie_word_embeddings=True)
    add_lora(model, LoraConfig(rank=4, targets=("q_proj",), param_dtype="bfloat16"), "a")
    sampler = Sampler(model, pad_id=0)
    first = sampler.packed_kernels()
    assert first and sampler.packed_kernels() is first  # kept while the weights are the same arrays
    prompts = [[5, 6, 7], [9]]
    before = sampler(prompts, max_new_tokens=6)
    assert sampler.packed_kernels() is first
    sampler.update_params(jax.tree.map(lambda x: x + 0, sampler.trainable))  # new arrays: repacked
    assert sampler.packed_kernels() is not first
    after = sampler(prompts, max_new_tokens=6)
    np.testing.assert_array_equal(before.tokens, after.tokens)


def test_greedy_decoding_with_an_adapter_is_unchanged_by_packing(monkeypatch):
    # The packed base products plus the adapter's own (unpacked) LoRA products: the same tokens as the XLA path.
    from reclm_jax.models.lora import LoraConfig, add_lora
    from reclm_jax.models.sampler import Sampler

    model = _tiny_bf16_model(tie_word_embeddings=False)
    add_lora(model, LoraConfig(rank=4, param_dtype="bfloat16"), "a")
    rng = np.random.default_rng(3)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        if path[-1] == "b":  # B starts at zero: make the adapter change the outputs
            var[...] = jnp.asarray(rng.standard_normal(var[...].shape) * 0.05, var[...].dtype)
    prompts = rng.integers(1, 300, size=(3, 9)).tolist()
    sampler = Sampler(model, pad_id=0)
    assert sampler.packed_kernels()
    packed = sampler(prompts, max_new_tokens=10, adapter="a")
    base = sampler(prompts, max_new_tokens=10)
    assert not np.array_equal(packed.tokens, base.tokens)  # the adapter matters
    monkeypatch.setattr(native_kernels, "library", lambda: None)
    plain = Sampler(model, pad_id=0)(prompts, max_new_tokens=10, adapter="a")
    np.testing.assert_array_equal(packed.tokens, plain.tokens)
    np.testing.assert_allclose(packed.logprobs, plain.logprobs, atol=2e-2)
