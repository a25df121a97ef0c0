"""Per-sample randomness from (seed, epoch, index) only.

Every sample owns a numpy ``Generator`` (PCG64) seeded by ``SeedSequence([seed, epoch, index])``: the same
sample comes out in any order, any process and any batch, and the next epoch draws fresh samples. The original
shared one global ``random`` across 512 threads, so its samples could not be reproduced.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, index])))


def choice(rng: np.random.Generator, seq: Sequence[T]) -> T:
    """Uniform element of a non-empty sequence."""
    return seq[int(rng.integers(len(seq)))]


def uniform_int(rng: np.random.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (both ends included)."""
    return int(rng.integers(low, high + 1))


def shuffled(rng: np.random.Generator, seq: Sequence[T]) -> list[T]:
    out = list(seq)
    for i in range(len(out) - 1, 0, -1):  # Fisher-Yates; cheaper than rng.permutation for short lists
        j = int(rng.integers(i + 1))
        out[i], out[j] = out[j], out[i]
    return out


def choices_excluding(rng: np.random.Generator, population: Sequence[T], k: int, exclude: set) -> list[T]:
    """``k`` draws *with replacement* from ``population`` minus ``exclude`` (the original's ``random.choices``
    over a set difference), by rejection so no set difference is built."""
    out: list[T] = []
    n = len(population)
    if k > 0 and len(exclude) >= n and all(p in exclude for p in population):
        raise ValueError("nothing left to draw from")
    while len(out) < k:
        for j in rng.integers(n, size=2 * (k - len(out)) + 2):
            x = population[int(j)]
            if x not in exclude:
                out.append(x)
                if len(out) == k:
                    break
    return out


def sample_excluding(rng: np.random.Generator, population: Sequence[T], k: int, exclude: set) -> list[T]:
    """``k`` distinct draws *without* replacement from ``population`` minus ``exclude`` (fewer if it runs out)."""
    n = len(population)
    if k <= 0:
        return []
    if 4 * (k + len(exclude)) >= n:  # small population: filter then partial shuffle
        pool = [p for p in population if p not in exclude]
        return shuffled(rng, pool)[:k] if len(pool) <= k else [pool[int(j)] for j in rng.permutation(len(pool))[:k]]
    out: list[T] = []
    seen = set(exclude)
    while len(out) < k:
        x = population[int(rng.integers(n))]
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
