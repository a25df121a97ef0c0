"""MovieLens atomic files -> raw objects, on small hand-written files in both source layouts."""

from __future__ import annotations

import numpy as np
import pytest

from reclm_jax.datasets.movielens import convert_movielens
from reclm_jax.datasets.raw import load_raw, write_raw
from reclm_jax.errors import UserError

ML1M_ITEMS = """item_id:token\tmovie_title:token\trelease_year:float\tgenre:token
Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy
Heat (1995)\tHeat\t1995\tAction Crime Thriller
"Great Day in Harlem, A (1994)"\t"Great Day in Harlem, A"\t1994\tDocumentary
Casino (1995)\tCasino\t1995\tDrama Thriller
Never Rated (1990)\tNever Rated\t1990\tDrama
Fargo (1996)\tFargo\t1996\tCrime Drama Thriller
"""

# user 1m_10 has a timestamp tie (rows 2 and 3) that must keep file order; 1m_2 has only 2 items (dropped);
# 1m_10 rates Heat twice (first time kept).
ML1M_INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
1m_10\tCasino (1995)\t4\t300
1m_10\tHeat (1995)\t5\t100
1m_10\t"Great Day in Harlem, A (1994)"\t3\t200
1m_10\tToy Story (1995)\t3\t200
1m_10\tHeat (1995)\t1\t400
1m_9\tFargo (1996)\t5\t50
1m_9\tToy Story (1995)\t5\t10
1m_9\tCasino (1995)\t2\t20
1m_2\tFargo (1996)\t5\t1
1m_2\tHeat (1995)\t5\t2
"""


def _files(tmp_path, items, inter):
    (tmp_path / "x.item").write_text(items)
    (tmp_path / "x.inter").write_text(inter)
    return tmp_path / "x.inter", tmp_path / "x.item"


def test_ml1m_layout(tmp_path):
    inter, item = _files(tmp_path, ML1M_ITEMS, ML1M_INTER)
    d = convert_movielens("ml-1m", inter, item, seed=0, n_candidates=2)
    # ids number the .item rows; users ordered numerically (9 before 10); user 2 has < 3 items
    assert list(d["sequential"]) == ["9", "10"]
    assert d["sequential"]["10"] == ["2", "3", "1", "4"]  # Heat, tie (Harlem, Toy) in row order, Casino
    assert d["sequential"]["9"] == ["1", "4", "6"]
    assert d["meta"]["3"]["title"] == '"Great Day in Harlem, A (1994)"'
    assert d["meta"]["1"] == {"title": "Toy Story (1995)", "genres": ["Animation", "Children's", "Comedy"],
                              "year": 1995}
    assert "5" not in d["meta"]  # never rated: not kept
    assert list(d["category"]) == sorted(d["category"])
    assert d["category"]["Thriller"] == ["2", "4", "6"]
    for user, cands in d["ranking_candidate"].items():
        pool = set(d["meta"]) - set(d["sequential"][user])
        assert len(cands) == len(set(cands)) == min(2, len(pool))  # user 10 has one unrated item left
        assert not set(cands) & set(d["sequential"][user])
    again = convert_movielens("ml-1m", inter, item, seed=0, n_candidates=2)
    assert again == d
    other = convert_movielens("ml-1m", inter, item, seed=1, n_candidates=1)
    assert all(len(v) == 1 for v in other["ranking_candidate"].values())
    # the result is a valid raw dataset
    ds = load_raw(write_raw(tmp_path / "raw", d["category"], d["meta"], d["sequential"], d["ranking_candidate"]))
    assert ds.summary()["interactions"] == 7


def test_ml100k_layout_builds_titles_and_keeps_ids(tmp_path):
    items = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
             "11\tSeven\t1995\tCrime Thriller\n12\tUsual Suspects, The\t1995\tCrime Thriller\n"
             "13\tMighty Aphrodite\t\tComedy\n")
    inter = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
             "7\t12\t3\t5\n7\t11\t3\t1\n7\t13\t3\t9\n")
    i, m = _files(tmp_path, items, inter)
    d = convert_movielens("ml-100k", i, m, n_candidates=5)
    assert d["sequential"] == {"7": ["11", "12", "13"]}
    assert d["meta"]["12"]["title"] == "Usual Suspects, The (1995)"
    assert d["meta"]["13"]["title"] == "Mighty Aphrodite" and d["meta"]["13"]["year"] is None
    assert d["ranking_candidate"]["7"] == []  # no unrated item left


def test_interaction_with_unknown_item_is_reported(tmp_path):
    i, m = _files(tmp_path, ML1M_ITEMS, ML1M_INTER + "1m_9\tNo Such Film (2001)\t5\t60\n")
    with pytest.raises(UserError, match=r"1 item\(s\) have no row in x.item \(first: 'No Such Film \(2001\)'\)"):
        convert_movielens("ml-1m", i, m)


@pytest.mark.realdata
def test_real_ml1m(tmp_path):
    from reclm_jax.datasets.prepare import prepare_movielens

    ds = load_raw(prepare_movielens("ml-1m", tmp_path / "ml-1m"))
    s = ds.summary()
    assert s["users"] == 6040 and s["categories"] == 18 and 3600 <= s["items"] <= 3900
    assert s["interactions"] == 1_000_209
    lengths = np.array([len(v) for v in ds.sequential.values()])
    assert lengths.min() >= 20
    assert all(len(v) == 100 for v in ds.ranking_candidate.values())
