"""The SlotDecoder's cache moves: rows copied in at a slot offset, and the live window shifted down, for the
per-layer and the stacked (scan_layers) layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.models.kv_cache import KVCache, put_rows, shift_slots


def _cache(rng, stacked, b, s, layers=2, k=2, h=4, dtype=jnp.bfloat16):
    def buf():
        return jnp.asarray(rng.normal(size=(layers, b, k, s, h)), dtype)

    keys, values = buf(), buf()
    valid = jnp.asarray(rng.random((b, s)) < 0.5)
    if not stacked:
        keys, values = tuple(keys), tuple(values)
    return KVCache(keys, values, valid, jnp.int32(s))


def _stack(x):
    return np.asarray(jnp.stack(x) if isinstance(x, tuple) else x, np.float32)


@pytest.mark.parametrize("stacked", [False, True], ids=["per-layer", "stacked"])
def test_put_rows_writes_only_the_rows_slots_and_resets_their_valid(stacked):
    rng = np.random.default_rng(0)
    big, small = _cache(rng, stacked, 4, 12), _cache(rng, stacked, 3, 5)
    rows, start = jnp.asarray([2, 0, 0], jnp.int32), 6  # the last row repeats the one before (admission padding)
    axis = 1 if stacked else 0

    def dup(x):  # row 2 := row 1
        return x.at[(slice(None),) * axis + (2,)].set(x[(slice(None),) * axis + (1,)])

    small = small._replace(keys=jax.tree.map(dup, small.keys), values=jax.tree.map(dup, small.values),
                           valid=small.valid.at[2].set(small.valid[1]))
    out = put_rows(big, small, rows, jnp.int32(start))
    for name in ("keys", "values"):
        got, old, new = (_stack(getattr(c, name)) for c in (out, big, small))
        want = old.copy()
        want[:, 2, :, start:start + 5] = new[:, 0]
        want[:, 0, :, start:start + 5] = new[:, 1]
        np.testing.assert_array_equal(got, want)
    valid = np.asarray(big.valid).copy()
    for r, i in ((2, 0), (0, 1)):
        valid[r] = False
        valid[r, start:start + 5] = np.asarray(small.valid[i])
    np.testing.assert_array_equal(np.asarray(out.valid), valid)
    assert int(out.end) == 12


@pytest.mark.parametrize("stacked", [False, True], ids=["per-layer", "stacked"])
def test_shift_slots_moves_the_window_down_and_invalidates_past_the_new_end(stacked):
    rng = np.random.default_rng(1)
    cache = _cache(rng, stacked, 3, 16)._replace(end=jnp.int32(13))
    out = shift_slots(cache, jnp.int32(5), 8)
    assert int(out.end) == 8
    for name in ("keys", "values"):
        got, old = _stack(getattr(out, name)), _stack(getattr(cache, name))
        np.testing.assert_array_equal(got[..., :8, :], old[..., 5:13, :])
        np.testing.assert_array_equal(got[..., 8:, :], old[..., 8:, :])  # untouched, and invalid now
    valid = np.asarray(out.valid)
    np.testing.assert_array_equal(valid[:, :8], np.asarray(cache.valid)[:, 5:13])
    assert not valid[:, 8:].any()
