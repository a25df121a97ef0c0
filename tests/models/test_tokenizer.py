"""The one tokenizer loader and the pad id."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from reclm_jax.errors import UserError
from reclm_jax.models.tokenizer import load_tokenizer, pad_token_id


def test_loads_the_folder_tokenizer(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    assert tok.decode(tok.encode("Heat (1995)", add_special_tokens=False)) == "Heat (1995)"


def test_errors_name_the_key(tmp_path):
    with pytest.raises(UserError, match=r"^--tokenizer .*nope: folder not found"):
        load_tokenizer(tmp_path / "nope", key="--tokenizer")
    with pytest.raises(UserError, match=r"^model\.path .*: cannot load a tokenizer"):
        load_tokenizer(tmp_path, key="model.path")  # an empty folder


def test_pad_id_is_the_generation_rule_pad_then_eos_then_zero():
    from reclm_jax.models.special_tokens import resolve_pad_id

    cases = [SimpleNamespace(pad_token_id=3, unk_token_id=1, eos_token_id=2),
             SimpleNamespace(pad_token_id=None, unk_token_id=1, eos_token_id=2),
             SimpleNamespace(pad_token_id=None, unk_token_id=None, eos_token_id=None)]
    assert [pad_token_id(t) for t in cases] == [3, 2, 0]
    assert [pad_token_id(t) for t in cases] == [resolve_pad_id(t) for t in cases]  # batches and decoding agree
