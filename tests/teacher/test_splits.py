from __future__ import annotations

import numpy as np

from reclm_jax.teacher.splits import build_splits, left_pad


def test_left_pad_keeps_the_most_recent_items():
    assert left_pad([5, 6, 7], 5).tolist() == [0, 0, 5, 6, 7]
    assert left_pad(list(range(1, 13)), 4).tolist() == [9, 10, 11, 12]


def test_leave_two_out_arrays():
    seqs = {"a": ["x", "y", "z", "w", "v"], "b": ["y", "x", "z"]}
    row = {"x": 1, "y": 2, "z": 3, "w": 4, "v": 5}
    sp = build_splits(seqs, row, 2)
    # user a trains on x y z (targets y, z); user b on y (no target)
    assert sp.train_history.tolist() == [[0, 1], [1, 2]]
    assert sp.train_target.tolist() == [2, 3]
    assert sp.valid.history.tolist() == [[2, 3], [0, 2]] and sp.valid.target.tolist() == [4, 1]
    assert sp.test.history.tolist() == [[3, 4], [2, 1]] and sp.test.target.tolist() == [5, 3]
    # everything before the target is seen, not just the window
    assert list(zip(sp.test.seen_user.tolist(), sp.test.seen_item.tolist())) == [
        (0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 1)]
    assert sp.item_counts.tolist() == [0, 1, 2, 1, 0, 0]
    assert sp.train_history.dtype == np.int32
