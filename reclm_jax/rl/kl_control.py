"""The coefficient of PPO's per-token KL penalty: fixed (the original) or adaptive (Ziegler et al. 2019).

The original's settings, as the paper's run name spells them (spec §10.8):

- ``KLC-0.3`` (``--kl_coef``) is a **fixed** coefficient: rewards are ``score - 0.3 * kl`` for the whole run. The
  original has no adaptive controller, so no KL target and no horizon. ``kind="fixed", coef=0.3`` reproduces it.
- ``KLT-0.05`` (``--policy_kl_threshold``) is **not** a KL target: it stops the PPO epochs of one update early when
  the KL between the updated and the rollout policy passes 0.05 (``losses``' ``policy_kl`` metric). It has
  nothing to do with this controller and belongs to the trainer's PPO loop.

The adaptive controller (Ziegler et al., "Fine-Tuning Language Models from Human Preferences", §2.2; the same
rule as their ``lm-human-preferences`` code and TRL's ``AdaptiveKLController``) steers the KL of the policy to the
reference, per response, toward ``target``:

    e     = clip(KL_observed / target - 1, -max_error, +max_error)      (max_error 0.2)
    coef <- coef * (1 + e * n_steps / horizon)

``KL_observed``: the batch mean of ``advantages.sequence_kl`` (per response, the sum over its tokens of the
rollout policy's k1 KL to the reference), measured on the rollout batch the update trains on; ``n_steps``: the
number of responses in it (Ziegler's K_beta = n_steps / horizon). The coefficient grows while the policy is
further than ``target`` from the reference and shrinks while it is closer, by at most 0.2 * n_steps / horizon
per update. The fixed controller ignores updates.

State: ``KLControlState(coef)``, one float32 scalar array, a pytree that the trainer checkpoints and restores with
the rest of the run. ``update_kl_control`` is pure jnp (jittable, ``cfg`` static).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

KINDS = ("fixed", "adaptive")


@dataclasses.dataclass(frozen=True)
class KLControlConfig:
    """kind: fixed | adaptive; coef: the coefficient (adaptive: its start); target: adaptive KL per response
    (nats); horizon: adaptive time constant in responses; max_error: the clip of the proportional error."""

    kind: str = "fixed"
    coef: float = 0.3
    target: float = 6.0
    horizon: float = 10000.0
    max_error: float = 0.2

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown KL controller {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {self.coef}")
        if self.kind == "adaptive" and (self.target <= 0 or self.horizon <= 0 or self.max_error < 0):
            raise ValueError("the adaptive KL controller needs target > 0, horizon > 0 and max_error >= 0, got "
                             f"target={self.target}, horizon={self.horizon}, max_error={self.max_error}")


class KLControlState(NamedTuple):
    """coef: float32 scalar, the coefficient the next rollout batch's rewards use."""

    coef: jax.Array


def init_kl_control(cfg: KLControlConfig) -> KLControlState:
    return KLControlState(jnp.asarray(cfg.coef, jnp.float32))


def proportional_error(cfg: KLControlConfig, observed_kl: jnp.ndarray | float) -> jnp.ndarray:
    """``clip(KL / target - 1, -max_error, max_error)`` as float32 (the adaptive rule's e)."""
    e = jnp.asarray(observed_kl, jnp.float32) / cfg.target - 1.0
    return jnp.clip(e, -cfg.max_error, cfg.max_error)


def update_kl_control(cfg: KLControlConfig, state: KLControlState, observed_kl: jnp.ndarray | float,
                      n_steps: jnp.ndarray | int) -> KLControlState:
    """The state after one update that saw ``observed_kl`` (mean KL per response) over ``n_steps`` responses."""
    if cfg.kind == "fixed":
        return state
    e = proportional_error(cfg, observed_kl)
    mult = 1.0 + e * jnp.asarray(n_steps, jnp.float32) / cfg.horizon
    return KLControlState(state.coef * mult)
