"""Full-ranking evaluation (HR@k, NDCG@k) with the user's seen items masked, and the popularity baseline.

The target's rank counts the unseen items that score higher than it, plus those that tie with it and have a
lower item row (the same tie-break as ``Teacher.topk``), so a constant scorer gets no free hits from ties.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reclm_jax.teacher.sasrec import PAD
from reclm_jax.teacher.splits import EvalSplit

ScoreFn = Callable[[np.ndarray], jax.Array]  # int32 [B, window] histories -> float32 [B, n_items + 1] scores


@jax.jit
def target_ranks(scores: jax.Array, target: jax.Array, seen: jax.Array) -> jax.Array:
    """scores float32 [B, N+1], target int32 [B], seen bool [B, N+1] -> int32 [B] 0-based ranks.

    Seen items and the padding column never count as ranked above the target.
    """
    t_score = jnp.take_along_axis(scores, target[:, None], axis=1)
    rows = jnp.arange(scores.shape[1])[None, :]
    above = (scores > t_score) | ((scores == t_score) & (rows < target[:, None]))
    above &= ~seen & (rows != PAD)
    return above.sum(axis=1).astype(jnp.int32)


def hit_ndcg(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """ranks int [U] (0-based) -> {"hr@k": mean hit, "ndcg@k": mean 1/log2(rank+2) for hits}."""
    ranks = np.asarray(ranks)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else 0.0
    return out


def evaluate(score_fn: ScoreFn, split: EvalSplit, n_rows: int, batch_size: int = 1024,
             ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """HR/NDCG@ks of ``score_fn`` on ``split``; batches are padded to ``batch_size`` so shapes stay fixed."""
    return hit_ndcg(split_ranks(score_fn, split, n_rows, batch_size), ks)


def split_ranks(score_fn: ScoreFn, split: EvalSplit, n_rows: int, batch_size: int = 1024) -> np.ndarray:
    """int32 [U] rank of each user's target among all unseen items (see ``target_ranks``)."""
    n = len(split)
    bs = min(batch_size, max(n, 1))
    bounds = np.searchsorted(split.seen_user, np.arange(n + 1))  # seen pairs are grouped by user
    ranks = []
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        hist = np.zeros((bs, split.history.shape[1]), np.int32)
        hist[: stop - start] = split.history[start:stop]
        target = np.zeros(bs, np.int32)
        target[: stop - start] = split.target[start:stop]
        seen = np.zeros((bs, n_rows), bool)
        lo, hi = bounds[start], bounds[stop]
        seen[split.seen_user[lo:hi] - start, split.seen_item[lo:hi]] = True
        r = target_ranks(score_fn(hist), jnp.asarray(target), jnp.asarray(seen))
        ranks.append(np.asarray(r)[: stop - start])
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int32)


def popularity_score_fn(item_counts: np.ndarray) -> ScoreFn:
    """Scores every user by training-interaction counts (int [N+1]); the padding column is -inf."""
    base = np.asarray(item_counts, np.float32).copy()
    base[PAD] = -np.inf
    base_j = jnp.asarray(base)

    def score(hist: np.ndarray) -> jax.Array:
        return jnp.broadcast_to(base_j, (hist.shape[0], base_j.shape[0]))

    return score
