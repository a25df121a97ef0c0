"""Raw dataset loading: a valid dataset loads; each kind of malformed dataset gives its own message."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from reclm_jax.datasets.raw import load_raw, write_raw
from reclm_jax.errors import UserError
from reclm_jax.testing.tiny_data import tiny_dataset


def _write(tmp_path, mutate=None, **write_kwargs):
    d = tiny_dataset(seed=0)
    if mutate:
        mutate(d)
    write_raw(tmp_path, d["category"], d["meta"], d["sequential"], d["ranking_candidate"])
    return tmp_path


def test_valid_dataset_loads_with_derived_maps(tiny_dataset_dir):
    ds = load_raw(tiny_dataset_dir)
    assert len(ds.users) == 40 and len(ds.items) == 60 and ds.categories == ["Action", "Comedy", "Drama", "Horror"]
    for item, cats in ds.item2category.items():
        for c in cats:
            assert item in ds.category2item[c]
    # title -> item is the inverse of meta's titles on this dataset (titles are unique)
    for item, m in ds.meta.items():
        assert ds.title2item[m["title"]] == [item]
        assert ds.index_text(item) == m["title"]
    s = ds.summary()
    assert s["interactions"] == sum(len(v) for v in ds.sequential.values())
    assert s["sequence_length"]["min"] >= 5 and ds.warnings == ()


def test_int_ids_are_normalised_to_str(tmp_path):
    def to_int(d):
        d["meta"] = {int(k): v for k, v in d["meta"].items()}
        d["category"] = {c: [int(i) for i in v] for c, v in d["category"].items()}
        d["sequential"] = {u: [int(i) for i in v] for u, v in d["sequential"].items()}
        d["ranking_candidate"] = {u: [int(i) for i in v] for u, v in d["ranking_candidate"].items()}

    ds = load_raw(_write(tmp_path, to_int))
    assert all(isinstance(i, str) for i in ds.items)
    assert all(isinstance(i, str) for s in ds.sequential.values() for i in s)


def _drop(name):
    def f(path):
        (path / name).unlink()
    return f


def _overwrite(name, obj):
    def f(path):
        with open(path / name, "wb") as fh:
            pickle.dump(obj, fh)
    return f


def _garbage(name):
    def f(path):
        (path / name).write_bytes(b"this is not a pickle")
    return f


def _first_key(d):
    return next(iter(d))


# (case id, mutation of the objects before writing, mutation of the folder after writing, expected text)
MALFORMED = [
    ("missing_meta", None, _drop("meta.pickle"), "meta.pickle: missing in"),
    ("missing_sequential", None, _drop("sequential.pickle"), "sequential.pickle: missing in"),
    ("not_a_pickle", None, _garbage("category.pickle"), "category.pickle: cannot be read as a pickle"),
    ("sequential_not_dict", None, _overwrite("sequential.pickle", [["1", "2", "3"]]),
     "sequential.pickle: must hold a dict, got list"),
    ("meta_value_not_dict", lambda d: d["meta"].update({"1": "Toy Story"}), None,
     "meta.pickle: value of key '1' must be a dict of fields, got str"),
    ("sequence_not_list", lambda d: d["sequential"].update({"u1": "1 2 3"}), None,
     "sequential.pickle: value of key 'u1' must be a list of item ids, got str"),
    ("non_id_element", lambda d: d["sequential"]["u2"].append(3.5), None,
     "sequential.pickle: key 'u2' holds a non-id element 3.5"),
    ("item_missing_from_meta", lambda d: d["sequential"]["u3"].append("999"), None,
     "sequential.pickle: 1 item id(s) missing from meta.pickle (first: item '999' under key 'u3')"),
    ("category_item_missing", lambda d: d["category"]["Action"].append("777"), None,
     "category.pickle: 1 item id(s) missing from meta.pickle (first: item '777' under key 'Action')"),
    ("candidate_item_missing", lambda d: d["ranking_candidate"]["u4"].append("555"), None,
     "ranking_candidate.pickle: 1 item id(s) missing from meta.pickle (first: item '555' under key 'u4')"),
    ("missing_title_field", lambda d: d["meta"]["7"].pop("title"), None,
     "meta.pickle: 1 item(s) lack the item-index field 'title' (first: '7')"),
    ("empty_title", lambda d: d["meta"]["8"].update(title="  "), None,
     "meta.pickle: field 'title' of item '8' must be a non-empty string"),
    ("short_sequence", lambda d: d["sequential"].update({"u5": ["1", "2"]}), None,
     "sequential.pickle: 1 user(s) have fewer than 3 items (first: user 'u5' with 2)"),
    ("empty_category", lambda d: d["category"].update({"Western": []}), None,
     "category.pickle: 1 empty category (first: 'Western')"),
    ("candidate_unknown_user", lambda d: d["ranking_candidate"].update({"ghost": ["1"]}), None,
     "ranking_candidate.pickle: 1 user(s) not in sequential.pickle (first: 'ghost')"),
    ("no_users", lambda d: d.update(sequential={}, ranking_candidate={}), None, "sequential.pickle: holds no users"),
]


@pytest.mark.parametrize("case,before,after,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_dataset_gives_specific_message(tmp_path, case, before, after, expected):
    path = _write(tmp_path, before)
    if after:
        after(path)
    with pytest.raises(UserError) as e:
        load_raw(path)
    assert expected in str(e.value)
    # exactly one problem was planted, so exactly one line is reported
    assert len(str(e.value).splitlines()) == 1, str(e.value)


def test_all_problems_are_reported_together(tmp_path):
    def two(d):
        d["sequential"]["u1"] = ["1"]
        d["category"]["Empty"] = []

    with pytest.raises(UserError) as e:
        load_raw(_write(tmp_path, two))
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and any("fewer than 3" in x for x in lines) and any("empty categor" in x for x in lines)


def test_duplicate_titles_warn_with_count(tmp_path):
    def dup(d):
        d["meta"]["2"]["title"] = d["meta"]["1"]["title"]
        d["meta"]["3"]["title"] = d["meta"]["1"]["title"]

    ds = load_raw(_write(tmp_path, dup))
    assert len(ds.warnings) == 1 and "3 item(s)" not in ds.warnings[0] and "2 item(s)" in ds.warnings[0]
    assert ds.title2item[ds.meta["1"]["title"]] == ["1", "2", "3"]


def test_ranking_candidates_optional_unless_required(tmp_path):
    path = _write(tmp_path)
    (path / "ranking_candidate.pickle").unlink()
    assert load_raw(path).ranking_candidate is None
    with pytest.raises(UserError, match="ranking_candidate.pickle: missing"):
        load_raw(path, require_ranking_candidates=True)


def test_id_item_index_needs_no_meta_field(tmp_path):
    path = _write(tmp_path, lambda d: [m.pop("title") for m in d["meta"].values()])
    ds = load_raw(path, item_index="id")
    assert ds.index_text("5") == "5"


def _run_validate(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=120)


# reclm_jax.data.validate is the older name, kept as an entry point for existing scripts.
@pytest.mark.parametrize("module", ["reclm_jax.datasets.validate", "reclm_jax.data.validate"])
def test_validate_cli_ok_and_error_exit_codes(module, tmp_path, tiny_dataset_dir):
    ok = _run_validate(module, tiny_dataset_dir)
    assert ok.returncode == 0 and "users        40" in ok.stdout and ok.stdout.strip().endswith("ok")
    bad = _write(tmp_path, lambda d: d["sequential"]["u3"].append("999"))
    r = _run_validate(module, bad)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: sequential.pickle: 1 item id(s) missing from meta.pickle (first: item '999' under key 'u3')"]
    assert "Traceback" not in r.stderr and r.stdout == ""
