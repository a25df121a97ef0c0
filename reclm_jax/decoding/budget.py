"""The token budget of a constrained list: what it costs to finish, so a row never starts an item (or a path
inside one) that its ``max_new_tokens`` cannot finish, and the list ends on a whole item instead of being cut.

Costs, in tokens (``list_format.py``): item j's number ``num_len[j]``, an item's CONT piece (title + continued
line end) ``cont_len[r]`` or END piece (title + last line end) ``end_len[r]``, and the end token (1). A list of
items r_1..r_m costs sum_j num_len[j] + sum_{j<m} cont_len[r_j] + end_len[r_m] + 1.

Tables, built once per catalogue on the host (numpy; N items, W = ceil(N / 32) words, Lmax the longest piece):

- ``fit_end``, ``fit_cont`` uint32 [Lmax + 2, W]: row t + 1 is the bitset of the items whose END / CONT piece
  has at most t tokens (row 0 is empty), so "the available items below a trie node that fit in t tokens" is
  a range count over ``avail & fit[t + 1]``, exact whatever items are used up (a per-node minimum alone would
  miss that a node's cheapest item was already written);
- ``num_pre`` int32 [J + 1]: prefix sums of ``num_len``;
- per row, ``s_in`` / ``s_out`` int32 [J + 1]: prefix sums of the costs ``max(cont_len, end_len)`` of the row's
  J cheapest available items in / outside its category (``BIG`` past the last one).

``reserve`` turns these into an upper bound on what q more items and the end cost after ``count1`` items (cc1
of them in the category): among the (u + q) cheapest items of a class at most u are used, so the q cheapest left
cost at most ``s[u + q] - s[u]``. Choosing each item so that it plus the reserve after it fits keeps a finish
within the limit possible at every step (``processor.py`` has the rule). Nothing here imports JAX: ``reserve``
takes the array module (numpy for ``host_state.py``, jax.numpy for the processor).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

BIG = 1 << 26  # "does not fit": larger than any limit, and two of them still fit an int32
UNLIMITED = 1 << 24  # the limit of a row that has none


def length_bits(lengths: np.ndarray, words: int) -> np.ndarray:
    """lengths int [N] (tokens of each item's piece) -> uint32 [max + 2, words]: row t + 1 = items of length <= t."""
    n = len(lengths)
    top = int(lengths.max()) if n else 0
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((top + 2, words), np.uint32)
    bits = np.zeros(32 * words, bool)
    sorted_len = lengths[order]
    cuts = np.searchsorted(sorted_len, np.arange(top + 1), side="right")  # items of length <= t, in `order`
    done = 0
    for t in range(top + 1):  # each item is set once: O(N + Lmax * W)
        bits[order[done:cuts[t]]] = True
        done = cuts[t]
        out[t + 1] = np.packbits(bits, bitorder="little").view("<u4")
    return out


def cheapest_prefix(costs: np.ndarray, count: int) -> np.ndarray:
    """int32 [count + 1]: prefix sums of the ``count`` smallest of ``costs`` (any order), BIG past the last one."""
    out = np.full(count + 1, BIG, np.int64)
    take = np.sort(np.asarray(costs, np.int64))[:count]
    out[:len(take) + 1] = np.concatenate([[0], np.cumsum(take)])
    return np.minimum(out, BIG).astype(np.int32)


def walk_cheapest(by_cost: np.ndarray, cost: np.ndarray, keep, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(s_in, s_out) of a row whose available items are ``keep(ranks) -> (available, in category)`` bool arrays,
    walking ``by_cost`` (ranks, cheapest first) in growing chunks until ``count`` of each class are found."""
    got_in: list[np.ndarray] = []
    got_out: list[np.ndarray] = []
    n_in = n_out = 0
    a, size = 0, 256
    while a < len(by_cost) and (n_in < count or n_out < count):
        ranks = by_cost[a:a + size]
        ok, inn = keep(ranks)
        got_in.append(cost[ranks[ok & inn]][:count - n_in])
        got_out.append(cost[ranks[ok & ~inn]][:count - n_out])
        n_in, n_out = n_in + len(got_in[-1]), n_out + len(got_out[-1])
        a, size = a + size, size * 4
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    return cheapest_prefix(cat(got_in), count), cheapest_prefix(cat(got_out), count)


def row_limits(limits: int | Sequence[int | None] | None, n: int) -> np.ndarray:
    """int32 [n]: each row's token limit (``max_new_tokens``), UNLIMITED where None."""
    if limits is None or np.ndim(limits) == 0:
        limits = [limits] * n
    if len(limits) != n:
        raise ValueError(f"constrained decoding: {len(limits)} limits for {n} rows")
    return np.array([UNLIMITED if x is None else min(int(x), UNLIMITED) for x in limits], np.int32)


def reserve(xp: Any, num_pre, s_in, s_out, k_max, c_max, count1, cc1, q, need_in):
    """Upper bound on the tokens of q more items (need_in of them in the category, first) and the end token,
    after ``count1`` items of which ``cc1`` in the category; BIG when the rules or the row's items do not allow
    it. num_pre int [J + 1]; s_in, s_out int [B, J + 1]; the rest int [B] (k_max already at most J) -> int [B]."""
    j = s_in.shape[1] - 1

    def seg(s, a, b):  # the cheapest (b - a) items of a class after a of them are used, at most
        sa = xp.take_along_axis(s, xp.clip(a, 0, j)[:, None], axis=1)[:, 0]
        sb = xp.take_along_axis(s, xp.clip(b, 0, j)[:, None], axis=1)[:, 0]
        return xp.where((b > j) | (sb >= BIG), BIG, sb - sa)

    u_out = count1 - cc1
    opt_out = xp.where(cc1 + need_in <= c_max, seg(s_in, cc1, cc1 + need_in) + seg(s_out, u_out, u_out + q - need_in),
                       BIG)
    opt_in = xp.where(cc1 + q <= c_max, seg(s_in, cc1, cc1 + q), BIG)
    items = xp.minimum(opt_out, opt_in)
    nums = num_pre[xp.clip(count1 + q, 0, j)] - num_pre[xp.clip(count1, 0, j)]
    return xp.where((q > k_max - count1) | (items >= BIG), BIG, nums + items + 1)


def plans(xp: Any, num_pre, rows, count1, cc1, k_max):
    """(full, one) reserves int [B] after an item that leaves ``count1`` items, ``cc1`` in the category: ``full``
    for as many more as the count rules need (at least one), ``one`` for just one more of an allowed class."""
    c_min, c_max = rows["c_min"], rows["c_max"]
    q = xp.maximum(xp.maximum(rows["k_min"] - count1, c_min - cc1), 1)
    full = reserve(xp, num_pre, rows["s_in"], rows["s_out"], k_max, c_max, count1, cc1, q,
                   xp.clip(c_min - cc1, 0, q))
    one_in = xp.where(c_min - cc1 <= k_max - count1 - 1, 0, 1)  # an item outside C is allowed next, or not
    one = reserve(xp, num_pre, rows["s_in"], rows["s_out"], k_max, c_max, count1, cc1, xp.ones_like(q), one_in)
    return full, one
