"""The guarantee: every constrained output parses back (``eval.parsing.parse_list``) to distinct catalogue items
that obey its row's constraint, whatever the logits. Checked two ways, for a byte-level BPE and a SentencePiece
tokenizer:

- random logits driving the processor in a jitted loop (many random catalogues and constraints, greedy and
  sampled, one compiled program per tokenizer and mode);
- a tiny random model through the real ``Sampler``, greedy and sampled with temperature, one batch mixing every
  rule and an unconstrained row; a second batch with other constraints compiles nothing new.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.decoding.check import violations
from reclm_jax.eval.parsing import parse_list
from reclm_jax.models.generation import SamplingConfig, sample_tokens, trace_count
from reclm_jax.testing.tiny_catalogue import random_constraints


@functools.partial(jax.jit, static_argnames=("proc", "vocab", "steps", "temperature"))
def _random_logit_decode(data, key, *, proc, vocab: int, steps: int, temperature: float):
    """Decodes ``steps`` tokens per row from N(0, 3^2) logits through the processor -> int32 [B, steps]."""
    b = data["rows"]["active"].shape[0]
    cfg = SamplingConfig(temperature=temperature)

    def body(carry, step):
        state, done, key = carry
        key, k1, k2 = jax.random.split(key, 3)
        logits = proc.process(state, 3.0 * jax.random.normal(k1, (b, vocab)), step, data)
        tok = jnp.where(done, 0, sample_tokens(logits, k2, cfg))
        return (proc.update(state, tok, data), done | (tok == proc.end_id), key), tok

    state = proc.init(None, None, data)
    _, toks = jax.lax.scan(body, (state, jnp.zeros(b, bool), key), jnp.arange(steps, dtype=jnp.int32))
    return toks.T


def _texts(tok, rows, end_id):
    out = []
    for r in np.asarray(rows).tolist():
        assert end_id in r, "a constrained row did not end its list"
        out.append(tok.decode(r[:r.index(end_id) + 1], skip_special_tokens=True))
    return out


def _check(texts, constraints, cat, i2c):
    for text, c in zip(texts, constraints):
        if c is None:
            continue
        titles = parse_list(text)
        assert violations(titles, c, cat, i2c) == [], (text, c)


def _random_batch(make_catalogue, kind, rng, seed):
    """(catalogue, item2category, 16 constraints) of random catalogue ``seed``."""
    cat, items, titles, i2c, cats = make_catalogue(kind, n=60, seed=seed)
    cons = [c for c in random_constraints(rng, items, cats, 16) if c is not None]
    return cat, i2c, (cons * 2)[:16]  # a fixed batch: every catalogue of a size reuses the program


@pytest.mark.parametrize("kind", ["bpe", "sp"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_random_logits_obey_every_rule(kind, temperature, make_catalogue, load_tok):
    tok = load_tok(kind)
    rng = np.random.default_rng(11)
    for seed in range(3):
        cat, i2c, cons = _random_batch(make_catalogue, kind, rng, seed)
        data = cat.processor_data(cons)
        rows = _random_logit_decode(data, jax.random.key(seed), proc=cat.processor, vocab=len(tok), steps=160,
                                    temperature=temperature)
        _check(_texts(tok, rows, cat.processor.end_id), cons, cat, i2c)


def _sampler(model_dir, tok):
    from reclm_jax.models.hf_loading import load_llama
    from reclm_jax.models.sampler import Sampler
    from reclm_jax.models.tokenizer import pad_token_id

    return Sampler(load_llama(model_dir), pad_id=pad_token_id(tok), stop_ids=[tok.eos_token_id])


def _prompts(tok, n):
    text = tok.apply_chat_template([{"role": "user", "content": "Recommend some films."}], tokenize=False,
                                   add_generation_prompt=True)
    return [tok(text + " " * j, add_special_tokens=False)["input_ids"] for j in range(n)]


@pytest.mark.parametrize("kind,temperature", [
    ("bpe", 0.0), ("sp", 1.0),
    pytest.param("bpe", 1.0, marks=pytest.mark.slow), pytest.param("sp", 0.0, marks=pytest.mark.slow)])
def test_sampler_outputs_obey_their_rows(kind, temperature, make_catalogue, load_tok, model_dirs):
    tok = load_tok(kind)
    cat, items, titles, i2c, cats = make_catalogue(kind, n=60, seed=1)
    sampler = _sampler(model_dirs[kind], tok)
    rng = np.random.default_rng(5)
    prompts = _prompts(tok, 8)
    sampling = SamplingConfig(temperature=temperature)
    traces = None
    for _ in range(2):
        cons = random_constraints(rng, items, cats, 8)
        cons[-1] = None  # an unconstrained row in the same batch
        res = sampler(prompts, max_new_tokens=160, sampling=sampling, seeds=list(range(8)),
                      logits_processor=cat.processor, processor_data=cat.processor_data(cons))
        texts = [tok.decode(t, skip_special_tokens=True) for t in res.token_lists()]
        assert all(res.stopped[:-1]), texts
        _check(texts, cons, cat, i2c)
        if traces is None:
            traces = trace_count()
    assert trace_count() == traces  # other constraints, same shapes: nothing recompiled


# -- the token budget ---------------------------------------------------------------------------------------------
def _fits(cat, cons, limits):
    """(full, one) bool [n]: the row's limit fits the items its rule needs / at least one item (budget.plans)."""
    from reclm_jax.decoding.budget import plans

    rows = cat.row_data(cons, limits)["rows"]
    budget = {k: rows[k].astype(np.int64) for k in ("k_min", "c_min", "c_max", "s_in", "s_out")}
    zero = np.zeros(len(cons), np.int64)
    full, one = plans(np, cat.num_pre.astype(np.int64), budget, zero, zero,
                      np.minimum(rows["k_max"], len(cat.num_tokens)).astype(np.int64))
    return full <= rows["limit"], one <= rows["limit"]


def _check_budget(rows, limits, cons, cat, i2c, tok):
    """Every constrained row of ``rows`` (token lists, at least ``limits`` long or stopped) ends its list within
    its limit with whole, distinct catalogue items obeying its rule; the count rules too where the limit fits them;
    an empty list where not even one item fits."""
    full, one = _fits(cat, cons, limits)
    end = cat.format.end_id
    for i, (r, c, lim) in enumerate(zip(rows, cons, limits)):
        if c is None:
            continue
        r = list(r)[:lim]
        assert end in r, f"row {i} (limit {lim}) was cut: {tok.decode(r)!r} {c}"
        text = tok.decode(r[:r.index(end) + 1], skip_special_tokens=True)
        if not one[i]:
            assert r[0] == end, (text, lim, c)
            continue
        bad = violations(parse_list(text), c, cat, i2c)
        if not full[i]:  # the budget wins over the counts, nothing else
            bad = [v for v in bad if " not in [" not in v]
        assert bad == [], (text, lim, c)


@pytest.mark.parametrize("kind", ["bpe", "sp"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_random_logits_end_lists_within_tight_limits(kind, temperature, make_catalogue, load_tok):
    tok = load_tok(kind)
    rng = np.random.default_rng(13)
    for seed in range(2):
        cat, i2c, cons = _random_batch(make_catalogue, kind, rng, seed)
        limits = rng.integers(2, 48, len(cons)).tolist()
        rows = _random_logit_decode(cat.processor_data(cons, limits=limits), jax.random.key(seed),
                                    proc=cat.processor, vocab=len(tok), steps=48, temperature=temperature)
        _check_budget(np.asarray(rows), limits, cons, cat, i2c, tok)
        full, _ = _fits(cat, cons, limits)
        assert 0 < full.sum() < len(cons)  # the limits are tight: some rows fit their count, some do not


@pytest.mark.parametrize("kind,temperature", [("bpe", 1.0), ("sp", 0.0)])
def test_sampler_lists_end_within_their_rows_limits(kind, temperature, make_catalogue, load_tok, model_dirs):
    tok = load_tok(kind)
    cat, items, titles, i2c, cats = make_catalogue(kind, n=60, seed=2)
    sampler = _sampler(model_dirs[kind], tok)
    rng = np.random.default_rng(7)
    prompts = _prompts(tok, 8)
    traces = None
    for _ in range(2):
        cons = random_constraints(rng, items, cats, 8)
        cons[-1] = None
        limits = rng.integers(3, 40, 8).tolist()
        limits[-1] = 48  # the unconstrained row keeps the length bucket: other limits compile nothing
        res = sampler(prompts, max_new_tokens=limits, sampling=SamplingConfig(temperature=temperature),
                      seeds=list(range(8)), **cat.sampler_kwargs(cons, sampler.runtime, limits=limits))
        _check_budget(res.token_lists(), limits, cons, cat, i2c, tok)
        if traces is None:
            traces = trace_count()
    assert trace_count() == traces


@pytest.mark.realdata
def test_movielens_item_count_lists_end_whole_at_192_tokens():
    """SmolLM2's tokenizer over the ML-1M catalogue, random logits: ItemCount lists of 5 to 20 items at 192 new
    tokens (where 4 of 12 were cut before the budget rule) and at tight random limits all end, within the
    limit, on whole items; the rows whose limit fits their k get exactly k."""
    from pathlib import Path

    from reclm_jax.decoding import ConstrainedCatalogue, ListConstraint
    from reclm_jax.data.item_index import load_dataset
    from reclm_jax.models.fetch import ensure_smollm2
    from reclm_jax.models.tokenizer import load_tokenizer

    data = Path.home() / ".cache" / "reclm_jax" / "datasets" / "ml-1m"
    if not data.is_dir():
        pytest.skip(f"no {data} (python -m reclm_jax.datasets.prepare --dataset ml-1m)")
    tok = load_tokenizer(ensure_smollm2())
    raw, index = load_dataset(data, "title", tokenizer=tok)
    cat = ConstrainedCatalogue.from_dataset(raw, index, tok, tok.eos_token, max_items=32)
    rng = np.random.default_rng(0)
    cons = [ListConstraint(k_min=k, k_max=k, exclude=tuple(rng.choice(cat.items, 10).tolist()))
            for k in rng.integers(5, 21, 16).tolist()]
    for limits in ([192] * 16, rng.integers(8, 192, 16).tolist()):
        rows = _random_logit_decode(cat.processor_data(cons, limits=limits), jax.random.key(0), proc=cat.processor,
                                    vocab=len(tok), steps=192, temperature=1.0)
        _check_budget(np.asarray(rows), limits, cons, cat, raw.item2category, tok)
