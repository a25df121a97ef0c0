"""Shape buckets."""

from __future__ import annotations

import pytest

from reclm_jax.buckets import bucket
from reclm_jax.errors import UserError


def test_listed_buckets_take_the_smallest_fit_in_any_order():
    assert [bucket(n, (64, 16, 256)) for n in (0, 1, 16, 17, 64, 65, 256)] == [16, 16, 16, 64, 64, 256, 256]
    with pytest.raises(UserError, match="257 exceeds the largest bucket 256"):
        bucket(257, (16, 256))


def test_doubling_from_the_minimum():
    assert [bucket(n) for n in (0, 1, 2, 3, 5, 1024, 1025)] == [1, 1, 2, 4, 8, 1024, 2048]
    assert [bucket(n, minimum=16) for n in (1, 10, 16, 17, 33)] == [16, 16, 16, 32, 64]
    assert bucket(0, minimum=8) == 8 and bucket(13, minimum=12) == 24
