"""Item indexes (raw id, stored field, computed *_t with de-duplication) and the fuzzy matcher."""

from __future__ import annotations

import pytest

from reclm_jax.data.fuzzy import FuzzyMatcher
from reclm_jax.data.item_index import build_item_index, load_dataset, make_unique, normalise_title
from reclm_jax.datasets.raw import write_raw
from reclm_jax.errors import UserError


@pytest.fixture()
def dup_dataset(tmp_path):
    meta = {"1": {"title": "Heat (1995)"}, "2": {"title": "Heat (1995)"}, "3": {"title": "Heat (1995) (2)"},
            "4": {"title": "  Casino (1995)"}, "5": {"title": "Heat (1995)"}}
    seq = {"u1": ["1", "2", "3", "4"], "u2": ["4", "5", "1"]}
    return write_raw(tmp_path / "d", {"Crime": ["1", "2", "3", "4", "5"]}, meta, seq)


def test_make_unique_appends_k_and_skips_taken_names():
    assert make_unique(["a", "b", "a", "a (2)", "a"]) == ["a", "b", "a (3)", "a (2)", "a (4)"]


def test_title_keeps_first_item_for_duplicates(dup_dataset):
    raw, idx = load_dataset(dup_dataset, "title")
    assert idx.item_of("Heat (1995)") == "1" and not idx.bijective
    raw, idx = load_dataset(dup_dataset, "id")
    assert idx.text["3"] == "3" and idx.item_of("5") == "5"


def test_title_t_round_trips_and_is_bijective(dup_dataset, tiny_tokenizer):
    raw, idx = load_dataset(dup_dataset, "title_t", tiny_tokenizer)
    assert idx.bijective
    assert [idx.text[i] for i in "12345"] == ["Heat (1995)", "Heat (1995) (3)", "Heat (1995) (2)",
                                              "Casino (1995)", "Heat (1995) (4)"]
    for i in "12345":  # every index string survives the tokenizer round trip unchanged
        s = idx.text[i]
        assert tiny_tokenizer.decode(tiny_tokenizer.encode(s, add_special_tokens=False)) == s
        assert idx.item_of(s) == i


def test_title_cap_counts_tokens(dup_dataset, tiny_tokenizer):
    raw, _ = load_dataset(dup_dataset, "title")
    capped = build_item_index(raw, "title2_t", tiny_tokenizer)
    ids = tiny_tokenizer.encode("Heat (1995)", add_special_tokens=False)
    assert capped.text["1"] == tiny_tokenizer.decode(ids[:2]).strip()
    assert normalise_title("Heat (1995)", tiny_tokenizer, 64, False) == "Heat (1995)"


def test_computed_index_needs_a_tokenizer(dup_dataset):
    with pytest.raises(UserError, match="--tokenizer"):
        load_dataset(dup_dataset, "title64_t")
    with pytest.raises(UserError, match="genre"):
        load_dataset(dup_dataset, "genre")


def test_fuzzy_matcher_closest_and_first_rules():
    titles = ["Heat (1995)", "Heap (1995)", "Casino (1995)"]
    m = FuzzyMatcher(titles)
    assert m.match("Heat (1995)") == "Heat (1995)"
    assert m.match("Heax (1995)") == "Heat (1995)"  # distance 1 to both: catalogue order breaks the tie
    assert m.match("Heap (1995") == "Heap (1995)"  # closest (1) beats "Heat (1995)" (2)
    assert FuzzyMatcher(titles, first_match=True).match("Heap (1995") == "Heat (1995)"  # the original's rule
    assert m.match("Casino Royale") is None
    assert m.map(["Casin (1995)", "nothing like it"]) == ["Casino (1995)", "nothing like it"]
    assert m.match("Casino (199") == "Casino (1995)"  # distance 2
    assert m.match("Casino (1") is None  # distance 4
