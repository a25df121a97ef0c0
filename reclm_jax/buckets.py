"""Shape buckets: pad a size up to one of a few values so jitted functions compile once per bucket, not once
per size (batch sizes, prompt/output lengths, top-k widths, candidate slots)."""

from __future__ import annotations

from typing import Sequence

from reclm_jax.errors import UserError


def bucket(n: int, buckets: Sequence[int] | None = None, minimum: int = 1) -> int:
    """The bucket of size ``n``: the smallest of ``buckets`` >= n (listed in any order); without ``buckets``,
    the smallest ``minimum * 2**j`` >= n (the next power of two when ``minimum`` is one).

    Raises ``UserError`` when ``n`` exceeds the largest of ``buckets``.
    """
    if buckets:
        fits = [b for b in buckets if b >= n]
        if not fits:
            raise UserError(f"length {n} exceeds the largest bucket {max(buckets)}")
        return min(fits)
    b = max(minimum, 1)
    while b < n:
        b *= 2
    return b
