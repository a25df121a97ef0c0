"""``HostRow``: one row of ``CatalogueProcessor``'s state machine on the host, in numpy, token by token, for
decoders that are not the JAX Sampler (the vLLM plugin, ``vllm_batch.py``). It follows exactly the processor's
rules (``processor.py``: phases NUM / ITEM / DONE, the trie walk, the count and category bookkeeping, the exits,
the dead-end rule and the token budget, with the same ``budget.plans``), so the same logits give the same greedy
tokens; ``tests/decoding/test_host_state.py`` compares the two step by step. Nothing here imports JAX.

Per row, as the processor: ``avail`` / ``avail_in`` uint32 [W] (bitsets of the items the row may still write,
and of those of them in its category; W = ceil(N / 32)) with their per-word prefix counts int64 [W + 1], so "may
an item below this trie node still be written" is a range count in O(1), and a row costs 24 bytes per 32 items
(0.75 MB at a million), never [items x vocab]; a step costs O(children of the node), finishing an item O(W).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from reclm_jax.decoding.budget import plans
from reclm_jax.decoding.list_format import CONT, END

NUM, ITEM, DONE = 0, 1, 2  # as processor.py
_POP16 = np.array([bin(i).count("1") for i in range(1 << 16)], np.int64)  # popcount of 16 bits (numpy < 2 has none)


def pack_bits(flags: np.ndarray) -> np.ndarray:
    """bool [n] -> uint32 [ceil(n / 32)] (bit i of word w = flag 32 w + i), as ``processor.pack_bits``."""
    words = -(-len(flags) // 32)
    padded = np.zeros(32 * words, bool)
    padded[:len(flags)] = flags
    return np.packbits(padded, bitorder="little").view("<u4").astype(np.uint32)


def _popcount(w: np.ndarray) -> np.ndarray:
    return _POP16[w & 0xFFFF] + _POP16[w >> 16]


def _prefix(bits: np.ndarray) -> np.ndarray:
    """uint32 [W] -> int64 [W + 1]: set bits in the words before each index."""
    return np.concatenate([[0], np.cumsum(_popcount(bits))])


def _count_below(pre: np.ndarray, bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Set bits with index < x (int64 [C], 0 <= x <= 32 W) -> int64 [C]."""
    w = x >> 5
    word = bits[np.minimum(w, len(bits) - 1)]
    low = (np.uint32(1) << (x & 31).astype(np.uint32)) - np.uint32(1)
    return pre[w] + _popcount(word & low)


class HostTables:
    """The shared arrays of a ``ConstrainedCatalogue`` (``shared_arrays()``, numpy) that ``HostRow`` reads."""

    def __init__(self, catalogue):
        a = catalogue.shared_arrays()
        self.child_start, self.token = a["child_start"].astype(np.int64), a["token"].astype(np.int64)
        self.lo, self.hi = a["lo"].astype(np.int64), a["hi"].astype(np.int64)
        self.kinds, self.leaf_item = a["kinds"].astype(np.int64), a["leaf_item"].astype(np.int64)
        self.leaf_kind = a["leaf_kind"].astype(np.int64)
        self.num_tokens, self.num_len = a["num_tokens"].astype(np.int64), a["num_len"].astype(np.int64)
        self.item_cats = a["item_cats"]
        self.num_pre, self.fit_end, self.fit_cont = a["num_pre"].astype(np.int64), a["fit_end"], a["fit_cont"]
        self.num_items = len(catalogue)
        self.end_id = int(catalogue.format.end_id)
        self.max_items = self.num_tokens.shape[0]  # J


class HostRow:
    """One constrained row: ``tables`` (``HostTables``) and ``rows``, the row's entries of
    ``ConstrainedCatalogue.row_data([constraint], limit)["rows"]`` (index 0 of each array is used; ``limit`` the
    request's ``max_tokens``, the row's token budget)."""

    def __init__(self, tables: HostTables, rows: Mapping[str, np.ndarray]):
        t, n = tables, tables.num_items
        self.t = t
        # The budget's per-row arrays, kept [1, ...] for budget.plans (the processor's batch layout).
        self.budget = {k: np.asarray(rows[k][:1], np.int64) for k in ("k_min", "c_min", "c_max", "s_in", "s_out")}
        self.limit = int(rows["limit"][0])
        self.k_min, self.k_max = int(rows["k_min"][0]), int(rows["k_max"][0])
        self.c_min, self.c_max = int(rows["c_min"][0]), int(rows["c_max"][0])
        cat, mode = int(rows["category"][0]), int(rows["cat_mode"][0])
        if cat >= 0:
            in_cat = ((t.item_cats[:n, cat >> 5] >> np.uint32(cat & 31)) & 1).astype(bool)
        else:
            in_cat = np.zeros(n, bool)
        avail = np.ones(n, bool)
        if int(rows["n_candidates"][0]) > 0:
            cand = np.zeros(n, bool)
            ids = rows["candidates"][0]
            cand[ids[ids >= 0]] = True
            avail &= cand
        ex = rows["exclude"][0]
        avail[ex[ex >= 0]] = False
        if mode == 1:
            avail &= in_cat
        elif mode == 2:
            avail &= ~in_cat
        self.avail, self.avail_in = pack_bits(avail), pack_bits(avail & in_cat)
        self.phase, self.pos, self.node, self.count, self.ccount = NUM, 0, 0, 0, 0
        self.steps, self.force_end = 0, False  # tokens written; the current item must be the last (budget)
        self.fit = [np.zeros_like(self.avail) for _ in range(4)]  # cont in / out, end in / out (processor.py)
        self.fit_pre = [_prefix(f) for f in self.fit]
        _, one = plans(np, t.num_pre, self.budget, np.zeros(1, np.int64), np.zeros(1, np.int64), self._k_max())
        if int(one[0]) > self.limit:  # not even one item fits: the list is empty
            self.phase = DONE

    def _k_max(self) -> np.ndarray:
        return np.array([min(self.k_max, self.t.max_items)], np.int64)

    # -- the processor's rules ------------------------------------------------------------------------------
    def _rules(self):
        k_max = min(self.k_max, self.t.max_items)
        cc, count = self.ccount, self.count
        return (cc + 1 <= self.c_max, self.c_min - cc <= k_max - count - 1, count + 1 < k_max,
                (count + 1 >= self.k_min) and (cc + 1 >= self.c_min) or self.force_end,
                (count + 1 >= self.k_min) and (cc >= self.c_min) or self.force_end)

    def _has(self, bits: np.ndarray, r: int) -> bool:
        return r >= 0 and bool((int(bits[r >> 5]) >> (r & 31)) & 1)

    def allowed(self) -> np.ndarray:
        """The tokens the row may write next, int64 [A] sorted (what ``CatalogueProcessor.process`` keeps)."""
        t = self.t
        allow_in, allow_out, cont, end_in, end_out = self._rules()
        out: list[int] = []
        j = min(self.count, t.max_items - 1)
        if self.phase == ITEM:
            a, b = t.child_start[self.node], t.child_start[self.node + 1]
            lo, hi, kinds = t.lo[a:b], t.hi[a:b], t.kinds[a:b]
            ci, co, ei, eo = (_count_below(p, f, hi) - _count_below(p, f, lo) > 0
                              for f, p in zip(self.fit, self.fit_pre))
            has_cont = ((kinds & CONT) > 0) & cont
            is_end = (kinds & END) > 0
            ok_in = allow_in & ((ci & has_cont) | (ei & is_end & end_in))
            ok_out = allow_out & ((co & has_cont) | (eo & is_end & end_out))
            out += t.token[a:b][ok_in | ok_out].tolist()
            r, kind = int(t.leaf_item[self.node]), int(t.leaf_kind[self.node])
            ci, co, ei, eo = (self._has(f, r) for f in self.fit)
            if kind & CONT and cont and ((ci and allow_in) or (co and allow_out)):
                out.append(int(t.num_tokens[min(self.count + 1, t.max_items - 1), 0]))
            if kind & END and ((ei and allow_in and end_in) or (eo and allow_out and end_out)):
                out.append(t.end_id)
        elif self.phase == NUM and self.k_max > 0:
            out.append(int(t.num_tokens[j, self.pos]))
        elif self.phase == DONE:
            out.append(t.end_id)
        if not out:  # a dead end (no item can be written any more) ends the list
            out.append(t.end_id)
        return np.unique(np.asarray(out, np.int64))

    def advance(self, token: int) -> None:
        """The row wrote ``token`` (what ``CatalogueProcessor.update`` does to its state)."""
        t, token = self.t, int(token)
        last = t.max_items - 1
        r, kind = int(t.leaf_item[self.node]), int(t.leaf_kind[self.node])
        in_item = self.phase == ITEM
        nxt = int(t.num_tokens[min(self.count + 1, last), 0])
        leave_cont = in_item and r >= 0 and bool(kind & CONT) and token == nxt
        leave_end = in_item and r >= 0 and bool(kind & END) and token == t.end_id
        done = leave_cont or leave_end
        pos_n = self.pos + 1
        num_done = pos_n >= t.num_len[min(self.count, last)]
        new_count = self.count + int(done)
        phase = self.phase
        if phase == NUM:
            phase = ITEM if num_done else NUM
        if leave_cont:
            phase = ITEM if t.num_len[min(new_count, last)] <= 1 else NUM
        if leave_end or self.phase == DONE:
            phase = DONE
        if self.phase == NUM or done:
            node = 0
        elif in_item:
            node = self._child(token)
        else:
            node = self.node
        if self.phase == NUM:
            self.pos = 0 if num_done else pos_n
        elif leave_cont:
            self.pos = 1
        inn = done and self._has(self.avail_in, r)
        keep = np.uint32(~(1 << (max(r, 0) & 31)) & 0xFFFFFFFF)
        if done:
            self.avail[r >> 5] &= keep
            self.avail_in[r >> 5] &= keep
        starts = (self.phase == NUM and num_done) or (leave_cont and t.num_len[min(new_count, last)] <= 1)
        self.phase, self.node, self.count, self.ccount = phase, node, new_count, self.ccount + int(inn)
        self.steps += 1
        if starts:
            self._start_item()

    def _start_item(self) -> None:
        """The budget of the item whose title starts now (``CatalogueProcessor._start_item``)."""
        t = self.t
        allow_in, allow_out, cont = self._rules()[:3]
        count1 = np.array([self.count + 1], np.int64)
        full_in, one_in = plans(np, t.num_pre, self.budget, count1, np.array([self.ccount + 1]), self._k_max())
        full_out, one_out = plans(np, t.num_pre, self.budget, count1, np.array([self.ccount]), self._k_max())
        left = self.limit - self.steps
        height = len(t.fit_cont)

        def fits(table, need):
            return table[int(np.clip(left - int(need[0]) + 1, 0, height - 1))]

        def some(bits_in, bits_out):
            return cont and ((allow_in and bool(bits_in.any())) or (allow_out and bool(bits_out.any())))

        avail_out = self.avail & ~self.avail_in
        c_in, c_out = self.avail_in & fits(t.fit_cont, full_in), avail_out & fits(t.fit_cont, full_out)
        if not some(c_in, c_out):
            c_in, c_out = self.avail_in & fits(t.fit_cont, one_in), avail_out & fits(t.fit_cont, one_out)
        end_fit = fits(t.fit_end, np.array([1]))
        self.fit = [c_in, c_out, self.avail_in & end_fit, avail_out & end_fit]
        self.fit_pre = [_prefix(f) for f in self.fit]
        self.force_end = not some(c_in, c_out)

    def _child(self, token: int) -> int:
        """The child of the row's node along ``token``; the node itself when there is none (as the processor)."""
        t = self.t
        a, b = t.child_start[self.node], t.child_start[self.node + 1]
        j = a + int(np.searchsorted(t.token[a:b], token))
        return int(j) if j < b and t.token[j] == token else self.node
