"""KV-cache generation: equals full recomputation, batching is invisible, buckets avoid recompiles.

The consistency tests run with both kernel choices (``xla``: the GPU/TPU path; ``cpu``: XLA:CPU's)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.errors import UserError
from reclm_jax.models.generation import (LogitsProcessor, SamplingConfig, argmax_last, bucket, chosen_logprobs,
                                         generate, sample_tokens,
                                         trace_count)
from reclm_jax.models.hf_loading import load_llama


@pytest.fixture(scope="module")
def models(tiny_llama_factory):
    """kernels -> the llama3-shaped tiny model built with them (built on first use)."""
    cache = {}

    def get(kernels: str = "auto"):
        if kernels not in cache:
            cache[kernels] = load_llama(tiny_llama_factory("llama3"), kernels=kernels, progress=False)
        return cache[kernels]

    return get


@pytest.fixture(scope="module")
def model(models):
    return models()


@pytest.fixture(params=["xla", "cpu"])
def kernel_model(models, request):
    return models(request.param)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(5)
    return [rng.integers(4, 500, n).tolist() for n in (3, 11, 6)]


def test_cached_decoding_equals_full_recomputation(kernel_model, prompts):
    model = kernel_model
    res = generate(model, prompts, max_new_tokens=12, pad_id=3)
    for i, p in enumerate(prompts):
        seq = np.asarray([p + res.token_lists()[i]])
        logp = np.asarray(jax.nn.log_softmax(model(seq).logits[0].astype(jnp.float32)))
        n = len(p)
        full = logp[np.arange(n - 1, seq.shape[1] - 1), seq[0, n:]]
        np.testing.assert_allclose(res.logprobs[i, : res.lengths[i]], full, atol=1e-5)
        # greedy: every chosen token is the argmax of the full forward pass
        assert (logp[n - 1: seq.shape[1] - 1].argmax(-1) == seq[0, n:]).all()


def test_mixed_batch_equals_each_prompt_alone_and_does_not_recompile(kernel_model, prompts):
    model = kernel_model
    batch = generate(model, prompts, max_new_tokens=16, pad_id=3)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], max_new_tokens=16, pad_id=3)
        assert alone.token_lists()[0] == batch.token_lists()[i]
        np.testing.assert_allclose(alone.logprobs[0], batch.logprobs[i], atol=1e-5)
    before = trace_count()
    rng = np.random.default_rng(9)
    other = [rng.integers(4, 500, n).tolist() for n in (14, 2, 9, 5)]  # same buckets: 4 rows, 16 tokens
    generate(model, other, max_new_tokens=16, pad_id=3)
    generate(model, other[:3], max_new_tokens=16, pad_id=3)
    assert trace_count() == before
    generate(model, other, max_new_tokens=17, pad_id=3)  # a new max_new_tokens is a new program
    assert trace_count() == before + 1


def test_stop_ids_end_rows_independently(model, prompts):
    free = generate(model, prompts, max_new_tokens=10, pad_id=3)
    stop = int(free.tokens[1, 3])
    res = generate(model, prompts, max_new_tokens=10, pad_id=3, stop_ids=[stop])
    for i in range(len(prompts)):
        row = free.tokens[i].tolist()
        n = row.index(stop) + 1 if stop in row else 10
        assert res.lengths[i] == n and res.stopped[i] == (stop in row)
        assert res.tokens[i, :n].tolist() == row[:n]
        assert (res.tokens[i, n:] == 3).all() and (res.logprobs[i, n:] == 0).all()


def test_sampling_is_seeded_and_filters_apply(model, prompts):
    cfg = SamplingConfig(temperature=0.8, top_k=5)
    a = generate(model, prompts, max_new_tokens=8, pad_id=3, sampling=cfg, seed=1)
    b = generate(model, prompts, max_new_tokens=8, pad_id=3, sampling=cfg, seed=1)
    c = generate(model, prompts, max_new_tokens=8, pad_id=3, sampling=cfg, seed=2)
    assert a.token_lists() == b.token_lists() and a.token_lists() != c.token_lists()
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 50)), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 200)
    top3 = np.argsort(-np.asarray(logits), -1)[:, :3]
    drawn = np.stack([np.asarray(sample_tokens(logits, k, SamplingConfig(1.0, top_k=3))) for k in keys])
    assert all(set(drawn[:, r]) <= set(top3[r]) for r in range(4))
    probs = np.asarray(jax.nn.softmax(logits))
    drawn_p = np.stack([np.asarray(sample_tokens(logits, k, SamplingConfig(1.0, top_p=0.3))) for k in keys])
    for r in range(4):
        order = np.argsort(-probs[r])
        nucleus = order[: np.searchsorted(np.cumsum(probs[r][order]), 0.3) + 1]
        assert set(drawn_p[:, r]) <= set(nucleus)


def test_fast_token_choice_equals_jax_reference():
    # argmax_last, chosen_logprobs and the categorical draw replace jnp.argmax, log_softmax + take and
    # jax.random.categorical in the decoding loop: they must give the same ids and (to f32 rounding) logprobs.
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 300)).astype(np.float32)
    logits[1, [7, 200]] = logits[1].max() + 1.0  # a tie: the first index wins
    logits[2, :] = -np.inf
    logits[2, 50] = 0.0
    logits[3, [9, 40]] = np.nan  # NaN counts as the maximum, the first one wins
    x = jnp.asarray(logits)
    np.testing.assert_array_equal(np.asarray(argmax_last(x)), np.asarray(jnp.argmax(x, axis=-1)))
    assert argmax_last(x).dtype == jnp.int32
    tok = jnp.asarray([0, 7, 50, 299, 123, 5], jnp.int32)
    finite = np.arange(6) != 3
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(x, axis=-1)), np.asarray(tok)[:, None], -1)[:, 0]
    np.testing.assert_allclose(np.asarray(chosen_logprobs(x, tok))[finite], want[finite], rtol=1e-6, atol=1e-6)
    clean = jnp.asarray(rng.normal(size=(4, 300)).astype(np.float32))
    keys = jax.random.split(jax.random.key(5), 4)
    mine = sample_tokens(clean, keys, SamplingConfig(temperature=1.0))
    ref = jax.vmap(jax.random.categorical)(keys, clean)
    np.testing.assert_array_equal(np.asarray(mine), np.asarray(ref))
    one = sample_tokens(clean, jax.random.key(9), SamplingConfig(temperature=1.0))
    np.testing.assert_array_equal(np.asarray(one), np.asarray(jax.random.categorical(jax.random.key(9), clean)))


class ForceToken(LogitsProcessor):
    """Allows only the token in data["allowed"][step % 2]; counts calls in its state."""

    def init(self, prompt_tokens, prompt_mask, data):
        return jnp.zeros(prompt_tokens.shape[0], jnp.int32)

    def process(self, state, logits, step, data):
        allowed = data["allowed"][step % 2]
        return jnp.where(jnp.arange(logits.shape[-1]) == allowed, logits, -jnp.inf)

    def update(self, state, tokens, data):
        return state + 1


def test_logits_processor_hook_controls_tokens(model, prompts):
    proc = ForceToken()
    res = generate(model, prompts, max_new_tokens=6, pad_id=3, logits_processor=proc,
                   processor_data={"allowed": jnp.asarray([7, 9], jnp.int32)})
    assert res.tokens.tolist() == [[7, 9, 7, 9, 7, 9]] * 3
    assert (res.logprobs < 0).all()  # the model's own logprobs, not the processor's
    before = trace_count()
    res = generate(model, prompts, max_new_tokens=6, pad_id=3, logits_processor=proc,
                   processor_data={"allowed": jnp.asarray([11, 12], jnp.int32)})
    assert res.tokens[0].tolist() == [11, 12, 11, 12, 11, 12] and trace_count() == before


def test_bf16_cache_and_adapter_none_agree_on_greedy(model, prompts):
    a = generate(model, prompts, max_new_tokens=8, pad_id=3)
    b = generate(model, prompts, max_new_tokens=8, pad_id=3, cache_dtype="bfloat16")
    agree = np.mean([x[:3] == y[:3] for x, y in zip(a.token_lists(), b.token_lists())])
    assert agree >= 2 / 3  # bf16 cache perturbs logits slightly; the first tokens rarely flip


def test_buckets_and_bad_inputs():
    assert bucket(5, None, 16) == 16 and bucket(17, None, 16) == 32 and bucket(3, (2, 6, 10)) == 6
    with pytest.raises(UserError, match="exceeds the largest bucket"):
        bucket(11, (2, 6, 10))
    with pytest.raises(UserError, match="at least one token"):
        generate(None, [[1], []], max_new_tokens=2, pad_id=0)
    with pytest.raises(UserError, match="bad sampling"):
        SamplingConfig(top_p=0.0)


def test_top_p_filter_over_the_vocabulary_keeps_the_sorted_nucleus():
    # The sort-free bisection must keep exactly the candidates the sorted definition keeps.
    from reclm_jax.models.generation import _nucleus_of_vocab

    rng = np.random.default_rng(11)
    logits = rng.normal(size=(8, 1000)).astype(np.float32) * 3
    logits[0, :990] = -np.inf  # only 10 live tokens
    for top_p in (0.05, 0.3, 0.9, 0.999):
        kept = np.isfinite(np.asarray(_nucleus_of_vocab(jnp.asarray(logits), top_p)))
        for r in range(8):
            finite = np.isfinite(logits[r])
            p = np.exp(logits[r][finite] - logits[r][finite].max())
            p /= p.sum()
            ids = np.flatnonzero(finite)
            order = np.argsort(-logits[r][finite], kind="stable")
            before = np.cumsum(p[order]) - p[order]
            want = np.zeros(1000, bool)
            want[ids[order[before < top_p]]] = True
            np.testing.assert_array_equal(kept[r], want, err_msg=f"row {r}, top_p {top_p}")


def test_top_k_draws_follow_the_renormalised_top_k_distribution():
    rng = np.random.default_rng(12)
    logits = jnp.asarray(rng.normal(size=(2, 500)).astype(np.float32))
    keys = jax.random.split(jax.random.key(3), 4000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: sample_tokens(logits, k, SamplingConfig(0.7, top_k=4))))(keys))
    for r in range(2):
        top = np.argsort(-np.asarray(logits[r]))[:4]
        p = np.exp(np.asarray(logits[r])[top] / 0.7)
        p /= p.sum()
        freq = np.array([(draws[:, r] == t).mean() for t in top])
        assert set(np.unique(draws[:, r])) <= set(top.tolist())
        np.testing.assert_allclose(freq, p, atol=0.03)  # ~4 standard errors at 4000 draws
    # top-k with top-p on top: only the nucleus of the four.
    both = np.asarray(jax.vmap(lambda k: sample_tokens(logits, k, SamplingConfig(1.0, top_k=4, top_p=0.5)))(keys[:400]))
    for r in range(2):
        top = np.argsort(-np.asarray(logits[r]))[:4]
        p = np.exp(np.asarray(logits[r])[top])
        p /= p.sum()
        nucleus = top[(np.cumsum(p) - p) < 0.5]
        assert set(np.unique(both[:, r])) <= set(nucleus.tolist())
