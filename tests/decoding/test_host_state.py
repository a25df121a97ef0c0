"""``HostRow`` (the host-side state machine the vLLM plugin runs) allows exactly the tokens ``CatalogueProcessor``
allows, step by step, on random catalogues and random constraints for a byte-level BPE and a SentencePiece
tokenizer: both are fed the same tokens, drawn at random from the allowed set (so every branch of the rules is
walked: numbers, trie walks, exits, count and category bookkeeping, dead ends, the end of the list), without
and with tight random token limits (the budget rules)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.decoding.host_state import HostRow, HostTables
from reclm_jax.testing.tiny_catalogue import random_constraints


@functools.partial(jax.jit, static_argnames=("proc", "vocab"))
def _allowed(state, data, *, proc, vocab: int):
    return jnp.isfinite(proc.process(state, jnp.zeros((data["rows"]["active"].shape[0], vocab)), 0, data))


@functools.partial(jax.jit, static_argnames=("proc",))
def _update(state, tokens, data, *, proc):
    return proc.update(state, tokens, data)


def _host_rows(cat, cons, limits=None):
    tables = HostTables(cat)
    rows = cat.row_data(cons, limits)["rows"]
    return [None if c is None else HostRow(tables, {k: v[i:i + 1] for k, v in rows.items()})
            for i, c in enumerate(cons)]


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_host_rows_allow_what_the_processor_allows(kind, make_catalogue, load_tok):
    vocab = len(load_tok(kind))
    rng = np.random.default_rng(3)
    for seed in range(2):
        cat, items, titles, i2c, cats = make_catalogue(kind, n=60, seed=seed)
        cons = random_constraints(rng, items, cats, 16)
        cons[3] = None  # an unconstrained row: every token stays allowed
        limits = None if seed == 0 else rng.integers(2, 40, len(cons)).tolist()  # the second: tight budgets
        proc, data = cat.processor, cat.processor_data(cons, limits=limits)
        state = proc.init(None, None, data)
        host = _host_rows(cat, cons, limits)
        ended = np.zeros(len(cons), bool)
        for step in range(120):
            mask = np.asarray(_allowed(state, data, proc=proc, vocab=vocab))
            toks = np.zeros(len(cons), np.int32)
            for i, h in enumerate(host):
                if h is None:
                    assert mask[i].all()
                    toks[i] = rng.integers(vocab)
                    continue
                want = np.flatnonzero(mask[i])
                np.testing.assert_array_equal(h.allowed(), want, err_msg=f"row {i} step {step}: {cons[i]}")
                toks[i] = rng.choice(want)
                h.advance(int(toks[i]))
                ended[i] |= toks[i] == cat.format.end_id
                if limits is not None and step == limits[i] - 1:
                    assert ended[i], f"row {i}: the list did not end within its limit {limits[i]}"
            state = _update(state, jnp.asarray(toks), data, proc=proc)
        assert ended[[i for i, h in enumerate(host) if h is not None]].all()  # whole lists were walked


def test_word_range_counts_match_a_brute_force_count():
    from reclm_jax.decoding.host_state import _count_below, _prefix, pack_bits

    rng = np.random.default_rng(0)
    for n in (1, 31, 32, 64, 100):
        flags = rng.random(n) < 0.5
        bits = pack_bits(flags)
        x = np.arange(32 * len(bits) + 1)
        want = np.concatenate([[0], np.cumsum(np.concatenate([flags, np.zeros(32 * len(bits) - n, bool)]))])
        np.testing.assert_array_equal(_count_below(_prefix(bits), bits, x), want)
