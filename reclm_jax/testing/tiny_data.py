"""A tiny synthetic dataset in the RecLM-gen raw format, built deterministically from a seed.

Items have unique movie-like titles ("Silent River (1987)") and one or two of four genres; each user's sequence
mostly walks the catalogue with a user-specific stride, so a sequential model has something to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reclm_jax.datasets.raw import write_raw

GENRES = ("Action", "Comedy", "Drama", "Horror")
_ADJ = ("Silent", "Golden", "Broken", "Hidden", "Last", "Crimson", "Frozen", "Wild", "Secret", "Lonely",
        "Electric", "Midnight")
_NOUN = ("River", "Empire", "Garden", "Promise", "Signal", "Harbor", "Machine", "Summer", "Kingdom", "Witness",
         "Journey", "Shadow")


def tiny_dataset(seed: int = 0, n_users: int = 40, n_items: int = 60, min_len: int = 5, max_len: int = 20,
                 n_candidates: int = 20) -> dict:
    """The four raw objects: ``{"category": ..., "meta": ..., "sequential": ..., "ranking_candidate": ...}``.

    Ids are strings: items "1".."n_items", users "u1".."u<n_users>".
    """
    if n_items > len(_ADJ) * len(_NOUN):
        raise ValueError(f"n_items must be <= {len(_ADJ) * len(_NOUN)}")
    rng = np.random.default_rng(seed)
    items = [str(i + 1) for i in range(n_items)]
    pairs = [(a, n) for a in _ADJ for n in _NOUN]
    order = rng.permutation(len(pairs))[:n_items]
    meta, category = {}, {g: [] for g in GENRES}
    for item, k in zip(items, order):
        year = 1950 + int(rng.integers(0, 60))
        genres = [GENRES[int(item) % len(GENRES)]]
        if rng.random() < 0.3:
            genres.append(GENRES[(int(item) + 1 + int(rng.integers(0, 3))) % len(GENRES)])
        title = f"{pairs[k][0]} {pairs[k][1]} ({year})"
        meta[item] = {"title": title, "genres": genres}
        for g in genres:
            category[g].append(item)
    sequential = {}
    for u in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        stride = 1 + u % 3
        start = int(rng.integers(0, n_items))
        seq, cur = [], start
        while len(seq) < length:
            if rng.random() < 0.1:
                cur = int(rng.integers(0, n_items))
            if items[cur] not in seq:
                seq.append(items[cur])
            cur = (cur + stride) % n_items
        sequential[f"u{u + 1}"] = seq
    ranking = {}
    for user, seq in sequential.items():
        pool = [i for i in items if i not in seq]
        ranking[user] = [pool[j] for j in rng.permutation(len(pool))[:n_candidates]]
    return {"category": category, "meta": meta, "sequential": sequential, "ranking_candidate": ranking}


def write_tiny_dataset(out_dir: str | Path, seed: int = 0, **kwargs) -> Path:
    """Writes ``tiny_dataset(seed, **kwargs)`` as the four pickles in ``out_dir``."""
    d = tiny_dataset(seed, **kwargs)
    return write_raw(out_dir, d["category"], d["meta"], d["sequential"], d["ranking_candidate"])
