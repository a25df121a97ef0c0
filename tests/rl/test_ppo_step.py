"""The jitted RL pieces on their own: advantages (``make_prepare``) against the pure math, and the update step's
mini-batches: micro-batching and filler rows change nothing, AdamW with the LR as an input is optax's AdamW."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reclm_jax.config import load_config
from reclm_jax.rl.actor_critic import ACTOR, CRITIC, Roles, new_value_head
from reclm_jax.rl.advantages import WhiteningState, ppo_advantages
from reclm_jax.rl.config import RLConfig
from reclm_jax.rl.grpo import grpo_advantages
from reclm_jax.rl.ppo_step import UpdateBatch, last_action, make_prepare, make_update_step
from reclm_jax.rl.rollout import RolloutStats
from reclm_jax.train.backbone import load_backbone
from reclm_jax.train.optim import OptimConfig, adamw_direction, make_optimizer
from reclm_jax.train.runtime import local_runtime

CONFIG = str(Path(__file__).parents[2] / "configs" / "rl_tiny.yaml")


def _cfg(*extra) -> RLConfig:
    return load_config(RLConfig, CONFIG, ["model.path=unused", *extra])


def _batch(rng, b=6, t=12, prompt=4):
    lengths = rng.integers(1, t - prompt + 1, size=b)
    mask = np.zeros((b, t), bool)
    for i, n in enumerate(lengths):
        mask[i, prompt:prompt + n] = True
    f = lambda: rng.normal(size=(b, t)).astype(np.float32) * mask  # noqa: E731
    return mask, f


def test_prepare_ppo_is_ppo_advantages():
    cfg = _cfg()
    rng = np.random.default_rng(0)
    mask, f = _batch(rng)
    scores, stats = f(), RolloutStats(f() - 2.0, f() - 2.0, f())
    adv, ret, _, metrics = make_prepare(cfg)(scores, stats, mask, 0.3, WhiteningState.zeros())
    want, _ = ppo_advantages(scores, stats.values, stats.logp_old, stats.logp_ref, mask, 0.3,
                             cfg.ppo.advantage_config())
    np.testing.assert_allclose(adv, want.advantages, atol=1e-6)
    np.testing.assert_allclose(ret, want.returns, atol=1e-6)
    d = (stats.logp_old - stats.logp_ref) * mask
    assert float(metrics["kl"]) == pytest.approx(float(d.sum(-1).mean()), abs=1e-5)  # every row has actions
    assert float(metrics["reward"]) == pytest.approx(float(scores.sum(-1).mean()), abs=1e-5)
    last = last_action(jnp.asarray(mask))
    assert np.array_equal(np.asarray(last).sum(-1), np.ones(6)) and not np.any(np.asarray(last) & ~mask)


@pytest.mark.parametrize("outcome, item_weight", [("sum", 0.0), ("last", 0.0), ("last", 0.5)])
def test_prepare_grpo_reads_the_sequence_reward(outcome, item_weight):
    cfg = _cfg("algorithm=grpo", "rollout.sample_num=3", f"grpo.outcome={outcome}", f"grpo.item_weight={item_weight}")
    rng = np.random.default_rng(1)
    mask, f = _batch(rng)
    scores = f()
    stats = RolloutStats(f(), f(), np.zeros_like(scores))
    adv, ret, _, _ = make_prepare(cfg)(scores, stats, mask, 0.3, WhiteningState.zeros())
    last = np.asarray(last_action(jnp.asarray(mask)))
    gcfg = cfg.grpo.loss_config(cfg.ppo)
    if outcome == "sum":
        want = grpo_advantages(scores.sum(-1), mask, 3, gcfg, np.zeros_like(scores), np.zeros_like(mask))
    else:
        items = np.where(mask & ~last, scores, 0.0)
        want = grpo_advantages((scores * last).sum(-1), mask, 3, gcfg, items, items != 0)
    np.testing.assert_allclose(adv, want, atol=1e-6)
    assert not np.asarray(ret).any()


def test_adamw_direction_times_lr_is_adamw():
    cfg = OptimConfig(lr=0.1, weight_decay=0.1, warmup_steps=0, lr_end=0.1, clip_grad_norm=0.5)
    params = {"w": jnp.ones((3, 2)), "b": jnp.arange(2.0)}
    grads = {"w": jnp.full((3, 2), 0.3), "b": jnp.array([1.0, -2.0])}
    ref_tx, tx = make_optimizer(cfg, 10), adamw_direction(cfg)
    p_ref, s_ref, p, s = params, ref_tx.init(params), params, tx.init(params)
    for _ in range(3):
        u, s_ref = ref_tx.update(grads, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        u, s = tx.update(grads, s, p)
        p = optax.apply_updates(p, jax.tree.map(lambda x: -0.1 * x, u))
    for k in params:
        np.testing.assert_allclose(p[k], p_ref[k], rtol=1e-6)


@pytest.fixture(scope="module")
def actor_critic(tiny_llama_dir):
    cfg = _cfg(f"model.path={tiny_llama_dir}")
    rt = local_runtime()
    bb = load_backbone(cfg.model, {ACTOR: cfg.adapters.actor, CRITIC: cfg.adapters.critic}, rt,
                       full_tune={ACTOR: ("lm_head",)}, progress=False)
    head_def, head = new_value_head(bb.model().config.hidden_size, 64, 0)
    trainable = {"lora": bb.trainable, "value_head": head}
    # Non-zero critic/actor B so every parameter has a gradient from the first step.
    trainable = jax.tree.map(lambda x: x + 0.01 if x.ndim == 2 and x.shape[0] == 4 else x, trainable)
    rng = np.random.default_rng(0)
    b, t = 8, 40
    tokens = rng.integers(4, 400, (b, t)).astype(np.int32)
    attn = np.ones((b, t), np.int32)
    attn[:, :3] = 0
    mask = np.zeros((b, t), bool)
    for i in range(b):
        mask[i, 20:20 + 4 + 2 * i] = True
    fl = lambda s=1.0: (rng.normal(size=(b, t)) * s).astype(np.float32) * mask  # noqa: E731
    batch = UpdateBatch(tokens, attn, mask, fl(0.5) - 6.0, fl(0.5) - 6.0, fl(), fl(), fl())
    return cfg, Roles(bb.graphdef, head_def), trainable, bb.frozen, batch


def _update(actor_critic, micro, rows, valid):
    cfg, roles, trainable, frozen, batch = actor_critic
    cfg = load_config(RLConfig, CONFIG, ["model.path=unused", "optim.clip_grad_norm=0"])
    tx = adamw_direction(cfg.optim)
    step = make_update_step(roles, tx, cfg)
    copy = jax.tree.map(jnp.array, trainable)  # the step donates its inputs
    new, _, metrics = step(copy, tx.init(copy), frozen, batch, jnp.asarray(rows, jnp.int32), jnp.asarray(valid),
                           np.float32(1e-3))
    return jax.device_get(new), jax.device_get(metrics)


def test_micro_batches_and_filler_rows_give_the_mini_batch_update(actor_critic):
    order = np.array([3, 0, 7, 5, 1, 6, 2, 4])
    whole, m_whole = _update(actor_critic, 8, order.reshape(1, 8), np.ones((1, 8), bool))
    split, m_split = _update(actor_critic, 4, order.reshape(2, 4), np.ones((2, 4), bool))
    filled = np.concatenate([order, [0, 0, 0, 0]]).reshape(3, 4)
    ok = np.arange(12).reshape(3, 4) < 8
    padded, m_pad = _update(actor_critic, 4, filled, ok)
    for other, m in ((split, m_split), (padded, m_pad)):
        for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(other)):
            np.testing.assert_allclose(a, b, atol=1e-6)
        for k in ("loss", "pg_loss", "value_loss", "entropy", "grad_norm"):
            assert float(m[k]) == pytest.approx(float(m_whole[k]), abs=1e-5), k
    assert float(m_whole["sequences"]) == 8.0 and float(m_pad["sequences"]) == 8.0
    init = jax.device_get(actor_critic[2])
    moved = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(init))]
    assert min(moved) > 0  # every trainable leaf (actor, its lm_head, critic, value head) got a gradient
