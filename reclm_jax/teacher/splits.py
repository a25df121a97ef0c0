"""Leave-two-out examples for the teacher, as integer arrays.

Per user sequence ``seq`` (time order):

* train: every position ``t`` in ``seq[:-2]`` with ``t >= 1`` is a target, its history the previous
  ``<= window`` items (the original's UniRec ``autoregressive`` history mode);
* valid: history ``seq[:-2]`` (last ``window`` used), target ``seq[-2]``;
* test:  history ``seq[:-1]`` (last ``window`` used), target ``seq[-1]``.

Item rows are ``catalogue index + 1`` (row 0 is padding). For evaluation the whole prefix before the target
is "seen" and masked out of the ranking, not just the window.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from reclm_jax.teacher.sasrec import PAD


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    history: np.ndarray  # int32 [U, window], left-padded item rows
    target: np.ndarray  # int32 [U], item rows
    seen_user: np.ndarray  # int32 [S], user index of each seen (user, item) pair
    seen_item: np.ndarray  # int32 [S], item row of each seen pair (every item before the target)

    def __len__(self) -> int:
        return len(self.target)


@dataclasses.dataclass(frozen=True)
class TeacherSplits:
    train_history: np.ndarray  # int32 [E, window]
    train_target: np.ndarray  # int32 [E]
    valid: EvalSplit
    test: EvalSplit
    item_counts: np.ndarray  # int64 [n_items + 1], interactions per item row in the training part (seq[:-2])


def left_pad(rows: Sequence[int], window: int) -> np.ndarray:
    """The last ``window`` of ``rows`` as int32 [window], left-padded with PAD."""
    out = np.full(window, PAD, np.int32)
    tail = list(rows)[-window:] if window else []
    if tail:
        out[window - len(tail):] = tail
    return out


def _eval_split(seqs: list[np.ndarray], cut: int, window: int) -> EvalSplit:
    """Target ``seq[cut]`` (cut = -2 or -1) with history ``seq[:cut]``."""
    history = np.stack([left_pad(s[:cut], window) for s in seqs]) if seqs else np.zeros((0, window), np.int32)
    target = np.array([s[cut] for s in seqs], np.int32)
    seen_user = np.concatenate([np.full(len(s) + cut, u, np.int32) for u, s in enumerate(seqs)])
    seen_item = np.concatenate([s[:cut] for s in seqs]).astype(np.int32)
    return EvalSplit(history, target, seen_user, seen_item)


def build_splits(sequential: Mapping[str, Sequence[str]], item_row: Mapping[str, int], window: int) -> TeacherSplits:
    """Builds the train/valid/test arrays from user sequences (each of length >= 3) and an item -> row map."""
    seqs = [np.array([item_row[i] for i in s], np.int32) for s in sequential.values()]
    hist, tgt = [], []
    for s in seqs:
        train = s[:-2]
        n = len(train) - 1
        if n <= 0:
            continue
        # Row j holds train[j+1-window : j+1] left-padded: a sliding window over a padded copy.
        padded = np.concatenate([np.full(window, PAD, np.int32), train])
        idx = np.arange(n)[:, None] + np.arange(1, window + 1)[None, :]  # window ending just before target j+1
        hist.append(padded[idx])
        tgt.append(train[1:])
    n_rows = max(item_row.values(), default=0) + 1
    counts = np.bincount(np.concatenate([s[:-2] for s in seqs]) if seqs else np.zeros(0, np.int64),
                         minlength=n_rows)
    return TeacherSplits(
        train_history=np.concatenate(hist) if hist else np.zeros((0, window), np.int32),
        train_target=np.concatenate(tgt) if tgt else np.zeros(0, np.int32),
        valid=_eval_split(seqs, -2, window),
        test=_eval_split(seqs, -1, window),
        item_counts=counts,
    )
