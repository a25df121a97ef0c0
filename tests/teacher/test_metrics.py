from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.teacher.metrics import evaluate, hit_ndcg, popularity_score_fn, target_ranks
from reclm_jax.teacher.splits import EvalSplit


def test_target_rank_masks_seen_items_and_breaks_ties_by_index():
    # rows: 0 pad, 1..5 items
    scores = jnp.array([[-jnp.inf, 0.9, 0.5, 0.7, 0.5, 0.1]])
    seen = jnp.array([[False, True, False, False, False, False]])
    # target 4 (0.5): above it are 3 (0.7) and 2 (tie, lower row); 1 is seen
    assert target_ranks(scores, jnp.array([4]), seen).tolist() == [2]
    assert target_ranks(scores, jnp.array([2]), seen).tolist() == [1]
    assert target_ranks(scores, jnp.array([4]), jnp.zeros_like(seen)).tolist() == [3]


def test_hit_ndcg_values():
    m = hit_ndcg(np.array([0, 1, 9, 10, 25]), ks=(10, 20))
    assert m["hr@10"] == pytest.approx(3 / 5)
    assert m["hr@20"] == pytest.approx(4 / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11) + 1 / np.log2(12)) / 5)


def test_popularity_baseline_with_seen_masking():
    counts = np.array([0, 10, 8, 6, 4, 2])  # row 0 is padding
    split = EvalSplit(history=np.zeros((3, 2), np.int32), target=np.array([3, 5, 2], np.int32),
                      seen_user=np.array([0, 0, 1], np.int32), seen_item=np.array([1, 2, 2], np.int32))
    # user 0: 1,2 seen -> target 3 is first; user 1: 2 seen -> 1,3,4 above 5 -> rank 3; user 2: 1 above 2
    m = evaluate(popularity_score_fn(counts), split, n_rows=6, batch_size=2, ks=(1, 3))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@3"] == pytest.approx(2 / 3)
