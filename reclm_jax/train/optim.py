"""The trainers' optimiser: AdamW with decay on >= 2-D parameters, linear warm-up then polynomial decay, clipping.

Matches the original (HF ``get_polynomial_decay_schedule_with_warmup`` with power 2 and ``lr_end`` 1e-7, AdamW
betas (0.9, 0.999), eps 1e-5, clip-by-global-norm) with optax pieces.

SFT steps the schedule with every optimiser update (``make_optimizer``). PPO steps it once per iteration, before
all the updates of that iteration (the original's ``lr_scheduler.step()`` per learn call, audit R4), so it takes
``adamw_direction`` and multiplies by ``-lr_schedule(...)(iteration)`` itself: the same AdamW update with the
learning rate as a traced input.
"""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    lr_end: float = 1e-7
    power: float = 2.0
    warmup_ratio: float = 0.0125
    warmup_steps: int = -1  # >= 0: this many warm-up steps, overriding warmup_ratio (PPO: 50 iterations)
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-5
    clip_grad_norm: float = 1.0  # <= 0 disables clipping


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear 0 -> lr over ``int(total_steps * warmup_ratio)`` steps (``warmup_steps`` when >= 0), then
    (lr - lr_end) * (1 - t)^power + lr_end."""
    total_steps = max(int(total_steps), 1)
    warmup = min(cfg.warmup_steps, total_steps) if cfg.warmup_steps >= 0 else int(total_steps * cfg.warmup_ratio)
    decay_steps = max(total_steps - warmup, 1)
    decay = optax.polynomial_schedule(init_value=cfg.lr, end_value=cfg.lr_end, power=cfg.power,
                                      transition_steps=decay_steps)
    if warmup == 0:
        return decay
    # HF's warm-up starts at 0 on step 0 and reaches lr at step `warmup`.
    ramp = optax.linear_schedule(init_value=0.0, end_value=cfg.lr, transition_steps=warmup)
    return optax.join_schedules([ramp, decay], boundaries=[warmup])


def decay_mask(params) -> object:
    """True for parameters with ndim >= 2 (weight decay applies), False for vectors and scalars."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW (+ optional global-norm clipping) on the schedule above; state is created in the params' dtype."""
    parts = []
    if cfg.clip_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    parts.append(optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def adamw_direction(cfg: OptimConfig) -> optax.GradientTransformation:
    """``make_optimizer`` without the learning rate: (clipping,) Adam moments, decoupled weight decay. Its update
    times ``-lr`` is exactly AdamW's at that lr (optax's ``adamw`` is these two plus the lr scaling)."""
    parts = []
    if cfg.clip_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
