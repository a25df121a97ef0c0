"""``CatalogueProcessor``: the list-constraint ``LogitsProcessor``, all of it inside the compiled decode loop.

Each row walks the list format (``list_format.py``): the forced number tokens of item j (phase NUM), then the
trie of item pieces (phase ITEM) until it leaves it at a leaf with the next number's first token (CONT) or the
end token (END), then nothing but the end token (phase DONE). A child token is allowed when some item below it
can still be written: the item ranks below a node are one range ``[lo, hi)``, so the question is a range count
over a per-row bitset, answered in O(1) from per-row prefix counts over the bitset's words.

Per-row state (B rows, W = ceil(N / 32) words): ``phase``, ``pos`` (token within NUM), ``node``, ``count``
(items written), ``ccount`` (of them in the row's category), ``t`` (tokens written) int32 [B]; ``avail``
(catalogue & candidates & category rule & not history & not yet written) and ``avail_in`` (the same & in the
row's category) uint32 [B, W]; for the current item ``fit`` uint32 [B, 4, W] (the available items in / outside
the category whose CONT piece fits the budget, then those whose END piece does) with prefix popcounts
``fit_pre`` int32 [B, 4, W + 1], and ``force_end`` bool [B]. Nothing is [items x vocab]; a step costs
O(B * children) range counts plus, when some row starts an item, an O(B * W) bitset update.

Count rules, with k_min <= items <= k_max and c_min <= items in category <= c_max: an item in C may start only
while ccount + 1 <= c_max, one outside C only while the slots left can still hold the C items missing
(c_min - ccount <= k_max - count - 1); the list may end only once count >= k_min and ccount >= c_min, and
may continue only while count + 1 < k_max.

Token budget (``budget.py``; the row's ``limit`` is its ``max_new_tokens``, per-row data, so new limits are
traced values): when an item's title starts at step t0, ``left = limit - t0`` tokens remain, the end token
included. A path is open only towards an item whose END piece fits in ``left - 1`` (it can be the last), or
whose CONT piece fits with ``reserve`` of what must follow (the items the count rules still need, or just one
more when those do not fit; the next numbers and the end token included). The row may leave by CONT only with
such an item, and when no item at all can be followed (``force_end``) it may end after the current one whatever
the counts: **the budget wins over the count rules**, so a list that cannot hold k items (or c of C) ends on a
whole item short of them instead of being cut mid-title. A list whose first item and end do not fit in the
limit is empty (DONE at once). Because the reserve bounds the cheapest completion from above, every open path
can be finished within the limit, and a limit that holds the rule's cheapest list gets the rule's counts.
Rows with ``active`` False (and the sampler's all-zero idle rows) keep their logits.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from reclm_jax.decoding.budget import plans
from reclm_jax.decoding.list_format import CONT, END
from reclm_jax.models.generation import LogitsProcessor

NUM, ITEM, DONE = 0, 1, 2


def pack_bits(flags: jnp.ndarray) -> jnp.ndarray:
    """bool [B, 32 * W] -> uint32 [B, W] (bit i of word w = flag 32 w + i)."""
    b, n = flags.shape
    shifts = jnp.arange(32, dtype=jnp.uint32)
    return jnp.sum(flags.reshape(b, n // 32, 32).astype(jnp.uint32) << shifts, axis=-1, dtype=jnp.uint32)


def prefix_counts(bits: jnp.ndarray) -> jnp.ndarray:
    """uint32 [..., W] -> int32 [..., W + 1]: set bits in the words before each index."""
    pop = jax.lax.population_count(bits).astype(jnp.int32)
    return jnp.concatenate([jnp.zeros_like(pop[..., :1]), jnp.cumsum(pop, axis=-1)], axis=-1)


def count_below(pre: jnp.ndarray, bits: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """Set bits with index < x: pre int32 [B, W + 1], bits uint32 [B, W], x int32 [B, C] -> int32 [B, C]."""
    w = x >> 5
    word = jnp.take_along_axis(bits, jnp.minimum(w, bits.shape[1] - 1), axis=1)
    low = (jnp.uint32(1) << (x & 31).astype(jnp.uint32)) - jnp.uint32(1)
    return jnp.take_along_axis(pre, w, axis=1) + jax.lax.population_count(word & low).astype(jnp.int32)


def test_bit(bits: jnp.ndarray, r: jnp.ndarray) -> jnp.ndarray:
    """bits uint32 [B, W], r int32 [B] (any value; < 0 reads False) -> bool [B]."""
    word = jnp.take_along_axis(bits, jnp.clip(r >> 5, 0, bits.shape[1] - 1)[:, None], axis=1)[:, 0]
    return (r >= 0) & (((word >> (r & 31).astype(jnp.uint32)) & 1) == 1)


def _scatter_flags(ids: jnp.ndarray, size: int) -> jnp.ndarray:
    """int32 [B, L] (-1 = none) -> bool [B, size] with those positions set."""
    b = ids.shape[0]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], ids.shape)
    return jnp.zeros((b, size), bool).at[rows, jnp.where(ids < 0, size, ids)].set(True, mode="drop")


@dataclasses.dataclass(frozen=True)
class CatalogueProcessor(LogitsProcessor):
    """Static settings (hashed into the compile key): ``words`` W, ``max_children`` of any node, ``narrow`` (a
    step whose rows all sit at nodes with at most this many children takes the cheap branch), ``end_id`` (the
    list's end token). Shared data and per-row data (``rows``) are described in ``catalogue.py``."""

    words: int
    max_children: int
    end_id: int
    narrow: int = 64

    row_fields = ("rows",)

    # -- init -------------------------------------------------------------------------------------------
    def init(self, prompt_tokens, prompt_mask, data):
        rows, n = data["rows"], 32 * self.words
        b = rows["active"].shape[0]
        cat = rows["category"]
        word = jnp.take(data["item_cats"], jnp.clip(cat >> 5, 0, data["item_cats"].shape[1] - 1), axis=1).T
        in_cat = (cat[:, None] >= 0) & (((word >> (cat[:, None] & 31).astype(jnp.uint32)) & 1) == 1)
        in_bits = pack_bits(in_cat)
        cand = pack_bits(_scatter_flags(rows["candidates"], n))
        excl = pack_bits(_scatter_flags(rows["exclude"], n))
        avail = jnp.broadcast_to(data["valid_bits"][None], (b, self.words))
        avail = jnp.where(rows["n_candidates"][:, None] > 0, avail & cand, avail) & ~excl
        mode = rows["cat_mode"][:, None]
        avail = jnp.where(mode == 1, avail & in_bits, jnp.where(mode == 2, avail & ~in_bits, avail))
        avail_in = avail & in_bits
        zeros = jnp.zeros(b, jnp.int32)
        # A list starts only if its first item and the end fit in the row's limit (else it is empty).
        k_max = jnp.minimum(rows["k_max"], data["num_tokens"].shape[0])
        _, one = plans(jnp, data["num_pre"], rows, zeros, zeros, k_max)
        return {"phase": jnp.where(one <= rows["limit"], NUM, DONE), "pos": zeros, "node": zeros, "count": zeros,
                "ccount": zeros, "avail": avail, "avail_in": avail_in, "t": zeros,
                "force_end": jnp.zeros(b, bool), "fit": jnp.zeros((b, 4, self.words), jnp.uint32),
                "fit_pre": jnp.zeros((b, 4, self.words + 1), jnp.int32)}

    # -- rules ------------------------------------------------------------------------------------------
    @staticmethod
    def _rules(state, rows, max_items: int):
        count, cc = state["count"], state["ccount"]
        k_max = jnp.minimum(rows["k_max"], max_items)
        return {"allow_in": cc + 1 <= rows["c_max"],
                "allow_out": rows["c_min"] - cc <= k_max - count - 1,
                "cont": count + 1 < k_max,
                "end_in": (count + 1 >= rows["k_min"]) & (cc + 1 >= rows["c_min"]),
                "end_out": (count + 1 >= rows["k_min"]) & (cc >= rows["c_min"])}

    def _children_mask(self, state, data, rules, width: int, vocab: int):
        """bool [B, vocab]: the children of each row's node below which an item can still be written."""
        node = state["node"]
        start, stop = data["child_start"][node], data["child_start"][node + 1]
        child = start[:, None] + jnp.arange(width)[None]
        real = child < stop[:, None]
        child = jnp.minimum(child, data["token"].shape[0] - 1)
        lo, hi = data["lo"][child], data["hi"][child]
        kinds = data["kinds"][child].astype(jnp.int32)
        fit, pre = state["fit"], state["fit_pre"]
        ci, co, ei, eo = (count_below(pre[:, f], fit[:, f], hi) - count_below(pre[:, f], fit[:, f], lo) > 0
                          for f in range(4))
        has_cont = ((kinds & CONT) > 0) & rules["cont"][:, None]
        has_end = (kinds & END) > 0
        ok_in = rules["allow_in"][:, None] & ((ci & has_cont) | (ei & has_end & rules["end_in"][:, None]))
        ok_out = rules["allow_out"][:, None] & ((co & has_cont) | (eo & has_end & rules["end_out"][:, None]))
        ok = real & (ok_in | ok_out)
        tok = jnp.where(ok, data["token"][child], vocab)
        b = node.shape[0]
        return jnp.zeros((b, vocab), bool).at[jnp.arange(b)[:, None], tok].set(True, mode="drop")

    def _exits(self, state, data, rules):
        """(cont_ok, end_ok) bool [B]: the row may finish the item at its node with the next number / the end."""
        node = state["node"]
        r, kind = data["leaf_item"][node], data["leaf_kind"][node].astype(jnp.int32)
        ci, co, ei, eo = (test_bit(state["fit"][:, f], r) for f in range(4))
        cont = ((kind & CONT) > 0) & rules["cont"] & ((ci & rules["allow_in"]) | (co & rules["allow_out"]))
        end = ((kind & END) > 0) & ((ei & rules["allow_in"] & rules["end_in"]) |
                                    (eo & rules["allow_out"] & rules["end_out"]))
        return cont, end

    # -- process ------------------------------------------------------------------------------------------
    def process(self, state, logits, step, data):
        rows = data["rows"]
        b, vocab = logits.shape
        max_items = data["num_tokens"].shape[0]
        rules = self._rules(state, rows, max_items)
        # Budget wins: when no item that could follow this one fits, the list may end after it whatever the counts.
        rules["end_in"] = rules["end_in"] | state["force_end"]
        rules["end_out"] = rules["end_out"] | state["force_end"]
        phase = state["phase"]
        in_item = phase == ITEM
        node = state["node"]
        fan = data["child_start"][node + 1] - data["child_start"][node]
        wide = jnp.any(in_item & (fan > self.narrow))
        narrow = min(self.narrow, self.max_children)
        mask = jax.lax.cond(wide, lambda: self._children_mask(state, data, rules, self.max_children, vocab),
                            lambda: self._children_mask(state, data, rules, narrow, vocab))
        cont, end = self._exits(state, data, rules)
        nxt = data["num_tokens"][jnp.minimum(state["count"] + 1, max_items - 1), 0]
        num = data["num_tokens"][jnp.minimum(state["count"], max_items - 1), state["pos"]]
        extra_tok = jnp.stack([jnp.where(in_item & cont, nxt, vocab), jnp.where(in_item & end, self.end_id, vocab),
                               jnp.where((phase == NUM) & (rows["k_max"] > 0), num, vocab), jnp.where(phase == DONE, self.end_id, vocab)], 1)
        mask = in_item[:, None] & mask
        mask = mask.at[jnp.arange(b)[:, None], extra_tok].set(True, mode="drop")
        # A dead end (no item can be written any more, e.g. every candidate used) ends the list.
        mask = mask | (~jnp.any(mask, axis=1, keepdims=True) & (jnp.arange(vocab) == self.end_id)[None])
        keep = mask | ~rows["active"][:, None]
        return jnp.where(keep, logits, -jnp.inf)

    # -- update -------------------------------------------------------------------------------------------
    def update(self, state, tokens, data):
        rows = data["rows"]
        max_items = data["num_tokens"].shape[0]
        phase, pos, node, count = state["phase"], state["pos"], state["node"], state["count"]
        r, kind = data["leaf_item"][node], data["leaf_kind"][node].astype(jnp.int32)
        nxt = data["num_tokens"][jnp.minimum(count + 1, max_items - 1), 0]
        in_item = (phase == ITEM) & rows["active"]
        leave_cont = in_item & (r >= 0) & ((kind & CONT) > 0) & (tokens == nxt)
        leave_end = in_item & (r >= 0) & ((kind & END) > 0) & (tokens == self.end_id)
        done_item = leave_cont | leave_end
        child = self._find_child(data, node, tokens)
        # NUM: the next number token; the number's last token enters the trie.
        num_len = data["num_len"][jnp.minimum(count, max_items - 1)]
        pos_n = pos + 1
        num_done = pos_n >= num_len
        new_count = count + done_item.astype(jnp.int32)
        next_len = data["num_len"][jnp.minimum(new_count, max_items - 1)]
        phase_out = jnp.where(phase == NUM, jnp.where(num_done, ITEM, NUM), phase)
        phase_out = jnp.where(leave_cont, jnp.where(next_len <= 1, ITEM, NUM), phase_out)
        phase_out = jnp.where(leave_end | (phase == DONE), DONE, phase_out)
        node_out = jnp.where(phase == NUM, 0, jnp.where(done_item, 0, jnp.where(in_item, child, node)))
        pos_out = jnp.where(phase == NUM, jnp.where(num_done, 0, pos_n), jnp.where(leave_cont, 1, pos))
        inn = test_bit(state["avail_in"], r) & done_item
        out = dict(state, phase=phase_out, pos=pos_out, node=node_out, count=new_count,
                   ccount=state["ccount"] + inn.astype(jnp.int32), t=state["t"] + 1)
        out = jax.lax.cond(jnp.any(done_item), lambda: self._use(out, r, done_item, inn), lambda: out)
        starts = ((phase == NUM) & num_done) | (leave_cont & (next_len <= 1))  # the next token starts a title
        return jax.lax.cond(jnp.any(starts), lambda: self._start_item(out, rows, data, starts), lambda: out)

    def _start_item(self, state, rows, data, starts):
        """The budget of the item that starts at step ``state["t"]`` in the rows where ``starts``: the bitsets of
        the available items (in / outside the category) whose CONT piece fits with the reserve of what must follow
        it (``budget.plans``: the items the count rules still need, or if those do not fit just one more), and
        of those whose END piece fits with the end token; ``force_end`` where no item can be followed at all."""
        max_items = data["num_tokens"].shape[0]
        rules = self._rules(state, rows, max_items)
        k_max = jnp.minimum(rows["k_max"], max_items)
        left = rows["limit"] - state["t"]  # tokens from the title's first one to the limit, the end token included
        count1 = state["count"] + 1
        avail_in = state["avail_in"]
        avail_out = state["avail"] & ~avail_in
        height = data["fit_cont"].shape[0]

        def fits(table, need):  # uint32 [B, W]: the items whose piece has at most left - need tokens
            return table[jnp.clip(left - need + 1, 0, height - 1)]

        full_in, one_in = plans(jnp, data["num_pre"], rows, count1, state["ccount"] + 1, k_max)
        full_out, one_out = plans(jnp, data["num_pre"], rows, count1, state["ccount"], k_max)

        def some(bits_in, bits_out):
            n_in = jnp.sum(jax.lax.population_count(bits_in), axis=1)
            n_out = jnp.sum(jax.lax.population_count(bits_out), axis=1)
            return rules["cont"] & ((rules["allow_in"] & (n_in > 0)) | (rules["allow_out"] & (n_out > 0)))

        f_in, f_out = avail_in & fits(data["fit_cont"], full_in), avail_out & fits(data["fit_cont"], full_out)
        use_full = some(f_in, f_out)[:, None]
        c_in = jnp.where(use_full, f_in, avail_in & fits(data["fit_cont"], one_in))
        c_out = jnp.where(use_full, f_out, avail_out & fits(data["fit_cont"], one_out))
        end_fit = fits(data["fit_end"], 1)
        fit = jnp.stack([c_in, c_out, avail_in & end_fit, avail_out & end_fit], axis=1)
        force_end = ~some(c_in, c_out)
        return dict(state, fit=jnp.where(starts[:, None, None], fit, state["fit"]),
                    fit_pre=jnp.where(starts[:, None, None], prefix_counts(fit), state["fit_pre"]),
                    force_end=jnp.where(starts, force_end, state["force_end"]))

    def _find_child(self, data, node, tokens):
        """The child of ``node`` reached by ``tokens`` (binary search over the sorted siblings), int32 [B]."""
        lo, hi = data["child_start"][node], data["child_start"][node + 1]
        end = hi
        for _ in range(max(1, math.ceil(math.log2(self.max_children + 1)))):
            mid = (lo + hi) // 2
            go_right = data["token"][jnp.minimum(mid, data["token"].shape[0] - 1)] < tokens
            lo, hi = jnp.where(go_right & (lo < hi), mid + 1, lo), jnp.where(~go_right & (lo < hi), mid, hi)
        found = (lo < end) & (data["token"][jnp.minimum(lo, data["token"].shape[0] - 1)] == tokens)
        return jnp.where(found, lo, node)

    def _use(self, state, r, done, inn):
        """Marks item rank r used in the rows where ``done`` (its bits cleared)."""
        w = jnp.clip(r >> 5, 0, self.words - 1)
        bit = jnp.uint32(1) << (jnp.maximum(r, 0) & 31).astype(jnp.uint32)
        clear = jnp.where(done, ~bit, jnp.uint32(0xFFFFFFFF))[:, None]
        hit = jnp.arange(self.words)[None] == w[:, None]
        avail = jnp.where(hit, state["avail"] & clear, state["avail"])
        avail_in = jnp.where(hit, state["avail_in"] & clear, state["avail_in"])
        return dict(state, avail=avail, avail_in=avail_in)
