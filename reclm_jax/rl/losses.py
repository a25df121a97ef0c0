"""PPO's losses for one mini-batch: clipped ratio, clipped value, entropy bonus. Pure jnp; the model call is elsewhere.

Inputs are on the token axis (``reclm_jax.rl``), [B, T], any float dtype, computed in float32; ``mask`` is the
action mask. ``logp_new``, ``values`` (and ``entropy``) come from the current actor and critic and carry the
gradient; ``logp_old``, ``values_old``, ``advantages``, ``returns`` come from the rollout (``advantages``) and are
constants. Per-token terms (original: ``base/trainer.py::learn_PPO``, spec §10.6):

    log_ratio_t = logp_new_t - logp_old_t          (0 off the mask; clamped to +-20 inside exp only)
    ratio_t     = exp(log_ratio_t)
    pg_t        = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - clip_ratio, 1 + clip_ratio_high))
    vclip_t     = values_old_t + clip(values_t - values_old_t, -value_clip, +value_clip)
    vf_t        = 0.5 * max((values_t - R_t)^2, (vclip_t - R_t)^2)      (0.5 * (values_t - R_t)^2 unclipped)
    loss        = sum_t w_t * (pg_t + vf_coef * vf_t - entropy_coef * H_t)

with w the normalisation weights of ``masking.token_weights``: ``sequence`` (default, the original: token mean
per sequence, then the mean over sequences, audit R4) or ``token`` (one global token mean). The original ran one
unpadded sequence per micro-step; here a mini-batch of many sequences gives the same loss with ``sequence``.

Metrics (same weights, so micro-batch values sum to the mini-batch's when ``denominator`` is the mini-batch's):
``pg_loss``, ``value_loss``, ``entropy``, ``loss``; ``policy_kl`` = mean(logp_old - logp_new), the k1 estimate of
KL(old || new) that the original's early stop compares with KLT (0.05) after each PPO epoch (it used the
value of the epoch's last sequence only; what to average is the trainer's choice); ``approx_kl`` = mean(log_ratio^2) / 2
(the original's second statistic); ``clip_frac`` / ``value_clip_frac``: the share of tokens whose clipped term
is strictly the larger one (the original's definition); ``ratio``: mean ratio.

Matches the original: the 0.5 factor of the value loss, both max-of-two clips, the defaults (ratio and value
clip 0.2, which the original hard-coded while ignoring its ``--eps_clip`` / ``--value_clip`` flags; vf_coef 0.1
as VFC-0.1; entropy weight 0.01 as EW-0.01). Fixes: the entropy H_t must be that of the distribution which
predicted token t (``masking.to_token_axis``), where the original's was one position late (spec §10.6, §15.8);
the clip ranges are settings; the log-ratio clamp keeps exp finite (verl clamps the same way), so a far
off-policy token gives a finite, clipped loss instead of inf/NaN.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from reclm_jax.rl.masking import check_normalisation, token_weights, weighted_sum

_LOG_RATIO_CLAMP = 20.0


@dataclasses.dataclass(frozen=True)
class PPOLossConfig:
    """clip_ratio: the ratio clip (lower side, and upper unless clip_ratio_high); value_clip: None for an
    unclipped value loss; vf_coef: value-loss weight (VFC); entropy_coef: entropy bonus weight (EW);
    normalisation: sequence | token."""

    clip_ratio: float = 0.2
    clip_ratio_high: float | None = None
    value_clip: float | None = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.01
    normalisation: str = "sequence"

    def __post_init__(self):
        check_normalisation(self.normalisation)
        if self.clip_ratio < 0 or (self.clip_ratio_high is not None and self.clip_ratio_high < 0):
            raise ValueError("PPO clip ranges must be >= 0")
        if self.value_clip is not None and self.value_clip < 0:
            raise ValueError(f"value_clip must be >= 0 or None, got {self.value_clip}")


def log_ratio(logp_new: jnp.ndarray, logp_old: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """``logp_new - logp_old`` in float32, 0 off the mask, [B, T]."""
    d = logp_new.astype(jnp.float32) - logp_old.astype(jnp.float32)
    return jnp.where(mask.astype(bool), d, 0.0)


def clipped_surrogate(logp_new: jnp.ndarray, logp_old: jnp.ndarray, advantages: jnp.ndarray, mask: jnp.ndarray,
                      clip_low: float, clip_high: float) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray,
                                                                  jnp.ndarray]:
    """PPO's clipped ratio term per token: ``(pg [B, T], log_ratio, ratio, clipped)``.

    pg = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)); clipped (bool): the clipped term is
    strictly the larger, i.e. the token gives no gradient. All 0/False off the mask. Shared with GRPO.
    """
    lr = log_ratio(logp_new, logp_old, mask)
    ratio = jnp.exp(jnp.clip(lr, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    adv = jnp.where(mask.astype(bool), advantages.astype(jnp.float32), 0.0)
    unclipped = -adv * ratio
    clipped_term = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = jnp.maximum(unclipped, clipped_term)
    return pg, lr, ratio, (clipped_term > unclipped) & mask.astype(bool)


def clipped_value_loss(values: jnp.ndarray, values_old: jnp.ndarray, returns: jnp.ndarray, mask: jnp.ndarray,
                       value_clip: float | None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(vf [B, T], clipped)``: 0.5 * max((V - R)^2, (V_clip - R)^2) per token (unclipped when value_clip is
    None), and whether the clipped error is strictly the larger. 0/False off the mask."""
    keep = mask.astype(bool)
    v = jnp.where(keep, values.astype(jnp.float32), 0.0)
    v_old = jnp.where(keep, values_old.astype(jnp.float32), 0.0)
    ret = jnp.where(keep, returns.astype(jnp.float32), 0.0)
    err = jnp.square(v - ret)
    if value_clip is None:
        return 0.5 * err, jnp.zeros_like(keep)
    v_clip = v_old + jnp.clip(v - v_old, -value_clip, value_clip)
    err_clip = jnp.square(v_clip - ret)
    return 0.5 * jnp.maximum(err, err_clip), (err_clip > err) & keep


def policy_stats(lr: jnp.ndarray, ratio: jnp.ndarray, clipped: jnp.ndarray, w: jnp.ndarray) -> dict:
    """The early-stop and clipping metrics from ``clipped_surrogate``'s outputs and weights w."""
    return {"policy_kl": weighted_sum(-lr, w), "approx_kl": weighted_sum(0.5 * lr * lr, w),
            "clip_frac": weighted_sum(clipped.astype(jnp.float32), w), "ratio": weighted_sum(ratio, w)}


def ppo_loss(logp_new: jnp.ndarray, logp_old: jnp.ndarray, advantages: jnp.ndarray, values: jnp.ndarray,
             values_old: jnp.ndarray, returns: jnp.ndarray, mask: jnp.ndarray, cfg: PPOLossConfig,
             entropy: jnp.ndarray | None = None,
             denominator: jnp.ndarray | float | None = None) -> tuple[jnp.ndarray, dict]:
    """``(loss, metrics)`` of one (micro-)batch: float32 scalar and a dict of float32 scalars (module docstring).

    All arrays [B, T] on the token axis. entropy: H of the distribution that predicted token t (None: no bonus,
    reported as 0). denominator: the mini-batch's ``masking.normaliser`` when this is one of its micro-batches
    (None: this batch's own). Differentiable w.r.t. logp_new, values and entropy.
    """
    w = token_weights(mask, cfg.normalisation, denominator)
    clip_high = cfg.clip_ratio if cfg.clip_ratio_high is None else cfg.clip_ratio_high
    pg, lr, ratio, clipped = clipped_surrogate(logp_new, logp_old, advantages, mask, cfg.clip_ratio, clip_high)
    vf, v_clipped = clipped_value_loss(values, values_old, returns, mask, cfg.value_clip)
    pg_loss, value_loss = weighted_sum(pg, w), weighted_sum(vf, w)
    ent = jnp.zeros((), jnp.float32) if entropy is None else weighted_sum(entropy, w)
    loss = pg_loss + cfg.vf_coef * value_loss - cfg.entropy_coef * ent
    metrics = {"loss": loss, "pg_loss": pg_loss, "value_loss": value_loss, "entropy": ent,
               "value_clip_frac": weighted_sum(v_clipped.astype(jnp.float32), w)}
    metrics.update(policy_stats(lr, ratio, clipped, w))
    return loss, metrics
