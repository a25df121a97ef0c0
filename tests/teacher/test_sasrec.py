from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reclm_jax.teacher.config import SASRecConfig
from reclm_jax.teacher.sasrec import SASRec


def test_parameter_count_matches_the_original_movie_teacher():
    # the original's sub_movie SASRec: n_items 18730 including [PAD] -> 2,664,064 parameters
    model = nnx.eval_shape(lambda: SASRec(18729, SASRecConfig(), nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == 2_664_064


def _small():
    return SASRec(20, SASRecConfig(dim=16, num_heads=2, inner_dim=32, window=5), nnx.Rngs(0))


def test_padding_is_inert_and_never_scored():
    m = _small()
    h = jnp.array([[0, 0, 3, 4, 5]], jnp.int32)
    before = m(h)
    assert np.isneginf(np.asarray(before)[0, 0]) and np.isfinite(np.asarray(before)[0, 1:]).all()
    # whatever the pad row holds, it does not reach the output
    m.item_emb.embedding[...] = m.item_emb.embedding[...].at[0].set(5.0)
    np.testing.assert_allclose(np.asarray(m(h))[0, 1:], np.asarray(before)[0, 1:], rtol=1e-5)


def test_causal_mask_hides_future_positions():
    m = _small()
    h1 = jnp.array([[1, 2, 3, 4, 5]], jnp.int32)
    h2 = jnp.array([[1, 2, 3, 4, 9]], jnp.int32)
    a, b = m.hidden_states(h1), m.hidden_states(h2)
    np.testing.assert_allclose(np.asarray(a[:, :4]), np.asarray(b[:, :4]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(a[:, 4]), np.asarray(b[:, 4]))
    # the user state is the last position
    np.testing.assert_allclose(np.asarray(m.user_state(h1)), np.asarray(a[:, -1]), rtol=1e-6)


def test_dropout_only_in_training_mode():
    m = SASRec(20, SASRecConfig(dim=16, num_heads=2, inner_dim=32, window=5, dropout=0.5), nnx.Rngs(0))
    h = jnp.array([[0, 1, 2, 3, 4]], jnp.int32)
    np.testing.assert_array_equal(np.asarray(m(h)), np.asarray(m(h)))
    t1 = m(h, deterministic=False, rngs=nnx.Rngs(dropout=1))
    t2 = m(h, deterministic=False, rngs=nnx.Rngs(dropout=2))
    assert not np.allclose(np.asarray(t1)[:, 1:], np.asarray(t2)[:, 1:])
