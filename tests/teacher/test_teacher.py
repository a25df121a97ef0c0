"""In-process Teacher: restrictions, history exclusion, ranks vs scores, batching and input errors."""

from __future__ import annotations

import numpy as np
import pytest

from reclm_jax.datasets.raw import load_raw
from reclm_jax.errors import UserError


@pytest.fixture(scope="module")
def raw(tiny_dataset_dir):
    return load_raw(tiny_dataset_dir, item_index="id")


@pytest.fixture(scope="module")
def histories(raw):
    return [s[:-1][-10:] for s in raw.sequential.values()][:12]


def test_plus_category_returns_only_its_items(teacher, raw, histories):
    for cat, members in raw.category2item.items():
        k = 10
        free = [set(members) - set(h) for h in histories]
        rows = teacher.topk(histories, k, target_categories=["+" + cat] * len(histories))
        for r, f, h in zip(rows, free, histories):
            assert len(r) == k and len(set(r)) == k
            if len(f) >= k:
                assert set(r) <= set(members) and not set(r) & set(h)
            else:  # too few: every free member first, then the best others
                assert set(r[: len(f)]) == f


def test_minus_category_returns_none_of_its_items(teacher, raw, histories):
    for cat, members in raw.category2item.items():
        rows = teacher.topk(histories, 10, target_categories=["-" + cat] * len(histories))
        for r, h in zip(rows, histories):
            assert not set(r) & set(members) and not set(r) & set(h)


def test_topk_follows_scores_and_excludes_history(teacher, histories):
    scores = teacher.scores(histories)
    rows = teacher.topk(histories, 15)
    for r, s, h in zip(rows, scores, histories):
        order = [teacher.items[j] for j in np.argsort(-s, kind="stable") if teacher.items[j] not in h][:15]
        assert r == order


def test_candidates_restrict_and_fill(teacher, raw, histories):
    pool = raw.items
    cands = [pool[i: i + 12] for i in range(len(histories))]
    rows = teacher.topk(histories, 5, candidates=cands)
    scores = teacher.scores(histories)
    for r, c, s in zip(rows, cands, scores):
        assert set(r) <= set(c)
        best = sorted(c, key=lambda i: (-s[teacher.items.index(i)], teacher.items.index(i)))[:5]
        assert r == best
    # fewer candidates than k: the candidates first, then the best of the rest
    rows = teacher.topk(histories[:3], 6, candidates=[pool[:2]] * 3)
    for r in rows:
        assert set(r[:2]) == set(pool[:2]) and len(r) == 6 and not set(r[2:]) & set(pool[:2])


def test_ranks_agree_with_scores(teacher, raw, histories):
    cands = [raw.ranking_candidate[u][:20] for u in list(raw.sequential)[: len(histories)]]
    ranks = teacher.ranking(histories, cands)
    scores = teacher.scores(histories)
    for rk, c, s in zip(ranks, cands, scores):
        for item, r in zip(c, rk):
            j = teacher.items.index(item)
            assert r == int(np.sum(s > s[j]) + np.sum(s[:j] == s[j]))
        # order of ranks is the order of scores
        assert np.argsort(rk).tolist() == np.argsort([-s[teacher.items.index(i)] for i in c], kind="stable").tolist()


def test_long_history_uses_the_last_window(teacher, raw):
    seq = max(raw.sequential.values(), key=len)
    assert len(seq) > teacher.window
    np.testing.assert_allclose(teacher.scores([seq]), teacher.scores([seq[-teacher.window:]]), rtol=1e-6)
    assert not set(teacher.topk([seq], 10)[0]) & set(seq)  # but the whole history is excluded


def test_results_do_not_depend_on_batch_company(teacher, histories):
    alone = [teacher.topk([h], 7)[0] for h in histories[:5]]
    assert teacher.topk(histories[:5], 7) == alone
    big = histories * 30  # 360 rows: bucket 1024
    assert teacher.topk(big, 7)[: 5] == alone


def test_same_bucket_does_not_recompile(teacher, histories):
    teacher.topk(histories[:5], 10)
    size = teacher._topk_fn._cache_size()
    teacher.topk(histories[:7], 10)  # same batch bucket (16) and k bucket (16)
    teacher.topk(histories[:9], 12, target_categories=["+Drama"] * 9)
    assert teacher._topk_fn._cache_size() == size


@pytest.mark.parametrize("call, needle", [
    (lambda t: t.topk([["nope"]], 5), "'nope'"),
    (lambda t: t.topk([["1"]], 5, target_categories=["+Western"]), "'Western'"),
    (lambda t: t.topk([["1"]], 5, target_categories=["Drama"]), "'Drama'"),
    (lambda t: t.topk([["1"]], 5, candidates=[["1", "zzz"]]), "'zzz'"),
    (lambda t: t.ranking([["1"]], [["xx"]]), "'xx'"),
    (lambda t: t.topk([["1"]], -1), "k must be"),
    (lambda t: t.topk([["nope"]], 0), "'nope'"),  # k = 0 still checks its inputs
    (lambda t: t.topk([["1"], ["2"]], 5, target_categories=["+Drama"]), "target_categories"),
    (lambda t: t.topk([["1"]], 5, users=["nobody"]), "unknown user 'nobody'"),
    (lambda t: t.ranking([["1"]], [["2"]], users=["u1", "u2"]), "users has 2 entries"),
])
def test_unknown_inputs_raise_user_error(teacher, call, needle):
    with pytest.raises(UserError, match=needle):
        call(teacher)


def test_k_larger_than_catalogue(teacher):
    r = teacher.topk([["1"]], 100)[0]
    assert len(r) == len(teacher.items) and set(r) == set(teacher.items)
    assert r[-1] == "1"  # the history item only fills at the very end


def test_k_zero_gives_empty_lists(teacher):
    """B8: the original server answers k = 0 with an empty list, ``ad4d270:unirec/asyc_server.py:69``:
    ``top_k_indices = torch.topk(score, batched_data['k']).indices`` (topk(score, 0) is empty); its
    SFTPersonalCategoryRate asks for k = 0 when a count is 0 (``ad4d270:sft/dataset.py:163-166``)."""
    assert teacher.topk([["1", "2"], ["3"]], 0, target_categories=["+Drama", "-Comedy"]) == [[], []]
    assert teacher.topk([["1"]], 0, candidates=[["2", "3"]]) == [[]]
