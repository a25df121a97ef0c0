"""KL penalty, whitening and GAE against NumPy loops on ragged batches, and against the original's algorithm."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.rl.advantages import (AdvantageConfig, RunningMoments, Whitening, WhiteningState, gae,
                                     kl_per_token, penalized_rewards, ppo_advantages, sequence_kl, whiten)

TOL = dict(rtol=1e-5, atol=1e-5)


# ---- NumPy references -------------------------------------------------------------------------------------------

def np_kl(logp, ref, mask, estimator):
    out = np.zeros(logp.shape)
    for b, t in zip(*np.nonzero(mask)):
        d = float(logp[b, t]) - float(ref[b, t])
        out[b, t] = {"k1": d, "k2": 0.5 * d * d, "k3": np.exp(-d) - 1 + d}[estimator]
    return out


def np_whiten(values, mask, shift_mean, eps=1e-8):
    """One scope: Bessel variance over the masked values, the constant-scope rule of the docstring."""
    x = values[mask].astype(np.float64)
    out = np.zeros(values.shape)
    if x.size < 2 or x.max() == x.min():
        out[mask] = 0.0 if shift_mean else x
        return out
    var = x.var(ddof=1)
    out[mask] = ((x - x.mean()) if shift_mean else x) / np.sqrt(var + eps)
    return out


def np_gae(rewards, values, mask, gamma, lam):
    """Row by row over the action tokens only, from the last one backwards."""
    adv = np.zeros(rewards.shape)
    for b in range(rewards.shape[0]):
        next_v = next_a = 0.0
        for t in reversed(np.nonzero(mask[b])[0]):
            delta = rewards[b, t] + gamma * next_v - values[b, t]
            next_a = delta + gamma * lam * next_a
            next_v = values[b, t]
            adv[b, t] = next_a
    return adv, (adv + values) * mask


def np_gae_closed_form(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} over the row's action tokens (an independent formula)."""
    adv = np.zeros(rewards.shape)
    for b in range(rewards.shape[0]):
        idx = np.nonzero(mask[b])[0]
        v = np.append(values[b, idx], 0.0)
        delta = rewards[b, idx] + gamma * v[1:] - v[:-1]
        for i, t in enumerate(idx):
            adv[b, t] = sum((gamma * lam) ** l * delta[i + l] for l in range(len(idx) - i))
    return adv


def original_compute_adv(values, rewards, mask, gamma, lam):
    """NumPy port of the original's ``compute_adv`` GAE loop (left-padded rows: the last G positions)."""
    g = int(mask.sum(1).max())
    last, out = 0.0, []
    for step in range(1, g + 1):
        next_v = values[:, -step + 1] if step > 1 else 0.0
        delta = rewards[:, -step] + gamma * next_v - values[:, -step]
        last = delta + gamma * lam * last
        out.append(last)
    adv = np.pad(np.stack(out[::-1], 1), ((0, 0), (rewards.shape[1] - g, 0)))
    return adv, (adv + values) * mask


# ---- KL and penalised rewards -----------------------------------------------------------------------------------

@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_match_numpy(ragged, estimator):
    rng, mask = ragged(1)
    logp, ref = -rng.random(mask.shape) * 3, -rng.random(mask.shape) * 3
    logp[~mask] = -np.inf  # garbage off the mask must not leak
    got = kl_per_token(jnp.asarray(logp, jnp.float32), jnp.asarray(ref, jnp.float32), jnp.asarray(mask),
                       estimator)
    np.testing.assert_allclose(np.asarray(got), np_kl(logp, ref, mask, estimator), **TOL)


def test_k3_is_nonnegative_and_zero_at_equal_policies():
    logp = jnp.array([[-1.0, -2.0, -0.5]])
    mask = jnp.ones((1, 3), bool)
    assert float(jnp.abs(kl_per_token(logp, logp, mask, "k3")).max()) == 0.0
    far = kl_per_token(logp, logp + jnp.array([[3.0, -3.0, 100.0]]), mask, "k3")
    assert np.all(np.asarray(far) > 0) and np.all(np.isfinite(np.asarray(far)))


def test_penalized_rewards_and_sequence_kl(ragged):
    rng, mask = ragged(2)
    scores, logp, ref = rng.normal(size=mask.shape), -rng.random(mask.shape), -rng.random(mask.shape)
    rewards, kl = penalized_rewards(jnp.asarray(scores), jnp.asarray(logp), jnp.asarray(ref), jnp.asarray(mask),
                                    jnp.float32(0.3))
    expect_kl = (logp - ref) * mask
    np.testing.assert_allclose(np.asarray(kl), expect_kl, **TOL)
    np.testing.assert_allclose(np.asarray(rewards), (scores - 0.3 * expect_kl) * mask, **TOL)
    np.testing.assert_allclose(np.asarray(sequence_kl(kl, jnp.asarray(mask))), expect_kl.sum(1), **TOL)
    assert float(sequence_kl(kl, jnp.asarray(mask))[1]) == 0.0  # the row without actions


# ---- whitening --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift_mean", [False, True])
def test_whiten_batch_scope_matches_numpy(ragged, shift_mean):
    rng, mask = ragged(3)
    values = rng.normal(2.0, 3.0, size=mask.shape)
    cfg = Whitening("batch", shift_mean=shift_mean)
    got, moments = whiten(jnp.asarray(values, jnp.float32), jnp.asarray(mask), cfg)
    np.testing.assert_allclose(np.asarray(got), np_whiten(values, mask, shift_mean), **TOL)
    assert moments is None


def test_whiten_rows_scope_whitens_each_block_alone(ragged):
    rng, mask = ragged(4, b=6)
    values = rng.normal(size=mask.shape)
    values[3:] *= 50.0  # a block with another scale must not change the first block's result
    got, _ = whiten(jnp.asarray(values, jnp.float32), jnp.asarray(mask), Whitening("rows", rows=3))
    expect = np.concatenate([np_whiten(values[:3], mask[:3], True), np_whiten(values[3:], mask[3:], True)])
    np.testing.assert_allclose(np.asarray(got), expect, **TOL)
    with pytest.raises(ValueError, match="multiple of 4"):
        whiten(jnp.asarray(values), jnp.asarray(mask), Whitening("rows", rows=4))


def test_whiten_running_scope_uses_every_batch_so_far(ragged):
    cfg = Whitening("running", shift_mean=False)
    moments, seen = RunningMoments.zeros(), []
    step = jax.jit(functools.partial(whiten, cfg=cfg))
    for seed in range(3):
        rng, mask = ragged(10 + seed)
        values = rng.normal(seed, 1 + seed, size=mask.shape)
        got, moments = step(jnp.asarray(values, jnp.float32), jnp.asarray(mask), moments=moments)
        seen.append(values[mask])
        allv = np.concatenate(seen)
        np.testing.assert_allclose(np.asarray(got)[mask], values[mask] / np.sqrt(allv.var(ddof=1) + 1e-8), **TOL)
        assert int(moments.count) == allv.size
        np.testing.assert_allclose(float(moments.mean), allv.mean(), **TOL)
        np.testing.assert_allclose(float(moments.m2), ((allv - allv.mean()) ** 2).sum(), rtol=1e-4)
    with pytest.raises(ValueError, match="RunningMoments"):
        whiten(jnp.zeros((1, 2)), jnp.ones((1, 2), bool), cfg)


@pytest.mark.parametrize("scope", ["batch", "running"])
def test_whiten_constant_or_single_token_scope_is_not_blown_up(scope):
    # The original multiplies a zero-variance scope by rsqrt(1e-8) = 1e4 (and divides by n - 1 = 0 for one token).
    mask = jnp.array([[True, True, True, False], [False, True, True, True]])
    values = jnp.full((2, 4), 0.9, jnp.float32)
    assert float(values[mask].sum() / 6) != float(values[0, 0])  # the float mean is off: the range test decides
    state = RunningMoments.zeros() if scope == "running" else None
    scaled, _ = whiten(values, mask, Whitening(scope, shift_mean=False), state)
    centred, _ = whiten(values, mask, Whitening(scope, shift_mean=True), state)
    np.testing.assert_array_equal(np.asarray(scaled), np.where(np.asarray(mask), 0.9, 0.0).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(centred), np.zeros((2, 4), np.float32))
    one = jnp.array([[False, True, False, False]])
    got, _ = whiten(jnp.full((1, 4), 3.0), one, Whitening(scope, shift_mean=False), state)
    np.testing.assert_array_equal(np.asarray(got), [[0.0, 3.0, 0.0, 0.0]])


def test_whiten_all_masked_and_none_scope():
    values = jnp.arange(6.0).reshape(2, 3)
    none = jnp.zeros((2, 3), bool)
    for scope in ("batch", "rows", "none"):
        got, _ = whiten(values, none, Whitening(scope, rows=1))
        np.testing.assert_array_equal(np.asarray(got), np.zeros((2, 3)))
    mask = jnp.array([[True, False, True], [True, True, False]])
    got, _ = whiten(values, mask, Whitening("none"))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(values) * np.asarray(mask))


# ---- GAE --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma,lam", [(0.99, 1.0), (0.9, 0.95), (1.0, 0.0)])
def test_gae_matches_numpy_loop_on_ragged_rows(ragged, gamma, lam):
    rng, mask = ragged(5, b=7, t=13)
    rewards, values = rng.normal(size=mask.shape), rng.normal(size=mask.shape)
    values[~mask] = 1e6  # values off the mask are never read
    adv, ret = jax.jit(gae)(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.bfloat16).astype(jnp.float32),
                            jnp.asarray(mask), gamma, lam)
    v32 = np.asarray(jnp.asarray(values, jnp.bfloat16).astype(jnp.float32), np.float64)
    expect_adv, expect_ret = np_gae(rewards, v32, mask, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), expect_adv, **TOL)
    np.testing.assert_allclose(np.asarray(ret), np.where(mask, expect_ret, 0.0), **TOL)
    np.testing.assert_allclose(np.asarray(adv), np_gae_closed_form(rewards, v32, mask, gamma, lam), **TOL)
    assert not np.asarray(adv)[1].any() and not np.asarray(ret)[1].any()  # the row without actions
    t = np.nonzero(mask[2])[0][0]  # a length-1 response: A = r - V, return = r
    np.testing.assert_allclose(float(adv[2, t]), rewards[2, t] - v32[2, t], **TOL)
    np.testing.assert_allclose(float(ret[2, t]), rewards[2, t], **TOL)


def test_gae_skips_masked_tokens_inside_a_response():
    # A hole in the mask (a token that is not an action) is stepped over: its neighbours chain directly.
    rng = np.random.default_rng(9)
    mask = rng.random((5, 12)) < 0.6
    rewards, values = rng.normal(size=mask.shape), rng.normal(size=mask.shape)
    adv, ret = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), 0.95, 0.9)
    expect_adv, expect_ret = np_gae(rewards, values, mask, 0.95, 0.9)
    np.testing.assert_allclose(np.asarray(adv), expect_adv, **TOL)
    np.testing.assert_allclose(np.asarray(ret), expect_ret, **TOL)
    np.testing.assert_allclose(np.asarray(adv), np_gae_closed_form(rewards, values, mask, 0.95, 0.9), **TOL)


def test_gae_equals_the_originals_loop_on_its_left_padded_layout(left_padded):
    rng, mask = left_padded(6, b=16, t=12)
    rewards = rng.normal(size=mask.shape) * mask  # the original's rewards are 0 off the action span
    values = rng.normal(size=mask.shape)
    adv, ret = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), 0.99, 1.0)
    orig_adv, orig_ret = original_compute_adv(values, rewards, mask, 0.99, 1.0)
    np.testing.assert_allclose(np.asarray(adv), orig_adv * mask, **TOL)
    np.testing.assert_allclose(np.asarray(ret), orig_ret, **TOL)


def test_gae_of_right_padding_equals_left_padding(ragged):
    # The same responses, laid out left- or right-padded, get the same advantages.
    rng, mask = ragged(7)
    rewards, values = rng.normal(size=mask.shape), rng.normal(size=mask.shape)
    adv, _ = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), 0.9, 0.8)
    t = mask.shape[1]
    shift = [t - (np.nonzero(m)[0].max() + 1) if m.any() else 0 for m in mask]
    roll = lambda x: np.stack([np.roll(x[b], shift[b]) for b in range(len(x))])  # noqa: E731
    adv_left, _ = gae(jnp.asarray(roll(rewards)), jnp.asarray(roll(values)), jnp.asarray(roll(mask)), 0.9, 0.8)
    np.testing.assert_allclose(np.asarray(adv_left), roll(np.asarray(adv)), **TOL)


# ---- the whole pipeline -----------------------------------------------------------------------------------------

def test_ppo_advantages_equals_the_numpy_pipeline(ragged):
    rng, mask = ragged(8, b=8, t=10)
    scores, values = rng.normal(size=mask.shape), rng.normal(size=mask.shape)
    logp, ref = -rng.random(mask.shape) * 2, -rng.random(mask.shape) * 2
    cfg = AdvantageConfig(gamma=0.99, lam=0.95, reward_whitening=Whitening("rows", rows=4, shift_mean=False))
    fn = jax.jit(functools.partial(ppo_advantages, cfg=cfg))
    out, state = fn(*(jnp.asarray(x, jnp.float32) for x in (scores, values, logp, ref)), jnp.asarray(mask),
                    jnp.float32(0.3), state=WhiteningState.zeros())
    kl = (logp - ref) * mask
    r = (scores - 0.3 * kl) * mask
    r = np.concatenate([np_whiten(r[:4], mask[:4], False), np_whiten(r[4:], mask[4:], False)])
    adv, ret = np_gae(r, values, mask, 0.99, 0.95)
    np.testing.assert_allclose(np.asarray(out.kl), kl, **TOL)
    np.testing.assert_allclose(np.asarray(out.rewards), r, **TOL)
    np.testing.assert_allclose(np.asarray(out.returns), ret, **TOL)
    np.testing.assert_allclose(np.asarray(out.advantages), np_whiten(adv, mask, True), **TOL)
    assert int(state.rewards.count) == 0  # no running scope: the moments stay untouched


def test_config_validation():
    with pytest.raises(ValueError, match="scope"):
        Whitening("global")
    with pytest.raises(ValueError, match="estimator"):
        AdvantageConfig(kl_estimator="k4")
