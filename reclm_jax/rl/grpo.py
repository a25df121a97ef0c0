"""GRPO (Shao et al. 2024, DeepSeekMath §4.1): group-normalised advantages, no critic, KL to the reference in the
loss. Pure jnp. Not in the original (which has PPO only); built so users can compare on the same rewards.

Layout: G samples per prompt in consecutive rows (rows p*G .. p*G + G - 1 answer prompt p), B = P * G. Token
arrays are on the token axis of ``reclm_jax.rl`` ([B, T], ``mask`` the action mask).

Advantages (``grpo_advantages``):

- Outcome: the sequence reward R_i (the list reward, x10 included) normalised within its group,
  ``A_i = (R_i - mean_g) / (std_g + eps)`` with std_g Bessel-corrected (as TRL's GRPOTrainer) and eps 1e-4, given
  to every action token of the row. ``scale_by_std=False`` only centres (Dr. GRPO). A group whose rewards are all
  equal (or G = 1) gives exactly 0, never NaN: it carries no preference.
- Items (optional, ``item_weight > 0``): the per-item rewards as DeepSeekMath's process supervision. Each item
  reward sits on the token that ends its line (``item_mask``); all of a group's item rewards are normalised
  together the same way, and token t gets the sum of its row's normalised item rewards at tokens >= t (the
  items it still contributes to). ``A_t = A_i + item_weight * A_items_t``; DeepSeekMath uses one or the other,
  adding them is our choice so the list reward is never dropped.

Loss (``grpo_loss``), per token with the clipped surrogate of ``losses.clipped_surrogate``:

    loss = sum_t w_t * (pg_t + kl_coef * KL_t - entropy_coef * H_t)

``KL_t``: the ``k3`` estimator of the *current* policy to the reference, ``exp(lr) - lr - 1`` with
``lr = logp_ref - logp_new`` (DeepSeekMath's, kl_coef 0.04 there), differentiated through logp_new;
``kl_estimator`` may pick ``k1``/``k2`` instead. The alternative, PPO's per-token penalty in the reward
(``advantages.penalized_rewards``), is done by setting ``kl_coef=0`` here and subtracting
``coef * advantages.sequence_kl(kl)`` from R before ``grpo_advantages``. w: ``masking.token_weights``;
``sequence`` (default) is DeepSeekMath's ``1/G sum_i 1/|o_i| sum_t``, ``token`` the DAPO / Dr. GRPO token mean.

Metrics: ``loss``, ``pg_loss``, ``kl`` (weighted mean KL_t), ``entropy``, and ``losses.policy_stats``'
``policy_kl``, ``approx_kl``, ``clip_frac``, ``ratio``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from reclm_jax.rl.advantages import check_estimator, kl_per_token
from reclm_jax.rl.losses import clipped_surrogate, policy_stats
from reclm_jax.rl.masking import check_normalisation, token_weights, weighted_sum


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """clip_ratio (+ clip_ratio_high, None = symmetric); kl_coef, kl_estimator: the KL term of the loss;
    entropy_coef; normalisation: sequence | token; scale_by_std, eps: the group normalisation; item_weight: the
    weight of the token-level item-reward advantages (0: outcome only)."""

    clip_ratio: float = 0.2
    clip_ratio_high: float | None = None
    kl_coef: float = 0.04
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    normalisation: str = "sequence"
    scale_by_std: bool = True
    eps: float = 1e-4
    item_weight: float = 0.0

    def __post_init__(self):
        check_normalisation(self.normalisation)
        check_estimator(self.kl_estimator)
        if self.clip_ratio < 0 or (self.clip_ratio_high is not None and self.clip_ratio_high < 0):
            raise ValueError("GRPO clip ranges must be >= 0")
        if self.kl_coef < 0 or self.eps <= 0:
            raise ValueError(f"GRPO needs kl_coef >= 0 and eps > 0, got {self.kl_coef}, {self.eps}")


def _normalise_groups(x: jnp.ndarray, keep: jnp.ndarray, scale_by_std: bool, eps: float) -> jnp.ndarray:
    """x, keep: [P, N] (one group per row); (x - mean) / (std + eps) over each row's kept entries, Bessel std;
    exactly 0 for a group whose kept values are all equal or fewer than 2, and off ``keep``."""
    m = keep.astype(jnp.float32)
    v = jnp.where(keep, x.astype(jnp.float32), 0.0)
    n = m.sum(-1, keepdims=True)
    mean = v.sum(-1, keepdims=True) / jnp.maximum(n, 1.0)
    var = jnp.sum(((v - mean) * m) ** 2, -1, keepdims=True) / jnp.maximum(n - 1.0, 1.0)
    high = jnp.max(jnp.where(keep, v, -jnp.inf), -1, keepdims=True)
    low = jnp.min(jnp.where(keep, v, jnp.inf), -1, keepdims=True)
    flat = (n < 2) | (high <= low)
    out = v - mean
    if scale_by_std:
        out = out / (jnp.sqrt(var) + eps)
    return jnp.where(keep & ~flat, out, 0.0)


def _groups(b: int, group_size: int) -> int:
    if group_size < 1 or b % group_size:
        raise ValueError(f"GRPO needs rows in groups of {group_size} (>= 1), got {b} rows")
    return b // group_size


def group_advantages(rewards: jnp.ndarray, group_size: int, scale_by_std: bool = True,
                     eps: float = 1e-4) -> jnp.ndarray:
    """Outcome advantages [B] float32 from sequence rewards [B] (any float dtype), groups of consecutive rows."""
    p = _groups(rewards.shape[0], group_size)
    r = rewards.reshape(p, group_size)
    return _normalise_groups(r, jnp.ones(r.shape, bool), scale_by_std, eps).reshape(-1)


def item_advantages(item_rewards: jnp.ndarray, item_mask: jnp.ndarray, mask: jnp.ndarray, group_size: int,
                    scale_by_std: bool = True, eps: float = 1e-4) -> jnp.ndarray:
    """Process-supervision advantages [B, T] float32, 0 off the mask.

    item_rewards: [B, T], each item's reward at the token ending its line; item_mask: [B, T] bool, where they
    are (only action tokens count). Normalised over the whole group, then summed from each token to the row end.
    """
    b, t = item_rewards.shape
    p = _groups(b, group_size)
    keep = item_mask.astype(bool) & mask.astype(bool)
    norm = _normalise_groups(item_rewards.reshape(p, group_size * t), keep.reshape(p, group_size * t),
                             scale_by_std, eps).reshape(b, t)
    to_go = jnp.flip(jnp.cumsum(jnp.flip(norm, -1), -1), -1)
    return jnp.where(mask.astype(bool), to_go, 0.0)


def grpo_advantages(seq_rewards: jnp.ndarray, mask: jnp.ndarray, group_size: int, cfg: GRPOConfig,
                    item_rewards: jnp.ndarray | None = None,
                    item_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """Token advantages [B, T] float32 (0 off the mask): the outcome advantage on every action token, plus
    ``item_weight`` times the item advantages when ``cfg.item_weight > 0`` (then item_rewards/item_mask needed)."""
    keep = mask.astype(bool)
    outcome = group_advantages(seq_rewards, group_size, cfg.scale_by_std, cfg.eps)
    adv = jnp.where(keep, outcome[:, None], 0.0)
    if cfg.item_weight:
        if item_rewards is None or item_mask is None:
            raise ValueError("item_weight > 0 needs item_rewards and item_mask")
        adv = adv + cfg.item_weight * item_advantages(item_rewards, item_mask, mask, group_size,
                                                      cfg.scale_by_std, cfg.eps)
    return adv


def grpo_loss(logp_new: jnp.ndarray, logp_old: jnp.ndarray, logp_ref: jnp.ndarray, advantages: jnp.ndarray,
              mask: jnp.ndarray, cfg: GRPOConfig, entropy: jnp.ndarray | None = None,
              denominator: jnp.ndarray | float | None = None) -> tuple[jnp.ndarray, dict]:
    """``(loss, metrics)``, float32 scalars; arrays [B, T] on the token axis, advantages from ``grpo_advantages``.

    logp_new carries the gradient (surrogate and KL term); logp_old: the rollout policy (equal to logp_new on
    the first step of a batch, where the ratio is 1); logp_ref: the reference. denominator as ``ppo_loss``'s.
    """
    w = token_weights(mask, cfg.normalisation, denominator)
    clip_high = cfg.clip_ratio if cfg.clip_ratio_high is None else cfg.clip_ratio_high
    pg, lr, ratio, clipped = clipped_surrogate(logp_new, logp_old, advantages, mask, cfg.clip_ratio, clip_high)
    kl = kl_per_token(logp_new, logp_ref, mask, cfg.kl_estimator)
    pg_loss, kl_mean = weighted_sum(pg, w), weighted_sum(kl, w)
    ent = jnp.zeros((), jnp.float32) if entropy is None else weighted_sum(entropy, w)
    loss = pg_loss + cfg.kl_coef * kl_mean - cfg.entropy_coef * ent
    metrics = {"loss": loss, "pg_loss": pg_loss, "kl": kl_mean, "entropy": ent}
    metrics.update(policy_stats(lr, ratio, clipped, w))
    return loss, metrics

