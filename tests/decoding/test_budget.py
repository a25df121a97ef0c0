"""``budget.py``: the length bit tables and the reserve against brute force on small random inputs."""

from __future__ import annotations

import itertools

import numpy as np

from reclm_jax.decoding.budget import BIG, cheapest_prefix, length_bits, reserve, row_limits, walk_cheapest


def test_length_bits_hold_the_items_of_each_length_bound():
    rng = np.random.default_rng(0)
    for n in (1, 31, 33, 70):
        lengths = rng.integers(1, 9, n)
        words = -(-n // 32)
        table = length_bits(lengths, words)
        assert table.shape == (lengths.max() + 2, words)
        for t in range(-1, int(lengths.max()) + 1):
            bits = np.unpackbits(table[t + 1].view(np.uint8), bitorder="little")[:n].astype(bool)
            np.testing.assert_array_equal(bits, lengths <= t)


def test_walk_cheapest_finds_the_cheapest_available_of_each_class():
    rng = np.random.default_rng(1)
    cost = rng.integers(1, 20, 1000)
    inn = rng.random(1000) < 0.1
    banned = rng.random(1000) < 0.3
    by_cost = np.argsort(cost, kind="stable")
    s_in, s_out = walk_cheapest(by_cost, cost, lambda r: (~banned[r], inn[r]), 8)
    np.testing.assert_array_equal(s_in, cheapest_prefix(cost[inn & ~banned], 8))
    np.testing.assert_array_equal(s_out, cheapest_prefix(cost[~inn & ~banned], 8))
    assert cheapest_prefix(np.array([3, 1]), 4).tolist() == [0, 1, 4, BIG, BIG]


def test_reserve_bounds_the_cheapest_valid_completion():
    """After any used items, ``reserve`` is at least the cheapest way to write q more distinct items (need_in
    of them in the category, at most c_max in it overall) and the end, and BIG only when there is none."""
    rng = np.random.default_rng(2)
    num_pre = np.concatenate([[0], np.cumsum(rng.integers(1, 3, 6))])
    for _ in range(200):
        cost, inn = rng.integers(1, 9, 7), rng.random(7) < 0.4
        used = rng.random(7) < 0.3
        s_in, s_out = cheapest_prefix(cost[inn], 6)[None], cheapest_prefix(cost[~inn], 6)[None]
        count1, cc1 = int(used.sum()), int((used & inn).sum())
        q, c_max, k_max = int(rng.integers(1, 4)), int(rng.integers(0, 6)), int(rng.integers(count1, 7))
        need_in = int(rng.integers(0, q + 1))
        got = int(reserve(np, num_pre, s_in, s_out, np.array([k_max]), np.array([c_max]), np.array([count1]),
                          np.array([cc1]), np.array([q]), np.array([need_in]))[0])
        best = BIG
        free = np.flatnonzero(~used)
        for pick in itertools.combinations(free.tolist(), q) if count1 + q <= min(k_max, 6) else ():
            n_in = int(inn[list(pick)].sum())
            if n_in >= need_in and cc1 + n_in <= c_max:
                best = min(best, int(cost[list(pick)].sum()) + num_pre[count1 + q] - num_pre[count1] + 1)
        if got < BIG:
            assert got >= best, (got, best)
        assert (got < BIG) <= (best < BIG)


def test_row_limits():
    assert row_limits(None, 2).tolist() == [1 << 24] * 2
    assert row_limits([5, None], 2).tolist() == [5, 1 << 24]
