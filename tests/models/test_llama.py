"""Logit and greedy-generation parity with transformers.LlamaForCausalLM on the three tiny model shapes, with
both kernel choices (``xla`` is the GPU/TPU path, ``cpu`` the XLA:CPU fast paths; both run here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from reclm_jax.models.generation import generate
from reclm_jax.models.hf_loading import load_llama

VARIANTS = ("llama2", "llama3", "smollm2")
KERNELS = ("xla", "cpu")


def torch_model(d):
    return transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_greedy_match_transformers(tiny_llama_factory, variant, kernels):
    d = tiny_llama_factory(variant)
    model = load_llama(d, kernels=kernels, progress=False)
    assert model.config.kernels == kernels
    ref = torch_model(d)
    rng = np.random.default_rng(0)
    # 300 positions: past llama3's original_max_position_embeddings (256), so the scaled band matters.
    tokens = rng.integers(4, 500, (2, 300))
    mask = np.ones_like(tokens)
    mask[1, :37] = 0  # left padding in the second row
    ours = np.asarray(model(tokens, attention_mask=mask).logits)
    with torch.no_grad():
        pos = torch.tensor(np.maximum(mask.cumsum(1) - 1, 0))
        theirs = ref(torch.tensor(tokens), attention_mask=torch.tensor(mask), position_ids=pos).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() <= 1e-4

    prompts = [rng.integers(4, 500, n).tolist() for n in (7, 19)]
    got = generate(model, prompts, max_new_tokens=32, pad_id=3).token_lists()
    for p, g in zip(prompts, got):
        with torch.no_grad():
            out = ref.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                               pad_token_id=3)
        assert g == out[0, len(p):].tolist()


@pytest.mark.parametrize("kernels", KERNELS)
def test_remat_and_bf16_run_close(tiny_llama_factory, kernels):
    d = tiny_llama_factory("smollm2")
    tokens = np.random.default_rng(1).integers(4, 500, (2, 16))
    base = np.asarray(load_llama(d, kernels=kernels, progress=False)(tokens).logits)
    remat = np.asarray(load_llama(d, remat=True, kernels=kernels, progress=False)(tokens).logits)
    np.testing.assert_allclose(remat, base, atol=1e-6)
    bf16 = load_llama(d, param_dtype="bfloat16", dtype="bfloat16", kernels=kernels, progress=False)
    assert bf16.model.layers[0].mlp.up_proj.kernel[...].dtype == np.dtype("bfloat16")
    out = np.asarray(bf16(tokens).logits, np.float32)
    assert np.abs(out - base).max() < 0.05 * np.abs(base).max()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_take_rows_is_jnp_take_with_its_gradient(dtype):
    # The bf16 table is gathered through its uint16 bits (no f32 copy of the table): same rows, NaN rows for
    # out-of-range ids as jnp.take's default, and the same gradient.
    from reclm_jax.models.llama import take_rows

    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.standard_normal((50, 8)), dtype)
    ids = jnp.asarray([[0, 3, 49, -1], [7, 7, 50, 2]], jnp.int32)
    want = jnp.take(table, ids, axis=0)
    got = jax.jit(take_rows)(table, ids)
    assert got.dtype == table.dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    assert np.isnan(np.asarray(got[1, 2], np.float32)).all()
    weights = jnp.asarray(rng.standard_normal((2, 4, 8)), jnp.float32)
    loss = lambda f: lambda t: jnp.nansum(f(t).astype(jnp.float32) * weights)
    g_got = jax.grad(loss(lambda t: take_rows(t, ids)))(table)
    g_want = jax.grad(loss(lambda t: jnp.take(t, ids, axis=0)))(table)
    np.testing.assert_allclose(np.asarray(g_got, np.float32), np.asarray(g_want, np.float32), rtol=1e-2, atol=1e-2)


def test_decoding_reads_the_embedding_bits_made_once_not_a_copy_per_call(tiny_llama_factory):
    # Inside a while_loop XLA:CPU hoisted the bf16 table's bitcast out of the loop as a copy of the whole table,
    # once per call; the decoding programs gather from bits made once per set of weights instead
    # (llama.decoding_tables): same rows, and no [vocab, hidden] array is formed inside the program.
    from flax import nnx

    from reclm_jax.models.kernels import EMBED_BITS, packed_weights
    from reclm_jax.models.llama import decoding_tables

    model = load_llama(tiny_llama_factory("llama3"), param_dtype="bfloat16", dtype="bfloat16", progress=False)
    assert decoding_tables(load_llama(tiny_llama_factory("llama3"), progress=False)) == {}  # f32: nothing to do
    tables = decoding_tables(model)
    assert list(tables) == [EMBED_BITS] and tables[EMBED_BITS].dtype == jnp.uint16
    graphdef, state = nnx.split(model.model.embed_tokens)
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    ids = jnp.asarray([[0, 5, vocab - 1, vocab]], jnp.int32)  # the last one out of range: a NaN row

    def looped(state, bits, ids):
        embed = nnx.merge(graphdef, state)

        def body(i, acc):
            with packed_weights({EMBED_BITS: bits} if bits is not None else None):
                return acc + embed(ids + i * 0).astype(jnp.float32)

        return jax.lax.fori_loop(0, 3, body, jnp.zeros((1, 4, hidden), jnp.float32))

    got = jax.jit(looped)(state, tables[EMBED_BITS], ids)
    want = jax.jit(looped)(state, None, ids)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert np.isnan(np.asarray(got)[0, 3]).all() and not np.isnan(np.asarray(got)[0, :3]).any()
    import re

    made = re.compile(rf"= \w+\[{vocab},{hidden}\]\S* (?!parameter)\S+")  # an instruction forming a table-sized array
    hlo = jax.jit(looped).lower(state, tables[EMBED_BITS], ids).compile().as_text()
    assert not made.findall(hlo)
