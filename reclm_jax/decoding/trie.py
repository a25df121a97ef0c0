"""A token trie over item pieces, built from sorted paths in time and memory linear in their total tokens.

Layout (numpy, then device arrays; M nodes, node 0 the root):

- nodes are numbered breadth-first, so the children of node n are the contiguous nodes
  ``child_start[n] .. child_start[n + 1] - 1``, sorted by ``token`` (int32 [M + 1]);
- ``token`` int32 [M]: the token on the edge into the node (-1 for the root);
- ``lo``, ``hi`` int32 [M]: the item ranks below the node form the range ``[lo, hi)``. Items are ranked in
  the sorted order of their paths, so every subtree is one contiguous range and "is any allowed item below this
  child" is a range count over a per-row bitset (``processor.py``), never an [items x vocab] table;
- ``kinds`` int8 [M]: which leaf kinds (``CONT``, ``END``) lie below the node;
- ``leaf_item`` int32 [M]: the item rank whose path ends here (-1 if none); ``leaf_kind`` int8 [M].

An item has a CONT path (title + the continued line end) and an END path (title + the last line end); they
share every token but the line end, or are the same path (one leaf of both kinds).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from reclm_jax.decoding.list_format import CONT, END


@dataclasses.dataclass
class TokenTrie:
    child_start: np.ndarray
    token: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    kinds: np.ndarray
    leaf_item: np.ndarray
    leaf_kind: np.ndarray
    num_items: int

    @property
    def num_nodes(self) -> int:
        return len(self.token)

    @property
    def max_children(self) -> int:
        return int(np.diff(self.child_start).max()) if self.num_nodes else 0

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "num_items"}

    def walk(self, path: Sequence[int]) -> int:
        """The node reached from the root along ``path`` (host-side, for tests), -1 when it leaves the trie."""
        n = 0
        for t in path:
            a, b = self.child_start[n], self.child_start[n + 1]
            j = a + np.searchsorted(self.token[a:b], t)
            if j >= b or self.token[j] != t:
                return -1
            n = int(j)
        return n


def _lcp(flat: np.ndarray, starts: np.ndarray, lens: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Longest common prefix of each path with the one before it (0 for the first), int64 [P]."""
    p = len(lens)
    out = np.zeros(p, np.int64)
    width = int(lens.max()) if p else 0
    cols = np.arange(width)
    for a in range(1, p, chunk):
        b = min(a + chunk, p)
        cur, prev = np.arange(a, b), np.arange(a - 1, b - 1)
        n = np.minimum(lens[cur], lens[prev])
        valid = cols[None, :] < n[:, None]
        x = np.where(valid, flat[np.minimum(starts[cur][:, None] + cols, len(flat) - 1)], -1)
        y = np.where(valid, flat[np.minimum(starts[prev][:, None] + cols, len(flat) - 1)], -2)
        same = (x == y) & valid
        out[a:b] = np.where(same.all(axis=1), n, np.argmin(same, axis=1))
    return out


def build_trie(paths: Sequence[Sequence[int]], items: np.ndarray, kinds: np.ndarray) -> tuple[TokenTrie, np.ndarray]:
    """Builds the trie of ``paths`` (token-id lists, none empty, none equal), ``items`` int [P] (the item each
    path writes, any ids) and ``kinds`` int [P] (``CONT``, ``END`` or both).

    Returns the trie and ``item_order`` int64 [N]: the item ids in rank order (rank r = ``item_order[r]``).
    """
    order = sorted(range(len(paths)), key=paths.__getitem__)
    lens = np.array([len(paths[i]) for i in order], np.int64)
    flat = np.fromiter((t for i in order for t in paths[i]), np.int64, count=int(lens.sum()))
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    items = np.asarray(items)[order]
    path_kinds = np.asarray(kinds, np.int8)[order]
    lcp = _lcp(flat, starts, lens)
    if (lcp == lens).any():
        raise ValueError("build_trie: two paths are equal")
    new = lens - lcp  # nodes each path adds, at depths lcp+1 .. len
    base = 1 + np.concatenate([[0], np.cumsum(new)[:-1]])  # pre-order id of each path's first new node
    m = 1 + int(new.sum())
    # Every path's new nodes, in pre-order: token, depth, parent (the node before it, or for the first new
    # node the one at depth lcp on the previous paths, made by the last path whose lcp is smaller).
    owner = np.repeat(np.arange(len(lens)), new)
    depth = np.zeros(m, np.int64)
    depth[1:] = np.arange(m - 1) - np.repeat(base - 1, new) + np.repeat(lcp, new) + 1
    tok = np.full(m, -1, np.int64)
    tok[1:] = flat[starts[owner] + depth[1:] - 1]
    parent = np.arange(m) - 1
    first = base
    creator = np.zeros(len(lens), np.int64)  # previous path with a smaller lcp (a monotonic stack)
    stack: list[int] = []
    lcps = lcp.tolist()
    for i, c in enumerate(lcps):
        while stack and lcps[stack[-1]] >= c:
            stack.pop()
        creator[i] = stack[-1] if stack else -1
        stack.append(i)
    r = creator
    parent[first] = np.where(lcp == 0, 0, base[np.maximum(r, 0)] + lcp - lcp[np.maximum(r, 0)] - 1)
    parent[0] = -1
    leaf = base + new - 1
    # Ranks: items in order of first appearance among the sorted paths.
    _, first_pos = np.unique(items, return_index=True)
    item_order = items[np.sort(first_pos)]
    rank_of = {it: k for k, it in enumerate(item_order.tolist())}
    ranks = np.fromiter((rank_of[it] for it in items.tolist()), np.int64, count=len(items))
    leaf_item = np.full(m, -1, np.int64)
    leaf_item[leaf] = ranks
    leaf_kind = np.zeros(m, np.int8)
    leaf_kind[leaf] = path_kinds
    lo = np.full(m, np.iinfo(np.int64).max)
    hi = np.full(m, -1, np.int64)
    lo[leaf], hi[leaf] = ranks, ranks + 1
    node_kinds = leaf_kind.copy()
    by_depth = np.argsort(-depth, kind="stable")  # children before parents
    bounds = np.searchsorted(-depth[by_depth], np.arange(-int(depth.max()), 1))
    for a, b in zip(bounds[:-1], bounds[1:]):  # one depth level at a time, deepest first
        nodes = by_depth[a:b]
        nodes = nodes[nodes != 0]
        np.minimum.at(lo, parent[nodes], lo[nodes])
        np.maximum.at(hi, parent[nodes], hi[nodes])
        np.bitwise_or.at(node_kinds, parent[nodes], node_kinds[nodes])
    # Breadth-first ids: by depth, then pre-order (= path order within a depth), so siblings are contiguous.
    bfs = np.lexsort((np.arange(m), depth))
    new_id = np.empty(m, np.int64)
    new_id[bfs] = np.arange(m)
    par = np.where(parent[bfs] >= 0, new_id[np.maximum(parent[bfs], 0)], -1)
    counts = np.bincount(par[1:], minlength=m)
    child_start = np.concatenate([[1], 1 + np.cumsum(counts)]).astype(np.int32)
    trie = TokenTrie(child_start=child_start, token=tok[bfs].astype(np.int32), lo=lo[bfs].astype(np.int32),
                     hi=hi[bfs].astype(np.int32), kinds=node_kinds[bfs], leaf_item=leaf_item[bfs].astype(np.int32),
                     leaf_kind=leaf_kind[bfs], num_items=len(item_order))
    return trie, item_order


__all__ = ["TokenTrie", "build_trie", "CONT", "END"]
