"""The trie against a brute-force one: every path reaches a leaf of its item and kind, and every node's item range
is exactly the set of items below it (contiguous), for random path sets with one or two paths per item."""

from __future__ import annotations

import numpy as np
import pytest

from reclm_jax.decoding.trie import CONT, END, build_trie


def _random_paths(rng, two_kinds: bool):
    n = int(rng.integers(1, 40))
    seqs = {tuple(int(t) for t in rng.integers(0, 6, size=int(rng.integers(1, 6)))) for _ in range(n)}
    paths, items, kinds = [], [], []
    for i, s in enumerate(sorted(seqs)):
        if two_kinds:
            paths += [list(s) + [9], list(s) + [8]]
            items += [i, i]
            kinds += [CONT, END]
        else:
            paths.append(list(s) + [9])
            items.append(i)
            kinds.append(CONT | END)
    order = rng.permutation(len(paths))  # the builder sorts
    return [paths[j] for j in order], np.asarray(items)[order], np.asarray(kinds)[order]


@pytest.mark.parametrize("two_kinds", [False, True])
def test_trie_matches_brute_force(two_kinds):
    rng = np.random.default_rng(3)
    for _ in range(100):
        paths, items, kinds = _random_paths(rng, two_kinds)
        trie, order = build_trie(paths, items, kinds)
        rank = {int(it): r for r, it in enumerate(order)}
        assert sorted(rank) == sorted(set(items.tolist()))
        below: dict[int, set] = {}
        for p, it, k in zip(paths, items, kinds):
            leaf = trie.walk(p)
            assert leaf > 0 and trie.leaf_item[leaf] == rank[int(it)] and trie.leaf_kind[leaf] == k
            for d in range(len(p) + 1):
                below.setdefault(trie.walk(p[:d]), set()).add(rank[int(it)])
        assert len(below) == trie.num_nodes  # no node that no path passes through
        for node, ranks in below.items():
            assert (trie.lo[node], trie.hi[node]) == (min(ranks), max(ranks) + 1)
            assert len(ranks) == trie.hi[node] - trie.lo[node]
        # Siblings are sorted by token (the processor's binary search relies on it).
        for n in range(trie.num_nodes):
            kids = trie.token[trie.child_start[n]:trie.child_start[n + 1]]
            assert (np.diff(kids) > 0).all()
        assert trie.walk([7, 7]) == -1


def test_equal_paths_are_refused():
    with pytest.raises(ValueError, match="equal"):
        build_trie([[1, 2], [1, 2]], np.array([0, 1]), np.array([3, 3]))
