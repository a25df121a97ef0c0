"""``ConstrainedCatalogue``: the catalogue's trie, list format and category table, and each row's constraint
as the arrays ``CatalogueProcessor`` reads.

Shared data (``shared_data()``, device arrays, built once; N items in the trie, W = ceil(N / 32), M nodes,
J = ``max_items``): the trie's ``child_start`` int32 [M + 1], ``token``, ``lo``, ``hi``, ``leaf_item`` int32 [M],
``kinds``, ``leaf_kind`` int8 [M] (``trie.py``); ``num_tokens`` int32 [J, L] and ``num_len`` int32 [J] (the number
pieces); ``valid_bits`` uint32 [W] (the ranks that are items); ``item_cats`` uint32 [32 W, ceil(C / 32)] (bit c of
an item's row: it is in category c), shared by every row; the token budget's ``num_pre`` int32 [J + 1] and
``fit_end``, ``fit_cont`` uint32 [Lmax + 2, W] (``budget.py``).

Per-row data (``row_data(constraints)["rows"]``, numpy, n prompts): ``active`` bool [n]; ``k_min``, ``k_max``,
``c_min``, ``c_max``, ``category`` (index, -1 none), ``cat_mode`` (0 none, 1 only C, 2 no C), ``n_candidates``
int32 [n]; ``exclude`` and ``candidates`` int32 [n, L] item ranks, -1 padded, L a power of two >= 16 (so
batches of other constraints reuse the compiled program); the budget's ``limit`` int32 [n] (the row's
``max_new_tokens``, ``budget.UNLIMITED`` when not given) and ``s_in``, ``s_out`` int32 [n, J + 1].

Nothing here imports JAX until ``processor`` or ``shared_data()`` is used, so the vLLM plugin builds the same
catalogue in a process without JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from reclm_jax.buckets import bucket
from reclm_jax.decoding.budget import BIG, length_bits, row_limits, walk_cheapest
from reclm_jax.decoding.list_format import CONT, END, ListFormat, usable_title
from reclm_jax.decoding.trie import TokenTrie, build_trie
from reclm_jax.errors import UserError

MODES = {"none": 0, "only": 1, "exclude": 2}


@dataclasses.dataclass(frozen=True)
class ListConstraint:
    """One row's rule: between ``k_min`` and ``k_max`` distinct catalogue items (None: up to ``max_items``);
    ``category`` with ``category_mode`` "only" / "exclude" / "none", and between ``c_min`` and ``c_max`` items of
    it (None: no cap); never an item of ``exclude``; only items of ``candidates`` when given (item ids)."""

    k_min: int = 1
    k_max: int | None = None
    category: str | None = None
    category_mode: str = "none"
    c_min: int = 0
    c_max: int | None = None
    exclude: tuple[str, ...] = ()
    candidates: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.category_mode not in MODES:
            raise UserError(f"constraint: category_mode {self.category_mode!r} is not one of {tuple(MODES)}")


class ConstrainedCatalogue:
    """Builds everything from the catalogue: ``items`` (ids) with their index ``titles``, ``item2category``
    (id -> category names), ``categories`` (all names), the model's ``tokenizer`` and ``end_text`` (the EOS
    string the labels end with). Items whose title the parser could not read back (newlines, outer spaces) or
    that repeat an earlier title are left out (``dropped``). ``max_items``: the longest list (J)."""

    def __init__(self, items: Sequence[str], titles: Sequence[str], item2category: Mapping[str, Sequence[str]],
                 categories: Sequence[str], tokenizer: Any, end_text: str, max_items: int = 64,
                 progress: bool = False, narrow: int = 64):
        seen: set[str] = set()
        keep = []
        for i, (item, title) in enumerate(zip(items, titles)):
            if usable_title(title) and title not in seen:
                seen.add(title)
                keep.append(i)
        self.format = ListFormat(tokenizer, end_text, [titles[i] for i in keep[:200]])
        pieces = self.format.pieces()
        kept_titles = [titles[i] for i in keep]
        bar = tqdm(total=1, desc="catalogue trie: tokenize", disable=not progress, leave=False)
        cont, end = pieces.item_paths(kept_titles)
        bar.close()
        same = not self.format.rule.newline_space_in_item
        paths, owners, kinds = [], [], []
        for j, (c, e) in enumerate(zip(cont, end)):
            if c is None or e is None:
                continue
            if same:
                paths.append(c), owners.append(j), kinds.append(CONT | END)
            else:
                paths += [c, e]
                owners += [j, j]
                kinds += [CONT, END]
        if not paths:
            raise UserError("constrained decoding: no catalogue title can be tokenized as a list item")
        self.trie, order = build_trie(paths, np.asarray(owners), np.asarray(kinds))
        self._lengths(paths, np.asarray(owners), np.asarray(kinds), order)
        self.items = [items[keep[j]] for j in order.tolist()]  # rank -> item id
        self.titles = [titles[keep[j]] for j in order.tolist()]
        self.rank = {it: r for r, it in enumerate(self.items)}
        self.dropped = [it for it in items if it not in self.rank]
        self.num_tokens = self._numbers(pieces, max_items)
        self._check_exits()
        self.categories = list(categories)
        self.cat_index = {c: k for k, c in enumerate(self.categories)}
        self.words = -(-len(self.items) // 32)
        self.item_cats = np.zeros((32 * self.words, max(1, -(-len(self.categories) // 32))), np.uint32)
        self.cat_counts = np.zeros(len(self.categories), np.int64)
        for r, it in enumerate(self.items):
            for k in {self.cat_index[c] for c in item2category.get(it) or () if c in self.cat_index}:
                self.item_cats[r, k // 32] |= np.uint32(1 << (k % 32))
                self.cat_counts[k] += 1
        self.narrow = narrow
        self._shared: dict = {}  # placement (None or a mesh) -> the shared device arrays
        self._processor = None

    @property
    def processor(self):
        """The ``CatalogueProcessor`` of this catalogue (imported on first use: the host-side parts, e.g. the
        vLLM plugin's ``host_state.py``, must build a catalogue where JAX is not installed)."""
        if self._processor is None:
            from reclm_jax.decoding.processor import CatalogueProcessor

            self._processor = CatalogueProcessor(words=self.words, max_children=self.trie.max_children,
                                                 end_id=self.format.end_id, narrow=self.narrow)
        return self._processor

    @classmethod
    def from_dataset(cls, raw, index, tokenizer: Any, end_text: str, **kwargs) -> "ConstrainedCatalogue":
        """From a ``RawDataset`` and its ``ItemIndex`` (``data/item_index.py``)."""
        return cls(index.items, [index.text[i] for i in index.items], raw.item2category, raw.categories,
                   tokenizer, end_text, **kwargs)

    @classmethod
    def from_folder(cls, data: Any, item_index: str, tokenizer: Any, **kwargs) -> "ConstrainedCatalogue":
        """A raw dataset folder's catalogue under ``item_index``, lists ending with the tokenizer's EOS: what a
        server started with ``--constrain-data data --item-index item_index`` decodes over (ours and vLLM's)."""
        from reclm_jax.data.item_index import load_dataset

        raw, index = load_dataset(data, item_index, tokenizer=tokenizer)
        return cls.from_dataset(raw, index, tokenizer, tokenizer.eos_token, **kwargs)

    def __len__(self) -> int:
        return len(self.items)

    def _numbers(self, pieces, max_items: int) -> np.ndarray:
        nums = pieces.numbers(max_items)
        width = max(len(p) for p in nums)
        table = np.full((max_items, width), self.format.end_id, np.int32)
        for j, p in enumerate(nums):
            table[j, :len(p)] = p
        self.num_len = np.array([len(p) for p in nums], np.int32)
        self.num_pre = np.concatenate([[0], np.cumsum(self.num_len)]).astype(np.int32)
        return table

    def _lengths(self, paths, owners: np.ndarray, kinds: np.ndarray, order: np.ndarray) -> None:
        """Each item's END / CONT piece length by rank, the budget's bit tables and its cheapest-first order."""
        rank_of = np.full(int(owners.max()) + 1, -1, np.int64)
        rank_of[order] = np.arange(len(order))
        lens = np.fromiter((len(p) for p in paths), np.int64, count=len(paths))
        ranks = rank_of[owners]
        self.end_len = np.zeros(len(order), np.int64)
        self.cont_len = np.zeros(len(order), np.int64)
        is_end, is_cont = (kinds & END) > 0, (kinds & CONT) > 0
        self.end_len[ranks[is_end]] = lens[is_end]
        self.cont_len[ranks[is_cont]] = lens[is_cont]
        self.item_cost = np.maximum(self.end_len, self.cont_len)  # what a later item of the list costs, at most
        self.by_cost = np.argsort(self.item_cost, kind="stable")
        words = -(-len(order) // 32)
        self.fit_end, self.fit_cont = length_bits(self.end_len, words), length_bits(self.cont_len, words)
        # One table height for both, so the processor indexes them alike.
        h = max(len(self.fit_end), len(self.fit_cont))
        pad = (lambda t: np.concatenate([t, np.repeat(t[-1:], h - len(t), axis=0)]))
        self.fit_end, self.fit_cont = pad(self.fit_end), pad(self.fit_cont)

    def _check_exits(self) -> None:
        """A leaf's children must not start with an exit token, or leaving the trie would be ambiguous."""
        t = self.trie
        exits = set(self.num_tokens[1:, 0].tolist()) | {self.format.end_id}
        leaves = np.flatnonzero((t.leaf_item >= 0) & (np.diff(t.child_start) > 0))
        for n in leaves.tolist():
            kids = t.token[t.child_start[n]:t.child_start[n + 1]]
            if exits & set(kids.tolist()):
                raise UserError(f"constrained decoding: a title continues with a list-number token after its line "
                                f"end (near item {self.titles[t.leaf_item[n]]!r}); this tokenizer's list format "
                                f"cannot be followed by a trie")

    # -- data ---------------------------------------------------------------------------------------------
    def shared_arrays(self) -> dict[str, np.ndarray]:
        bits = np.zeros(self.words, np.uint32)
        full, rest = divmod(len(self.items), 32)
        bits[:full] = 0xFFFFFFFF
        if rest:
            bits[full] = (1 << rest) - 1
        return {**self.trie.arrays(), "num_tokens": self.num_tokens, "num_len": self.num_len, "valid_bits": bits,
                "item_cats": self.item_cats, "num_pre": self.num_pre, "fit_end": self.fit_end,
                "fit_cont": self.fit_cont}

    def shared_data(self, runtime: Any = None) -> dict:
        """The shared arrays on the device: the default one, or replicated over ``runtime``'s mesh (a
        ``train.runtime.Runtime``). Cached per placement, so the Sampler's own ``replicate`` of them finds them
        placed and no call copies the trie again."""
        key = None if runtime is None else runtime.mesh
        if key not in self._shared:
            if runtime is None:
                import jax.numpy as jnp

                self._shared[key] = {k: jnp.asarray(v) for k, v in self.shared_arrays().items()}
            else:
                self._shared[key] = runtime.replicate(self.shared_arrays())
        return self._shared[key]

    def device_bytes(self) -> int:
        return sum(int(v.nbytes) for v in self.shared_arrays().values())

    def processor_data(self, constraints: Sequence[ListConstraint | None], runtime: Any = None,
                       limits: int | Sequence[int | None] | None = None) -> dict:
        """``processor_data`` for the Sampler: the shared device arrays (placed for ``runtime``, the Sampler's)
        plus this batch's ``rows``; ``limits``: the rows' ``max_new_tokens`` (see ``row_data``)."""
        return {**self.shared_data(runtime), **self.row_data(constraints, limits)}

    def sampler_kwargs(self, constraints: Sequence[ListConstraint | None], runtime: Any = None,
                       limits: int | Sequence[int | None] | None = None) -> dict:
        """The Sampler's keyword arguments that decode one batch under ``constraints`` (one per prompt, None =
        unconstrained row): ``logits_processor`` (the one, hashed, ``processor``) and ``processor_data``.
        ``runtime``: the Sampler's (``sampler.runtime``), so the shared arrays are placed on its mesh once.
        ``limits``: the ``max_new_tokens`` the Sampler is given (an int or one per prompt), so every list ends
        on a whole item within it; None = no limit known (a list may then be cut at the Sampler's limit)."""
        return {"logits_processor": self.processor,
                "processor_data": self.processor_data(constraints, runtime, limits)}

    def _ranks(self, ids: Sequence[str]) -> list[int]:
        return sorted({self.rank[i] for i in ids if i in self.rank})

    def _in_category(self, ranks: Sequence[int], k: int) -> np.ndarray:
        r = np.asarray(ranks, np.int64)
        return ((self.item_cats[r, k // 32] >> np.uint32(k % 32)) & 1).astype(bool) if len(r) else np.zeros(0, bool)

    def row_data(self, constraints: Sequence[ListConstraint | None],
                 limits: int | Sequence[int | None] | None = None) -> dict:
        """The per-row arrays (module docstring) of ``constraints``; ``limits``: each row's token limit (an int
        for all, one per row, None = unlimited)."""
        n, big = len(constraints), len(self.num_tokens)
        ex = [self._ranks(c.exclude) if c else [] for c in constraints]
        cand = [self._ranks(c.candidates) if c and c.candidates is not None else [] for c in constraints]
        rows = {k: np.zeros(n, np.int32) for k in ("k_min", "k_max", "c_min", "c_max", "cat_mode", "n_candidates")}
        rows["active"] = np.array([c is not None for c in constraints])
        rows["category"] = np.full(n, -1, np.int32)
        for i, c in enumerate(constraints):
            if c is None:
                continue
            k = self.cat_index.get(c.category, -1) if c.category is not None else -1
            mode = MODES[c.category_mode] if k >= 0 else 0
            if c.category is not None and k < 0 and c.category_mode == "only":
                raise UserError(f"constraint: unknown category {c.category!r}; known: {self.categories[:10]} ...")
            n_in, n_out = self._available(ex[i], cand[i], c.candidates is not None, k, mode)
            c_max = big if c.c_max is None else c.c_max
            k_max = min(big if c.k_max is None else c.k_max, min(n_in, c_max) + n_out, big)
            c_max = min(c_max, k_max)
            c_min = min(c.c_min, n_in, c_max)
            k_min = min(c.k_min, k_max)
            rows["k_min"][i], rows["k_max"][i], rows["c_min"][i], rows["c_max"][i] = k_min, k_max, c_min, c_max
            rows["category"][i], rows["cat_mode"][i] = k, mode
            rows["n_candidates"][i] = len(cand[i]) if c.candidates is not None else 0
            if c.candidates is not None and not cand[i]:
                rows["n_candidates"][i], rows["k_max"][i] = 1, 0  # no candidate is in the catalogue
        rows["exclude"] = _pad_lists(ex)
        rows["candidates"] = _pad_lists(cand)
        rows["limit"] = row_limits(limits, n)
        rows["s_in"], rows["s_out"] = self._cheapest(constraints, rows, ex, cand)
        return {"rows": rows}

    def _cheapest(self, constraints, rows, ex, cand) -> tuple[np.ndarray, np.ndarray]:
        """(s_in, s_out) int32 [n, J + 1]: the budget's prefix costs of each row's cheapest available items in
        and outside its category (``budget.py``)."""
        n, j = len(constraints), len(self.num_tokens)
        s_in, s_out = np.full((n, j + 1), BIG, np.int32), np.full((n, j + 1), BIG, np.int32)
        for i, c in enumerate(constraints):
            if c is None:
                continue
            k, mode = int(rows["category"][i]), int(rows["cat_mode"][i])
            excluded = np.asarray(ex[i], np.int64)
            pool = np.asarray(cand[i], np.int64) if c.candidates is not None else None

            def keep(ranks, k=k, mode=mode, excluded=excluded, pool=pool):
                ok = ~np.isin(ranks, excluded) & (np.isin(ranks, pool) if pool is not None else True)
                inn = self._in_category(ranks, k) if k >= 0 else np.zeros(len(ranks), bool)
                return ok & ~((mode == 1) & ~inn) & ~((mode == 2) & inn), inn

            order = pool[np.argsort(self.item_cost[pool], kind="stable")] if pool is not None else self.by_cost
            s_in[i], s_out[i] = walk_cheapest(order, self.item_cost, keep, j)
        return s_in, s_out

    def _available(self, ex: list[int], cand: list[int], restricted: bool, k: int, mode: int) -> tuple[int, int]:
        """(items in the row's category, items outside it) the row may write, counted on the host."""
        if restricted:
            pool = np.setdiff1d(np.asarray(cand, np.int64), np.asarray(ex, np.int64))
            inn = self._in_category(pool, k) if k >= 0 else np.zeros(len(pool), bool)
            n_in, n_out = int(inn.sum()), int((~inn).sum())
        else:
            total = len(self.items) - len(ex)
            if k >= 0:
                n_in = int(self.cat_counts[k]) - int(self._in_category(ex, k).sum())
            else:
                n_in = 0
            n_out = total - n_in
        if mode == 1:
            n_out = 0
        elif mode == 2:
            n_in = 0
        return n_in, n_out


def _pad_lists(lists: Sequence[Sequence[int]]) -> np.ndarray:
    width = bucket(max((len(x) for x in lists), default=1), minimum=16)
    out = np.full((len(lists), width), -1, np.int32)
    for i, x in enumerate(lists):
        out[i, :len(x)] = x
    return out
