"""Token pieces and choices without a server: pieces always spell the whole decoded text (split characters
included), stop strings cut text, tokens and logprobs together, finish and stop reasons."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from reclm_jax.serve.detok import token_pieces
from reclm_jax.serve.engine import Row
from reclm_jax.serve.outputs import completion_logprobs, make_choice
from reclm_jax.serve.protocol import Params


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_pieces_spell_the_decoded_text_also_for_split_characters(tok):
    text = "Ünïcödé café — 東京 😀 <|im_end|> Toy Story (1995)"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for skip in (True, False):
        pieces = token_pieces(tok, ids, skip)
        assert len(pieces) == len(ids) and "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)
    pieces = token_pieces(tok, ids, True)
    assert "\ufffd" not in "".join(pieces)
    # a multi-byte character split over byte tokens arrives whole, on the token that completes it
    emoji = tok("😀", add_special_tokens=False)["input_ids"]
    if len(emoji) > 1:
        assert token_pieces(tok, emoji) == [""] * (len(emoji) - 1) + ["😀"]
    rng = np.random.default_rng(0)  # arbitrary ids (what a random model emits): still the decoded text
    for _ in range(20):
        ids = rng.integers(0, len(tok), 12).tolist()
        assert "".join(token_pieces(tok, ids)) == tok.decode(ids, skip_special_tokens=True)


def _row(tok, text, stopped=False, extra=()):
    ids = tok(text, add_special_tokens=False)["input_ids"] + list(extra)
    lp = [-0.5 - i for i in range(len(ids))]
    top = np.asarray([[t, 0] for t in ids]), np.asarray([[v, v - 1] for v in lp], np.float32)
    return Row(ids, lp, stopped, top[0], top[1]), ids


def test_stop_strings_cut_text_tokens_and_logprobs_together(tok):
    row, ids = _row(tok, "Heat (1995)\n2. Fargo (1996)\n3. Casino")
    c = make_choice(0, (1,), row, Params(stop=("\n3.", "Fargo"), logprobs=1), tok)
    assert c.text == "Heat (1995)\n2. " and c.finish_reason == "stop" and c.stop_reason == "Fargo"
    k = len(c.token_ids)
    assert c.token_ids == ids[:k] and "Fargo" in tok.decode(ids[:k]) and "Fargo" not in tok.decode(ids[:k - 1])
    assert "".join(c.pieces) == c.text and len(c.pieces) == len(c.logprobs) == len(c.top) == k
    assert c.logprobs == row.logprobs[:k] and c.top[0] == [(ids[0], -0.5)]
    kept = make_choice(0, (1,), row, Params(stop=("Fargo",), include_stop_str_in_output=True), tok)
    assert kept.text == "Heat (1995)\n2. Fargo" and kept.logprobs is None
    lp = completion_logprobs(c, tok)
    assert lp["text_offset"] == [sum(len(p) for p in c.pieces[:i]) for i in range(k)]
    assert lp["tokens"][0] == tok.decode([ids[0]]) and lp["top_logprobs"][0] == {lp["tokens"][0]: -0.5}


def test_finish_and_stop_reasons(tok):
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    row, ids = _row(tok, "Heat (1995)", stopped=True, extra=[eos])
    c = make_choice(0, (1,), row, Params(), tok)
    assert (c.text, c.finish_reason, c.stop_reason) == ("Heat (1995)", "stop", None)  # the model's end of turn
    assert c.token_ids == ids  # the stop token is counted
    c = make_choice(0, (1,), row, Params(stop_token_ids=(eos,)), tok)
    assert c.stop_reason == eos  # a stop id the request asked for is named
    row, _ = _row(tok, "Heat (1995)")
    assert make_choice(0, (1,), row, Params(), tok).finish_reason == "length"
    raw = make_choice(0, (1,), _row(tok, "Heat", stopped=True, extra=[eos])[0], Params(skip_special_tokens=False),
                      tok)
    assert raw.text == "Heat<|im_end|>"
