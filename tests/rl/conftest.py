"""Ragged token-axis batches for the RL math tests: action spans at any offset, of any length (0 and 1 included)."""

from __future__ import annotations

import numpy as np
import pytest


def _mask(starts, lengths, t):
    mask = np.zeros((len(starts), t), bool)
    for b, (s, n) in enumerate(zip(starts, lengths)):
        mask[b, s:s + n] = True
    return mask


@pytest.fixture
def ragged():
    """``make(seed, b=6, t=11) -> (rng, mask)``: rows with a prompt prefix, a response and right padding; row 1
    has no action token, row 2 exactly one, row 0 fills the row to its end."""

    def make(seed: int = 0, b: int = 6, t: int = 11):
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, t // 2, size=b)
        lengths = np.array([rng.integers(1, t - s + 1) for s in starts])
        starts[0], lengths[0] = 2, t - 2
        lengths[1] = 0
        if b > 2:
            lengths[2] = 1
        return rng, _mask(starts, lengths, t)

    return make


@pytest.fixture
def left_padded():
    """``make(seed, b, t) -> (rng, mask)``: the original's layout, every action span ends at the last position."""

    def make(seed: int = 0, b: int = 4, t: int = 9):
        rng = np.random.default_rng(seed)
        lengths = rng.integers(1, t - 1, size=b)
        return rng, _mask(t - lengths, lengths, t)

    return make
