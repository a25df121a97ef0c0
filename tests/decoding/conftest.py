"""Fixtures for the constrained-decoding tests: a byte-level BPE (the suite's tiny tokenizer) and a SentencePiece
tokenizer, tiny random models for each, random catalogues, and random per-row constraints."""

from __future__ import annotations

import pytest

from reclm_jax.decoding import ConstrainedCatalogue
from reclm_jax.testing.tiny_catalogue import build_sentencepiece_tokenizer, random_catalogue


@pytest.fixture(scope="session")
def sp_tokenizer_dir(tmp_path_factory):
    return build_sentencepiece_tokenizer(tmp_path_factory.mktemp("sp_tokenizer"))


@pytest.fixture(scope="session")
def tokenizer_dirs(tiny_tokenizer_dir, sp_tokenizer_dir):
    return {"bpe": tiny_tokenizer_dir, "sp": sp_tokenizer_dir}


@pytest.fixture(scope="session")
def load_tok(tokenizer_dirs):
    from reclm_jax.models.tokenizer import load_tokenizer

    cache = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = load_tokenizer(tokenizer_dirs[kind])
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tiny_llama_dir, sp_tokenizer_dir):
    from reclm_jax.testing.tiny_model import write_tiny_llama

    sp = write_tiny_llama(tmp_path_factory.mktemp("tiny_sp_llama"), variant="llama2", tokenizer_dir=sp_tokenizer_dir)
    return {"bpe": tiny_llama_dir, "sp": sp}


@pytest.fixture(scope="session")
def make_catalogue(load_tok):
    """``make(kind, n=60, seed=0) -> (catalogue, items, titles, item2category, categories)``, cached."""
    cache = {}

    def make(kind: str, n: int = 60, seed: int = 0):
        if (kind, n, seed) not in cache:
            tok = load_tok(kind)
            items, titles, i2c, cats = random_catalogue(n, seed)
            cat = ConstrainedCatalogue(items, titles, i2c, cats, tok, tok.eos_token, max_items=16)
            cache[kind, n, seed] = (cat, items, titles, i2c, cats)
        return cache[kind, n, seed]

    return make
