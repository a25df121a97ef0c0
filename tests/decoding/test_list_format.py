"""The list format's pieces against the tokenizer: assembled pieces are the tokenization of the whole list (what
the model was trained to write) and decode to text the project's parser reads back, for byte-level BPE and
SentencePiece."""

from __future__ import annotations

import numpy as np
import pytest

from reclm_jax.data.templates import render_output_list
from reclm_jax.decoding.list_format import ListFormat
from reclm_jax.errors import UserError
from reclm_jax.eval.parsing import parse_list
from reclm_jax.testing.tiny_catalogue import random_titles


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_pieces_tokenize_like_the_whole_list(kind, load_tok):
    tok = load_tok(kind)
    titles = random_titles(200, seed=5)
    fmt = ListFormat(tok, tok.eos_token, titles[:40])
    assert fmt.probe_agreement == 1.0
    pieces = fmt.pieces()
    rng = np.random.default_rng(0)
    for _ in range(40):
        chosen = [titles[j] for j in rng.choice(len(titles), size=int(rng.integers(1, 12)), replace=False)]
        text = render_output_list(chosen, "\n" + tok.eos_token).strip()
        ids = pieces.list_tokens(chosen)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert parse_list(tok.decode(ids, skip_special_tokens=True)) == chosen


def test_end_text_must_be_one_token(load_tok):
    tok = load_tok("bpe")
    with pytest.raises(UserError, match="one"):
        ListFormat(tok, "the end", random_titles(10))
