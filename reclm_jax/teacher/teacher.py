"""In-process teacher: batched, jit-compiled top-k and ranking queries on a trained SASRec.

    teacher = Teacher.from_checkpoint("runs/teacher_ml1m")
    teacher.topk([["1", "2"], ["3"]], k=10, target_categories=["+Comedy", None])   # -> [[item, ...], ...]
    teacher.ranking([["1", "2"]], [["7", "9"]])                                    # -> [[rank_7, rank_9]]

Batches are padded to a few fixed sizes (``BATCH_BUCKETS``) and k to powers of two, so a long labelling job
compiles a handful of programs once and never again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reclm_jax.buckets import bucket
from reclm_jax.datasets.raw import RawDataset, load_raw
from reclm_jax.errors import UserError
from reclm_jax.teacher.checkpoint import load_items, load_model, load_run_config
from reclm_jax.teacher.sasrec import PAD, SASRec
from reclm_jax.teacher.splits import left_pad

BATCH_BUCKETS = (1, 4, 16, 64, 256, 1024)
MIN_K_BUCKET = 16


class Teacher:
    """A trained SASRec plus the catalogue and category tables needed to answer queries.

    Attributes: ``items`` (catalogue ids in embedding-row order, row = index + 1), ``window`` (history
    window), ``categories`` (names in dataset order), ``users`` (known user ids; only the HTTP service checks
    them).
    """

    def __init__(self, model: SASRec, items: Sequence[str], category2item: Mapping[str, Sequence[str]],
                 users: Sequence[str] = ()):
        self.items = list(items)
        if model.n_items != len(self.items):
            raise UserError(f"the model has {model.n_items} item rows but {len(self.items)} items were given")
        self.window = model.window
        self.item_row = {item: k + 1 for k, item in enumerate(self.items)}
        self.categories = list(category2item)
        self.users = frozenset(users)
        n_rows = len(self.items) + 1
        self._all = np.ones(n_rows, bool)
        self._all[PAD] = False
        self._category_mask: dict[str, np.ndarray] = {}
        for c, members in category2item.items():
            m = np.zeros(n_rows, bool)
            rows = [self.item_row[i] for i in members if i in self.item_row]
            m[rows] = True
            self._category_mask[c] = m
        graphdef, self._params, self._rest = nnx.split(model, nnx.Param, ...)

        def scores(params, rest, history):
            return nnx.merge(graphdef, params, rest)(history)

        def topk(params, rest, history, allowed, k, fill):
            # -> (best allowed items, best other items or None). The second top-k over the whole catalogue is
            # compiled in (fill=True) only for chunks where some row has fewer than k allowed items.
            s = scores(params, rest, history)
            best = jax.lax.top_k(jnp.where(allowed, s, -jnp.inf), k)[1]
            if not fill:
                return best, None
            others = ~allowed & (jnp.arange(s.shape[1]) != PAD)[None]
            return best, jax.lax.top_k(jnp.where(others, s, -jnp.inf), k)[1]

        def ranks(params, rest, history, cand):
            # cand: int32 [B, M] item rows (0 = padding slot). Counting the items that beat each candidate is
            # O(B*M*N) elementwise work, far cheaper on CPU than sorting all N scores per row.
            s = scores(params, rest, history)  # [B, N+1], padding column -inf so it never counts
            c = jnp.take_along_axis(s, cand, axis=1)[:, :, None]  # [B, M, 1]
            rows = jnp.arange(s.shape[1])[None, None, :]
            above = (s[:, None, :] > c) | ((s[:, None, :] == c) & (rows < cand[:, :, None]))
            return above.sum(axis=2, dtype=jnp.int32)

        self._scores_fn = jax.jit(scores)
        self._topk_fn = jax.jit(topk, static_argnames=("k", "fill"))
        self._ranks_fn = jax.jit(ranks)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, data_path: str | Path | None = None,
                        dataset: RawDataset | None = None) -> "Teacher":
        """Loads a training run folder. The raw dataset is ``dataset`` when the caller has loaded it already
        (only its items, categories and users are used, so any item index will do), else read from
        ``data_path`` or, without one, from the run's config.yaml."""
        cfg = load_run_config(checkpoint_dir)
        data = dataset.root if dataset is not None else data_path if data_path is not None else cfg.data_path
        if not data:
            raise UserError(f"{checkpoint_dir}: the run's config has no data_path; pass data_path")
        raw = dataset if dataset is not None else load_raw(data, item_index="id")
        items = load_items(checkpoint_dir)
        if set(items) != set(raw.items):
            missing = sorted(set(items) ^ set(raw.items))[:3]
            raise UserError(f"{data}: its items differ from those the teacher in {checkpoint_dir} was trained "
                            f"on (e.g. {missing}); pass the dataset it was trained with as data_path")
        model = load_model(checkpoint_dir, cfg, len(items))
        return cls(model, items, raw.category2item, users=raw.users)

    # -- input checking -------------------------------------------------------------------------------------

    def _rows(self, ids: Sequence[str], what: str) -> list[int]:
        rows = []
        for i in ids:
            r = self.item_row.get(i) if isinstance(i, str) else None
            if r is None:
                raise UserError(f"unknown item {i!r} in {what}")
            rows.append(r)
        return rows

    def _category(self, target: str) -> tuple[bool, np.ndarray]:
        if not isinstance(target, str) or len(target) < 2 or target[0] not in "+-":
            raise UserError(f"target category {target!r} must be '+<category>' or '-<category>'")
        mask = self._category_mask.get(target[1:])
        if mask is None:
            raise UserError(f"unknown category {target[1:]!r} in target category {target!r}")
        return target[0] == "+", mask

    def _histories(self, histories: Sequence[Sequence[str]]) -> tuple[np.ndarray, list[list[int]]]:
        """-> (int32 [B, window] left-padded last-window rows, every history's full row list)."""
        rows = [self._rows(h, f"history {n}") for n, h in enumerate(histories)]
        window = np.stack([left_pad(r, self.window) for r in rows]) if rows else np.zeros((0, self.window), np.int32)
        return window, rows

    def _check_users(self, users: Sequence[str] | None, n: int) -> None:
        if users is None:
            return
        if len(users) != n:
            raise UserError(f"users has {len(users)} entries for {n} histories")
        for b, u in enumerate(users):
            if self.users and str(u) not in self.users:
                raise UserError(f"unknown user {u!r} (users[{b}])")

    def validate(self, histories: Sequence[Sequence[str]],
                 target_categories: Sequence[str | None] | None = None,
                 candidates: Sequence[Sequence[str] | None] | None = None) -> None:
        """Raises ``UserError`` naming the first unknown item or category, or a malformed target category."""
        for n, h in enumerate(histories):
            self._rows(h, f"history {n}")
        for n, c in enumerate(candidates or ()):
            if c is not None:
                self._rows(c, f"candidates {n}")
        for t in target_categories or ():
            if t is not None:
                self._category(t)

    # -- queries --------------------------------------------------------------------------------------------

    def _chunks(self, n: int):
        step = BATCH_BUCKETS[-1]
        for start in range(0, n, step):
            stop = min(start + step, n)
            yield start, stop, bucket(stop - start, BATCH_BUCKETS)

    @staticmethod
    def _pad(a: np.ndarray, size: int) -> np.ndarray:
        if len(a) == size:
            return a
        out = np.zeros((size,) + a.shape[1:], a.dtype)
        out[: len(a)] = a
        return out

    def scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """float32 [B, n_items]: score of every catalogue item (column j = ``items[j]``) for each history."""
        window, _ = self._histories(histories)
        out = np.zeros((len(window), len(self.items)), np.float32)
        for start, stop, size in self._chunks(len(window)):
            s = self._scores_fn(self._params, self._rest, self._pad(window[start:stop], size))
            out[start:stop] = np.asarray(s)[: stop - start, 1:]
        return out

    def topk(self, histories: Sequence[Sequence[str]], k: int,
             target_categories: Sequence[str | None] | None = None,
             candidates: Sequence[Sequence[str] | None] | None = None,
             users: Sequence[str] | None = None) -> list[list[str]]:
        """The k best items per history, as item ids: list of B lists of k strings (k = 0: B empty lists,
        as the original server's ``torch.topk(score, 0)``; the inputs are still checked).

        Per row: candidates given -> only those; else "+C" -> items of C; "-C" -> items not in C; None -> all
        items; the latter three exclude every item of the history. When fewer than k items qualify, the
        best remaining items fill the list. Ties go to the lower catalogue index. ``users`` (optional, one
        per history) are checked against the known users, as the HTTP service does.
        """
        self._check_users(users, len(histories))
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise UserError(f"k must be a non-negative integer, got {k!r}")
        n = len(histories)
        for name, arg in (("target_categories", target_categories), ("candidates", candidates)):
            if arg is not None and len(arg) != n:
                raise UserError(f"{name} has {len(arg)} entries for {n} histories")
        window, rows = self._histories(histories)
        allowed = np.empty((n, len(self.items) + 1), bool)
        for b in range(n):
            cand = candidates[b] if candidates is not None else None
            if cand is not None:
                allowed[b] = False
                allowed[b, self._rows(cand, f"candidates {b}")] = True
                continue
            target = target_categories[b] if target_categories is not None else None
            if target is None:
                allowed[b] = self._all
            else:
                plus, mask = self._category(target)
                allowed[b] = mask if plus else self._all & ~mask
            allowed[b, rows[b]] = False
        if k == 0:
            return [[] for _ in range(n)]
        n_allowed = allowed.sum(axis=1)
        kk = min(bucket(k, minimum=MIN_K_BUCKET), len(self.items) + 1)
        results: list[list[str]] = []
        for start, stop, size in self._chunks(n):
            short = bool((n_allowed[start:stop] < k).any())
            cand_idx, fill_idx = jax.device_get(self._topk_fn(
                self._params, self._rest, self._pad(window[start:stop], size), self._pad(allowed[start:stop], size),
                k=kk, fill=short))
            for j in range(stop - start):
                take = min(k, int(n_allowed[start + j]))
                fill = min(k - take, len(self.items) - int(n_allowed[start + j]))
                picked = list(cand_idx[j, :take]) + (list(fill_idx[j, :fill]) if fill > 0 else [])
                results.append([self.items[r - 1] for r in picked])
        return results

    def ranking(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
                users: Sequence[str] | None = None) -> list[list[int]]:
        """0-based rank of each candidate among all catalogue items by score (history not excluded); ``users``
        as in ``topk``."""
        self._check_users(users, len(histories))
        if len(candidates) != len(histories):
            raise UserError(f"candidates has {len(candidates)} entries for {len(histories)} histories")
        window, _ = self._histories(histories)
        cand_rows = [self._rows(c, f"candidates {b}") for b, c in enumerate(candidates)]
        width = max((len(c) for c in cand_rows), default=0)
        m = bucket(width, minimum=8)  # candidate slots, bucketed
        cand = np.zeros((len(cand_rows), m), np.int32)
        for b, c in enumerate(cand_rows):
            cand[b, : len(c)] = c
        out: list[list[int]] = []
        for start, stop, size in self._chunks(len(window)):
            ranks = np.asarray(self._ranks_fn(self._params, self._rest, self._pad(window[start:stop], size),
                                              self._pad(cand[start:stop], size)))
            for j in range(stop - start):
                out.append(ranks[j, : len(cand_rows[start + j])].tolist())
        return out

    def warmup(self, max_batch: int = BATCH_BUCKETS[-1], ks: Sequence[int] = (10,)) -> None:
        """Compiles every batch bucket up to ``max_batch`` for top-k (each k in ``ks``) and ranking."""
        h = [self.items[:1]]
        for size in BATCH_BUCKETS:
            if size > bucket(min(max_batch, BATCH_BUCKETS[-1]), BATCH_BUCKETS):
                break
            for k in ks:
                self.topk(h * size, k)
            self.ranking(h * size, [self.items[:20]] * size)
