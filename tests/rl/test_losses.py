"""PPO's losses and the normalisation weights against NumPy loops, gradients, and the clip boundaries."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.rl.losses import PPOLossConfig, ppo_loss
from reclm_jax.rl.masking import normaliser, to_token_axis, token_weights

TOL = dict(rtol=1e-5, atol=1e-6)


def np_ppo(lp_new, lp_old, adv, v, v_old, ret, ent, mask, cfg):
    """The loss and metrics as the original computes them per sequence (``sequence``) or over all tokens."""
    hi = cfg.clip_ratio if cfg.clip_ratio_high is None else cfg.clip_ratio_high
    rows = []
    for b in range(mask.shape[0]):
        terms = []
        for t in np.nonzero(mask[b])[0]:
            lr = lp_new[b, t] - lp_old[b, t]
            r = np.exp(lr)
            a = adv[b, t]
            pg1, pg2 = -a * r, -a * min(max(r, 1 - cfg.clip_ratio), 1 + hi)
            v_c = min(max(v[b, t], v_old[b, t] - cfg.value_clip), v_old[b, t] + cfg.value_clip)
            e1, e2 = (v[b, t] - ret[b, t]) ** 2, (v_c - ret[b, t]) ** 2
            terms.append(dict(pg_loss=max(pg1, pg2), value_loss=0.5 * max(e1, e2), entropy=ent[b, t],
                              policy_kl=-lr, approx_kl=0.5 * lr * lr, clip_frac=float(pg2 > pg1),
                              value_clip_frac=float(e2 > e1), ratio=r))
        rows.append(terms)
    if cfg.normalisation == "sequence":
        means = [{k: np.mean([d[k] for d in terms]) for k in terms[0]} for terms in rows if terms]
        out = {k: np.mean([m[k] for m in means]) for k in means[0]}
    else:
        flat = [d for terms in rows for d in terms]
        out = {k: np.mean([d[k] for d in flat]) for k in flat[0]}
    out["loss"] = out["pg_loss"] + cfg.vf_coef * out["value_loss"] - cfg.entropy_coef * out["entropy"]
    return out


def batch(rng, mask):
    b, t = mask.shape
    lp_old = -rng.random((b, t)) * 3
    lp_new = lp_old + rng.normal(0, 0.3, (b, t))  # ratios on both sides of the clip range
    v_old = rng.normal(size=(b, t))
    v = v_old + rng.normal(0, 0.3, (b, t))
    arrays = dict(logp_new=lp_new, logp_old=lp_old, advantages=rng.normal(size=(b, t)), values=v,
                  values_old=v_old, returns=rng.normal(size=(b, t)), entropy=rng.random((b, t)) * 2)
    for x in arrays.values():
        x[~mask] = np.nan if x is not lp_old else -np.inf  # garbage off the mask must never leak
    return arrays


def as_jnp(arrays):
    return {k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
@pytest.mark.parametrize("clip_high", [None, 0.28])
def test_ppo_loss_and_metrics_match_numpy(ragged, normalisation, clip_high):
    rng, mask = ragged(0, b=7, t=12)
    arrays = batch(rng, mask)
    cfg = PPOLossConfig(normalisation=normalisation, clip_ratio_high=clip_high, entropy_coef=0.05, vf_coef=0.3)
    fn = jax.jit(functools.partial(ppo_loss, cfg=cfg))
    loss, metrics = fn(**as_jnp(arrays), mask=jnp.asarray(mask))
    expect = np_ppo(*(arrays[k] for k in ("logp_new", "logp_old", "advantages", "values", "values_old", "returns",
                                          "entropy")), mask, cfg)
    assert set(metrics) == set(expect)
    for k, v in expect.items():
        np.testing.assert_allclose(float(metrics[k]), v, err_msg=k, **TOL)
    assert float(loss) == float(metrics["loss"])
    assert 0 < float(metrics["clip_frac"]) < 1 and 0 < float(metrics["value_clip_frac"]) < 1


def test_sequence_normalisation_weighs_every_sequence_the_same():
    mask = np.array([[1, 0, 0, 0], [1, 1, 1, 1]], bool)
    w = np.asarray(token_weights(jnp.asarray(mask), "sequence"))
    np.testing.assert_allclose(w, [[0.5, 0, 0, 0], [0.125] * 4])
    np.testing.assert_allclose(np.asarray(token_weights(jnp.asarray(mask), "token")), mask / 5.0)
    assert float(normaliser(jnp.asarray(mask), "sequence")) == 2 and float(normaliser(jnp.asarray(mask), "token")) == 5


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_micro_batches_sum_to_the_mini_batch(ragged, normalisation):
    rng, mask = ragged(1, b=6, t=9)
    arrays = as_jnp(batch(rng, mask))
    cfg = PPOLossConfig(normalisation=normalisation)
    jmask = jnp.asarray(mask)

    @jax.jit
    def loss_and_grad(new, v, rest, m, den):
        f = lambda new, v: ppo_loss(new, values=v, mask=m, cfg=cfg, denominator=den, **rest)[0]  # noqa: E731
        return jax.value_and_grad(f, argnums=(0, 1))(new, v)

    def run(rows, den):
        rest = {k: x[rows] for k, x in arrays.items() if k not in ("logp_new", "values")}
        return loss_and_grad(arrays["logp_new"][rows], arrays["values"][rows], rest, jmask[rows], den)

    den = normaliser(jmask, normalisation)
    whole, g_whole = run(slice(None), den)
    (l0, g0), (l1, g1) = run(slice(0, 2), den), run(slice(2, 6), den)
    np.testing.assert_allclose(float(l0 + l1), float(whole), **TOL)
    for i in range(2):
        np.testing.assert_allclose(np.concatenate([g0[i], g1[i]]), np.asarray(g_whole[i]), **TOL)
    # None = this batch's own denominator: the whole batch's loss is the same either way.
    own, _ = jax.jit(lambda: ppo_loss(**arrays, mask=jmask, cfg=cfg))()
    np.testing.assert_allclose(float(own), float(whole), **TOL)


def test_gradients_match_the_analytic_ones(ragged):
    rng, mask = ragged(2, b=6, t=10)
    arrays = batch(rng, mask)
    cfg = PPOLossConfig(entropy_coef=0.05, vf_coef=0.3)
    j = as_jnp(arrays)

    def f(new, v, ent):
        return ppo_loss(new, j["logp_old"], j["advantages"], v, j["values_old"], j["returns"], jnp.asarray(mask),
                        cfg, entropy=ent)[0]

    g_new, g_v, g_ent = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(j["logp_new"], j["values"], j["entropy"])
    w = np.asarray(token_weights(jnp.asarray(mask), "sequence"))
    a, lr = arrays["advantages"], arrays["logp_new"] - arrays["logp_old"]
    r = np.exp(np.where(mask, lr, 0.0))
    # d/dlogp of max(-A r, -A clip(r)): -A r where the unclipped term is taken, 0 where the clip holds it.
    clipped_wins = -a * np.clip(r, 0.8, 1.2) > -a * r
    expect_new = np.where(mask & ~clipped_wins, -a * r * w, 0.0)
    v, v_old, ret = arrays["values"], arrays["values_old"], arrays["returns"]
    v_c = np.clip(v, v_old - 0.2, v_old + 0.2)
    clip_err_wins = (v_c - ret) ** 2 > (v - ret) ** 2
    inside = np.abs(v - v_old) < 0.2
    dv = np.where(clip_err_wins, np.where(inside, v_c - ret, 0.0), v - ret)
    expect_v = np.where(mask, 0.3 * dv * w, 0.0)
    np.testing.assert_allclose(np.asarray(g_new), expect_new, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_v), expect_v, rtol=1e-5, atol=1e-7)
    # The entropy of token t (the distribution that predicted it) gets the bonus exactly where t is an action.
    np.testing.assert_allclose(np.asarray(g_ent), -0.05 * w, rtol=1e-6, atol=1e-8)


def test_no_nan_at_clip_boundaries_and_far_off_policy():
    cfg = PPOLossConfig()
    lp_old = jnp.zeros((1, 8), jnp.float32)
    lp_new = jnp.array([[np.log(1.2), np.log(0.8), 0.0, 1e3, -1e3, 30.0, -30.0, 0.0]], jnp.float32)
    adv = jnp.array([[1.0, -1.0, 0.0, -2.0, 2.0, -1.0, 1.0, 1.0]])
    v_old = jnp.zeros((1, 8))
    v = jnp.array([[0.2, -0.2, 0.0, 1e4, -1e4, 0.2, -0.2, 0.0]])
    ret = jnp.array([[0.2, -0.2, 0.0, 1.0, -1.0, 5.0, -5.0, 0.0]])
    mask = jnp.array([[True] * 7 + [False]])

    def f(new, values):
        return ppo_loss(new, lp_old, adv, values, v_old, ret, mask, cfg)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(lp_new, v)
    assert np.isfinite(float(loss)) and all(np.isfinite(float(m)) for m in metrics.values())
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    assert float(grads[0][0, 7]) == 0.0 and float(grads[1][0, 7]) == 0.0


def test_all_masked_batch_gives_zero_loss_and_gradient():
    z = jnp.zeros((2, 5), jnp.float32)
    mask = jnp.zeros((2, 5), bool)
    f = lambda new: ppo_loss(new, z, z + 1.0, z, z, z, mask, PPOLossConfig(), entropy=z)  # noqa: E731
    (loss, metrics), g = jax.jit(jax.value_and_grad(f, has_aux=True))(z)
    assert float(loss) == 0.0 and all(float(m) == 0.0 for m in metrics.values())
    assert not np.asarray(g).any()


def test_unclipped_value_loss():
    mask = jnp.ones((1, 2), bool)
    v, ret = jnp.array([[1.0, 3.0]]), jnp.array([[0.0, 0.0]])
    _, m = ppo_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1, 2)), v, jnp.zeros((1, 2)), ret, mask,
                    PPOLossConfig(value_clip=None))
    assert float(m["value_loss"]) == pytest.approx(0.5 * (1 + 9) / 2) and float(m["value_clip_frac"]) == 0.0


def test_to_token_axis_moves_next_token_stats_onto_their_tokens():
    # token_stats: position t is about token t+1 -> the token axis: position t is about token t.
    nxt = jnp.array([[10.0, 11.0, 12.0]])
    np.testing.assert_array_equal(np.asarray(to_token_axis(nxt)), [[0.0, 10.0, 11.0, 12.0]])
    assert to_token_axis(nxt.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_config_validation():
    with pytest.raises(ValueError, match="normalisation"):
        PPOLossConfig(normalisation="batch")
    with pytest.raises(ValueError):
        PPOLossConfig(value_clip=-0.1)
