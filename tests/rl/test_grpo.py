"""GRPO's group advantages, item (process) advantages and loss against NumPy loops."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.rl.grpo import GRPOConfig, group_advantages, grpo_advantages, grpo_loss, item_advantages
from reclm_jax.rl.masking import token_weights

TOL = dict(rtol=1e-5, atol=1e-6)


def np_normalise(x, scale_by_std=True, eps=1e-4):
    x = np.asarray(x, np.float64)
    if x.size < 2 or x.max() == x.min():
        return np.zeros_like(x)
    out = x - x.mean()
    return out / (x.std(ddof=1) + eps) if scale_by_std else out


def test_group_advantages_match_numpy():
    rng = np.random.default_rng(0)
    r = rng.normal(size=12)
    for scale in (True, False):
        got = np.asarray(group_advantages(jnp.asarray(r, jnp.float32), 4, scale_by_std=scale))
        expect = np.concatenate([np_normalise(r[i:i + 4], scale) for i in range(0, 12, 4)])
        np.testing.assert_allclose(got, expect, **TOL)


def test_identical_rewards_in_a_group_give_exactly_zero():
    # Values whose float mean over 3 is not exactly themselves: (r - mean) / (std + eps) would be rounding noise
    # (about 3e-4 here), not zero.
    a, c = 0.40973526, 6.0663576
    r = jnp.array([a, a, a, 1.0, 2.0, 4.0, c, c, c], jnp.float32)
    got = np.asarray(jax.jit(group_advantages, static_argnums=1)(r, 3))
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[:3], 0.0)
    np.testing.assert_array_equal(got[6:], 0.0)
    np.testing.assert_allclose(got[3:6], np_normalise([1.0, 2.0, 4.0]), **TOL)
    np.testing.assert_array_equal(np.asarray(group_advantages(jnp.array([1.0, 2.0]), 1)), [0.0, 0.0])  # G = 1
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(r, 4)


def test_item_advantages_match_numpy(ragged):
    rng, mask = ragged(3, b=6, t=10)
    items = mask & (rng.random(mask.shape) < 0.4)
    item_r = rng.normal(size=mask.shape)
    item_r[~items] = np.nan  # only the marked tokens are read
    got = np.asarray(item_advantages(jnp.asarray(item_r, jnp.float32), jnp.asarray(items), jnp.asarray(mask), 3))
    expect = np.zeros(mask.shape)
    for g in range(2):
        rows = slice(3 * g, 3 * g + 3)
        norm = np.zeros((3, mask.shape[1]))
        norm[items[rows]] = np_normalise(item_r[rows][items[rows]])
        for b in range(3):
            for t in np.nonzero(mask[rows][b])[0]:
                expect[3 * g + b, t] = norm[b, t:].sum()
    np.testing.assert_allclose(got, expect, **TOL)


def test_grpo_advantages_add_outcome_and_items(ragged):
    rng, mask = ragged(4, b=4, t=8)
    seq = rng.normal(size=4)
    items = mask & (rng.random(mask.shape) < 0.5)
    item_r = rng.normal(size=mask.shape)
    cfg = GRPOConfig(item_weight=0.5)
    got = grpo_advantages(jnp.asarray(seq), jnp.asarray(mask), 2, cfg, jnp.asarray(item_r), jnp.asarray(items))
    outcome = np.asarray(group_advantages(jnp.asarray(seq), 2))[:, None] * mask
    proc = np.asarray(item_advantages(jnp.asarray(item_r), jnp.asarray(items), jnp.asarray(mask), 2))
    np.testing.assert_allclose(np.asarray(got), outcome + 0.5 * proc, **TOL)
    only = grpo_advantages(jnp.asarray(seq), jnp.asarray(mask), 2, GRPOConfig())
    np.testing.assert_allclose(np.asarray(only), outcome, **TOL)
    with pytest.raises(ValueError, match="item_rewards"):
        grpo_advantages(jnp.asarray(seq), jnp.asarray(mask), 2, cfg)


def np_grpo(lp_new, lp_old, lp_ref, adv, mask, cfg):
    rows = []
    for b in range(mask.shape[0]):
        terms = []
        for t in np.nonzero(mask[b])[0]:
            r = np.exp(lp_new[b, t] - lp_old[b, t])
            a = adv[b, t]
            pg = max(-a * r, -a * min(max(r, 1 - cfg.clip_ratio), 1 + cfg.clip_ratio))
            q = np.exp(lp_ref[b, t] - lp_new[b, t])
            terms.append((pg, q - np.log(q) - 1))  # k3 = pi_ref/pi - log(pi_ref/pi) - 1
        rows.append(terms)
    if cfg.normalisation == "sequence":
        per = [np.mean(t, axis=0) for t in rows if t]
        pg, kl = np.mean(per, axis=0)
    else:
        pg, kl = np.mean([x for t in rows for x in t], axis=0)
    return pg + cfg.kl_coef * kl, pg, kl


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_grpo_loss_matches_numpy(ragged, normalisation):
    rng, mask = ragged(5, b=6, t=9)
    lp_old = -rng.random(mask.shape) * 2
    lp_new = lp_old + rng.normal(0, 0.3, mask.shape)
    lp_ref = lp_old + rng.normal(0, 0.5, mask.shape)
    adv = np.asarray(grpo_advantages(jnp.asarray(rng.normal(size=6)), jnp.asarray(mask), 3, GRPOConfig()))
    cfg = GRPOConfig(normalisation=normalisation, kl_coef=0.1)
    fn = jax.jit(functools.partial(grpo_loss, cfg=cfg))
    loss, m = fn(*(jnp.asarray(x, jnp.float32) for x in (lp_new, lp_old, lp_ref, adv)), jnp.asarray(mask))
    e_loss, e_pg, e_kl = np_grpo(lp_new, lp_old, lp_ref, adv, mask, cfg)
    np.testing.assert_allclose([float(loss), float(m["pg_loss"]), float(m["kl"])], [e_loss, e_pg, e_kl], **TOL)
    assert {"policy_kl", "approx_kl", "clip_frac", "ratio", "entropy"} <= set(m)


def test_grpo_gradient_on_policy_step():
    # First step on a batch (logp_new = logp_old): d/dlogp_t = -A_t w_t + kl_coef w_t (1 - pi_ref/pi).
    rng = np.random.default_rng(6)
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    lp = -rng.random((4, 4)) * 2
    ref = lp + rng.normal(0, 0.5, (4, 4))
    adv = np.asarray(grpo_advantages(jnp.array([1.0, 3.0, 0.0, 0.0]), jnp.asarray(mask), 2, GRPOConfig()))
    cfg = GRPOConfig(kl_coef=0.2)
    fixed = [jnp.asarray(x) for x in (lp, ref, adv, mask)]
    g = np.asarray(jax.jit(jax.grad(lambda new: grpo_loss(new, *fixed, cfg)[0]))(jnp.asarray(lp, jnp.float32)))
    w = np.asarray(token_weights(jnp.asarray(mask), "sequence"))
    expect = np.where(mask, w * (-adv + 0.2 * (1 - np.exp(ref - lp))), 0.0)
    np.testing.assert_allclose(g, expect, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(adv[2:], 0.0)  # the identical-reward group: only the KL term pushes it


def test_config_validation():
    with pytest.raises(ValueError, match="estimator"):
        GRPOConfig(kl_estimator="k5")
    with pytest.raises(ValueError):
        GRPOConfig(eps=0.0)
