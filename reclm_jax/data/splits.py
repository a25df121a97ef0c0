"""Leave-two-out user splits and validation-user slices (the original's ``get_sub_sequential`` and
``compute_datum_info``).

- train: on ``seq[:-2]`` draw a target position ``t ~ U{1..len-1}`` and a start ``s ~ U{max(0,t-W)..t-1}``;
  history ``seq[s:t]``, target ``seq[t]`` (W = ``max_item_length`` = 10).
- val: history ``seq[-W-2:-2]``, target ``seq[-2]``; test: history ``seq[-W-1:-1]``, target ``seq[-1]``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MAX_ITEM_LENGTH = 10
# A train window needs two items before the held-out pair (one history item and one target).
MIN_TRAIN_SEQUENCE_LENGTH = 4

# RL validation users: a fixed slice per task family (RLPersonalCategoryRate* all share slice 3).
RL_VAL_SLICES = {"RLSeqRec": 0, "RL+PersonalControlRec": 1, "RL-PersonalControlRec": 2,
                 "RLPersonalCategoryRate": 3, "RLSeqRanking": 4, "RLItemCount": 5}


def train_window(seq: Sequence[str], rng: np.random.Generator,
                 max_item_length: int = MAX_ITEM_LENGTH) -> tuple[list[str], str, int]:
    """(history, target, target position) drawn from ``seq[:-2]``; needs ``len(seq) >= 4``."""
    visible = seq[:-2]
    t = int(rng.integers(1, len(visible)))
    s = int(rng.integers(max(0, t - max_item_length), t))
    return list(visible[s:t]), visible[t], t


def val_window(seq: Sequence[str], max_item_length: int = MAX_ITEM_LENGTH) -> tuple[list[str], str, int]:
    return list(seq[-max_item_length - 2:-2]), seq[-2], len(seq) - 2


def test_window(seq: Sequence[str], max_item_length: int = MAX_ITEM_LENGTH) -> tuple[list[str], str, int]:
    return list(seq[-max_item_length - 1:-1]), seq[-1], len(seq) - 1


def window(mode: str, seq: Sequence[str], rng: np.random.Generator | None,
           max_item_length: int = MAX_ITEM_LENGTH) -> tuple[list[str], str, int]:
    if mode == "train":
        assert rng is not None
        return train_window(seq, rng, max_item_length)
    if mode == "val":
        return val_window(seq, max_item_length)
    return test_window(seq, max_item_length)


def held_out(seq: Sequence[str]) -> tuple[str, ...]:
    """The user's val and test targets (never shown in train samples)."""
    return tuple(seq[-2:])


def validation_users(users: Sequence[str], slice_index: int, val_num: int) -> list[str]:
    """Users ``[val_num*j, val_num*(j+1))`` in dataset order: the original gives each val task its own users."""
    return list(users[val_num * slice_index: val_num * (slice_index + 1)])


def rl_val_slice(task: str) -> int:
    family = task.split("_")[0]
    if family.startswith("RLPersonalCategoryRate"):
        family = "RLPersonalCategoryRate"
    return RL_VAL_SLICES[family]
