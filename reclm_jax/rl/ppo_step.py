"""The jitted pieces of one RL iteration after the rollout: advantages (``make_prepare``) and the update
(``make_update_step``), for PPO (actor + critic + value head) and GRPO (actor only).

Style as SFT's step: the backbone is split once into (graphdef, trainable, frozen); the update is a pure function
of (trainable, optimiser state, frozen, batch, ...) that differentiates only ``trainable`` =
``{"lora": actor [+ its lm_head copy] [+ critic] LoRA, "value_head": ...}``, donates its buffers and the optimiser
state, and pins its outputs to their input shardings, so it compiles once per batch shape.

Mini-batches: the update takes the whole rollout batch ([B, T] arrays, on the device) and the global row indices
of one mini-batch as int32 [A, b] (A micro-batches of b rows; rows are gathered inside the program) with a
``valid`` flag per entry. A mini-batch shorter than the others (B not a multiple of the mini-batch size) is filled
with invalid entries, whose action mask is cleared: they weigh nothing (``masking.token_weights``), so any B and
any mini-batch size share one program. The micro-batches run in a ``lax.scan`` and their losses use the
mini-batch's denominator, so their gradients add up to exactly the mini-batch's gradient.

The learning rate is an input (one value per iteration, the original's scheduler step per learn call) and the
optimiser is ``train.optim.adamw_direction``: ``update = -lr * direction``, AdamW exactly.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from reclm_jax.models.sharding import constrain
from reclm_jax.rl.actor_critic import ACTOR, Roles, critic_values, policy_stats
from reclm_jax.rl.advantages import WhiteningState, kl_per_token, ppo_advantages, sequence_kl
from reclm_jax.rl.config import RLConfig
from reclm_jax.rl.grpo import grpo_advantages, grpo_loss
from reclm_jax.rl.losses import ppo_loss
from reclm_jax.rl.masking import masked_mean, normaliser
from reclm_jax.rl.rollout import RolloutStats


class UpdateBatch(NamedTuple):
    """A rollout batch ready for updates; all [B, T] on the token axis (GRPO: values_old, returns are zeros)."""

    tokens: jax.Array  # int32
    attention_mask: jax.Array  # int32
    action_mask: jax.Array  # bool
    logp_old: jax.Array  # float32
    logp_ref: jax.Array  # float32
    values_old: jax.Array  # float32
    advantages: jax.Array  # float32
    returns: jax.Array  # float32


def last_action(mask: jnp.ndarray) -> jnp.ndarray:
    """bool [B, T]: the last action token of each row (rows with contiguous action spans)."""
    mask = mask.astype(bool)
    after = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    return mask & ~after


class Counter:
    """How often the jitted functions built here were traced (= compiled)."""

    def __init__(self):
        self.n = 0


def make_prepare(cfg: RLConfig, counter: Counter | None = None) -> Callable:
    """``prepare(scores, stats, action_mask, kl_coef, whitening) -> (advantages, returns, whitening, metrics)``.

    scores: float32 [B, T] per-token rewards (``Rollout.place_scores``); stats: ``RolloutStats``; kl_coef: the KL
    controller's coefficient (PPO's reward penalty; GRPO ignores it, its KL is in the loss); whitening: the
    running moments (``WhiteningState``, only the ``running`` scopes change them). metrics (float32 scalars):
    ``kl`` (mean over responses of the summed k1 KL of the rollout policy to the reference: what the adaptive
    controller observes), ``kl_token`` (its mean per action token), ``reward`` (mean per response of its summed
    token rewards), ``reward_last`` (mean reward on the last token: NR-20's list reward), ``response_length``.
    """
    counter = counter or Counter()
    g = cfg.rollout.sample_num

    def common(scores, stats, mask):
        kl = kl_per_token(stats.logp_old, stats.logp_ref, mask, "k1")
        rows = (mask.sum(-1) > 0).astype(jnp.float32)
        n_rows = jnp.maximum(rows.sum(), 1.0)
        last = last_action(mask)
        per_row = jnp.sum(jnp.where(mask, scores, 0.0), -1)
        return {"kl": jnp.sum(sequence_kl(kl, mask) * rows) / n_rows, "kl_token": masked_mean(kl, mask),
                "reward": jnp.sum(per_row * rows) / n_rows,
                "reward_last": jnp.sum(jnp.where(last, scores, 0.0)) / n_rows,
                "response_length": mask.sum() / n_rows}

    if cfg.algorithm == "ppo":
        adv_cfg = cfg.ppo.advantage_config()

        def prepare(scores, stats: RolloutStats, mask, kl_coef, whitening: WhiteningState):
            counter.n += 1
            adv, whitening = ppo_advantages(scores, stats.values, stats.logp_old, stats.logp_ref, mask, kl_coef,
                                            adv_cfg, whitening)
            metrics = common(scores, stats, mask)
            metrics["return"] = masked_mean(adv.returns, last_action(mask))
            return adv.advantages, adv.returns, whitening, metrics
    else:
        gcfg = cfg.grpo.loss_config(cfg.ppo)
        outcome = cfg.grpo.outcome

        def prepare(scores, stats: RolloutStats, mask, kl_coef, whitening: WhiteningState):
            counter.n += 1
            mask = mask.astype(bool)
            last = last_action(mask)
            if outcome == "sum":
                seq = jnp.sum(jnp.where(mask, scores, 0.0), -1)
                item, item_mask = None, None
            else:
                seq = jnp.sum(jnp.where(last, scores, 0.0), -1)
                item = jnp.where(mask & ~last, scores, 0.0)
                item_mask = item != 0  # NR-20's item rewards are never exactly 0 (rank scores > 0, penalties -1)
            adv = grpo_advantages(seq, mask, g, gcfg, item, item_mask)
            return adv, jnp.zeros_like(adv), whitening, common(scores, stats, mask)

    return jax.jit(prepare)


def make_update_step(roles: Roles, tx: optax.GradientTransformation, cfg: RLConfig, *,
                     state_shardings: Any = None, counter: Counter | None = None) -> Callable:
    """``step(trainable, opt_state, frozen, batch: UpdateBatch, rows int32 [A, b], valid bool [A, b], lr)
    -> (trainable, opt_state, metrics)``: one optimiser update on one mini-batch (module docstring).

    metrics (float32 scalars, over the mini-batch): ``loss``, ``pg_loss``, ``entropy``, ``policy_kl``,
    ``approx_kl``, ``clip_frac``, ``ratio`` and PPO's ``value_loss``, ``value_clip_frac`` or GRPO's ``kl``;
    ``grad_norm`` (before clipping); ``sequences`` (rows with action tokens). Call inside ``Runtime.activate()``.
    """
    counter = counter or Counter()
    ppo = cfg.algorithm == "ppo"
    chunk = cfg.ppo.logprob_chunk
    loss_cfg = cfg.ppo.loss_config() if ppo else cfg.grpo.loss_config(cfg.ppo)
    entropy_coef = loss_cfg.entropy_coef
    normalisation = cfg.ppo.normalisation

    def micro_loss(trainable, frozen, mb: UpdateBatch, denominator):
        model = roles.model(trainable, frozen)
        logp, ent = policy_stats(model, mb.tokens, mb.attention_mask, mb.action_mask, adapter=ACTOR, chunk=chunk,
                                 entropy=True)
        if not entropy_coef:
            ent = jax.lax.stop_gradient(ent)  # logged only: no backward pass through the softmax
        if ppo:
            values = critic_values(model, roles.value_head(trainable), mb.tokens, mb.attention_mask)
            return ppo_loss(logp, mb.logp_old, mb.advantages, values, mb.values_old, mb.returns, mb.action_mask,
                            loss_cfg, ent, denominator)
        return grpo_loss(logp, mb.logp_old, mb.logp_ref, mb.advantages, mb.action_mask, loss_cfg, ent, denominator)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(trainable, opt_state, frozen, batch: UpdateBatch, rows, valid, lr):
        counter.n += 1

        def gather(idx, ok):
            mb = UpdateBatch(*(constrain(jnp.take(x, idx, axis=0), "batch", None) for x in batch))
            return mb._replace(action_mask=mb.action_mask & ok[:, None])

        every = jnp.take(batch.action_mask, rows.reshape(-1), axis=0) & valid.reshape(-1)[:, None]
        den = normaliser(every, normalisation)

        def body(carry, xs):
            grads, metrics = carry
            (_, m), g = grad_fn(trainable, frozen, gather(*xs), den)
            return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, metrics, m)), None

        shapes = jax.eval_shape(grad_fn, trainable, frozen, gather(rows[0], valid[0]), den)
        (_, m_shape), _ = shapes
        init = (jax.tree.map(jnp.zeros_like, trainable), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape))
        (grads, metrics), _ = jax.lax.scan(body, init, (rows, valid))
        updates, opt_state = tx.update(grads, opt_state, trainable)
        lr = jnp.asarray(lr, jnp.float32)
        trainable = optax.apply_updates(trainable, jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates))
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), sequences=normaliser(every, "sequence"))
        return trainable, opt_state, metrics

    out_shardings = None if state_shardings is None else (*state_shardings, None)
    return jax.jit(step, donate_argnums=(0, 1), out_shardings=out_shardings)
