"""The list format's pieces against the tokenizer: assembled pieces are the tokenization of the whole list (what
the model was trained to write) and decode to text the project's parser reads back, for byte-level BPE and
SentencePiece."""

from __future__ import annotations

import numpy as np
import pytest

from reclm_jax.data.templates import render_output_list
from reclm_jax.decoding.list_format import CONT, END, ListFormat
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
    # The one-tokenization shortcut gives the pieces tokenized one by one.
    cont, end = pieces.item_paths(titles)
    assert cont == pieces.items(titles, CONT) and end == pieces.items(titles, END)


def test_end_text_must_be_one_token(load_tok):
    tok = load_tok("bpe")
    with pytest.raises(UserError, match="one"):
        ListFormat(tok, "the end", random_titles(10))


@pytest.mark.realdata
def test_smollm2_pieces_on_movielens_titles():
    """SmolLM2's tokenizer on the ML-1M titles: the pieces follow the trained tokenization of whole lists."""
    from pathlib import Path

    from reclm_jax.data.item_index import load_dataset
    from reclm_jax.models.fetch import ensure_smollm2
    from reclm_jax.models.tokenizer import load_tokenizer

    data = Path.home() / ".cache" / "reclm_jax" / "datasets" / "ml-1m"
    if not data.is_dir():
        pytest.skip(f"no {data} (python -m reclm_jax.datasets.prepare --dataset ml-1m)")
    tok = load_tokenizer(ensure_smollm2())
    _, index = load_dataset(data, "title")
    titles = index.titles
    fmt = ListFormat(tok, tok.eos_token, titles[:48])
    pieces = fmt.pieces()
    assert fmt.probe_agreement == 1.0 and fmt.rule.newline_space_in_item  # SmolLM2 writes "\n " as one token
    cont, end = pieces.item_paths(titles)
    assert cont == pieces.items(titles, CONT) and end == pieces.items(titles, END)
    rng = np.random.default_rng(1)
    for _ in range(200):
        chosen = [titles[j] for j in rng.choice(len(titles), size=10, replace=False)]
        text = render_output_list(chosen, "\n" + tok.eos_token).strip()
        assert pieces.list_tokens(chosen) == tok(text, add_special_tokens=False)["input_ids"]
