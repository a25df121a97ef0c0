"""PPO's per-token rewards and advantages: KL penalty to the reference, whitening, GAE. Pure jnp, jittable.

Arrays are on the token axis (``reclm_jax.rl``): [B, T], index t about token t, ``mask[b, t]`` true where token t
is an action (a response token). Any layout works: left- or right-padded rows, ragged lengths, rows with no
action at all. Everything is computed in float32 (the original mixed bf16 values with fp32 rewards: audit R7).
Configs are frozen dataclasses, static under ``jax.jit``; ``kl_coef`` and running statistics are traced.

Formulas, in the original's order (``base/trainer.py::PPO_process_batch``, ``compute_adv``; spec §10.5):

1. KL to the reference per action token, from the rollout policy's log-probs (``kl_per_token``):
   ``d_t = logp_old[t] - logp_ref[t]``; estimator ``k1`` = d_t (the original's), ``k2`` = d_t^2 / 2,
   ``k3`` = exp(-d_t) - 1 + d_t (Schulman's unbiased, always >= 0 estimator; d clamped to +-20 first).
2. Penalised rewards (``penalized_rewards``): ``r_t = (score_t - kl_coef * kl_t) * mask_t``; ``score`` holds the
   reward model's values (item rewards on their line ends, the list reward on the last token).
3. Reward whitening (``whiten`` with ``shift_mean=False``, the original's ``--whiten_reward``):
   ``r_t * rsqrt(var + 1e-8)``, var the Bessel-corrected variance of r over the action tokens of the scope, no
   mean shift.
4. GAE backwards over each row's action tokens (``gae``):
   ``delta_t = r_t + gamma * V_next - V_t``, ``A_t = delta_t + gamma * lam * A_next``, where "next" is the row's
   next action token; after the last one ``V_next = A_next = 0`` (the response ended with EOS: terminal).
   ``returns_t = (A_t + V_t) * mask_t``. On contiguous action spans this is exactly the original's loop over the
   last G positions; masked positions are skipped rather than computed and discarded, so rows of any length and
   any number of rows are right (the original was only right for <= 16 rows: audit R1).
5. Advantage whitening (``whiten`` with ``shift_mean=True``): ``(A - mean) * rsqrt(var + 1e-8) * mask``.

Whitening scope (``Whitening.scope``), explicit because the original's was an accident of its 16-row chunks (R1):
``batch`` all rows given (one rollout batch: the paper, when it holds the 8 prompts x 2 samples of one process);
``rows`` consecutive blocks of ``rows`` rows each whitened on their own (``rows=16`` reproduces the paper's
per-process chunks in a larger global batch); ``running`` every action token seen so far (``RunningMoments``,
carried and checkpointed by the trainer); ``none``. Deliberate fix: a scope whose values are all equal (a
constant batch, or one token) is not scaled, and with the mean shift becomes exactly 0. The original multiplied
such values by rsqrt(1e-8) = 1e4, or divided by zero in Bessel's n - 1.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")
SCOPES = ("none", "batch", "rows", "running")
_LOG_RATIO_CLAMP = 20.0


def check_estimator(estimator: str) -> None:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")


def kl_per_token(logp: jnp.ndarray, logp_ref: jnp.ndarray, mask: jnp.ndarray,
                 estimator: str = "k1") -> jnp.ndarray:
    """Per-token KL estimate of the policy (``logp``) against the reference, [B, T] float32, 0 off the mask.

    logp, logp_ref: [B, T] log-probabilities of the sampled tokens (any float dtype); mask: [B, T] bool.
    Differentiable w.r.t. ``logp`` (GRPO puts ``k3`` in its loss); the log-ratio is zeroed off the mask before
    any exp, so padding never produces inf or NaN gradients.
    """
    check_estimator(estimator)
    keep = mask.astype(bool)
    d = jnp.where(keep, logp.astype(jnp.float32) - logp_ref.astype(jnp.float32), 0.0)
    if estimator == "k1":
        kl = d
    elif estimator == "k2":
        kl = 0.5 * d * d
    else:
        d = jnp.clip(d, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        kl = jnp.exp(-d) - 1.0 + d
    return jnp.where(keep, kl, 0.0)


def penalized_rewards(scores: jnp.ndarray, logp_old: jnp.ndarray, logp_ref: jnp.ndarray, mask: jnp.ndarray,
                      kl_coef: jnp.ndarray | float, estimator: str = "k1") -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(rewards, kl)``, both [B, T] float32 and 0 off the mask: ``rewards = (scores - kl_coef * kl) * mask``.

    scores: [B, T] per-token rewards from the reward model (values off the mask are dropped); kl_coef: scalar
    (the KL controller's current coefficient, traced).
    """
    kl = kl_per_token(logp_old, logp_ref, mask, estimator)
    keep = mask.astype(bool)
    rewards = jnp.where(keep, scores.astype(jnp.float32) - jnp.asarray(kl_coef, jnp.float32) * kl, 0.0)
    return rewards, kl


def sequence_kl(kl: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Per-row KL (sum over the row's action tokens), [B] float32. Its batch mean is what the adaptive KL
    controller observes (Ziegler et al.: the KL of a whole response)."""
    return jnp.sum(jnp.where(mask.astype(bool), kl.astype(jnp.float32), 0.0), axis=-1)


@dataclasses.dataclass(frozen=True)
class Whitening:
    """How one quantity is whitened. scope: none | batch | rows | running (module docstring); rows: the block
    size for ``rows``; shift_mean: subtract the mean (advantages) or only divide by the std (rewards)."""

    scope: str = "batch"
    rows: int = 16
    shift_mean: bool = True
    eps: float = 1e-8

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"unknown whitening scope {self.scope!r}; valid: {', '.join(SCOPES)}")
        if self.rows < 1:
            raise ValueError(f"whitening rows must be >= 1, got {self.rows}")


class RunningMoments(NamedTuple):
    """Moments of every value whitened so far (the ``running`` scope); a pytree of scalars, checkpointable.

    count int32; mean, m2 (sum of squared deviations from the mean) float32; low/high the smallest and largest
    value seen (+inf/-inf when none), which tell an all-equal stream exactly.
    """

    count: jax.Array
    mean: jax.Array
    m2: jax.Array
    low: jax.Array
    high: jax.Array

    @classmethod
    def zeros(cls) -> "RunningMoments":
        f = jnp.float32
        return cls(jnp.zeros((), jnp.int32), jnp.zeros((), f), jnp.zeros((), f), jnp.array(jnp.inf, f),
                   jnp.array(-jnp.inf, f))


def _moments(values: jnp.ndarray, mask: jnp.ndarray):
    """Masked moments over the last axis: count, mean, m2, low, high, each [...] float32 (two-pass, as the
    original's ``masked_var``)."""
    m = mask.astype(jnp.float32)
    v = jnp.where(m > 0, values.astype(jnp.float32), 0.0)
    count = m.sum(-1)
    mean = v.sum(-1) / jnp.maximum(count, 1.0)
    m2 = jnp.sum(((v - mean[..., None]) * m) ** 2, axis=-1)
    low = jnp.min(jnp.where(m > 0, v, jnp.inf), axis=-1)
    high = jnp.max(jnp.where(m > 0, v, -jnp.inf), axis=-1)
    return count, mean, m2, low, high


def merge_moments(state: RunningMoments, values: jnp.ndarray, mask: jnp.ndarray) -> RunningMoments:
    """The running moments with the masked ``values`` added (Chan et al.'s parallel update)."""
    nb, mb, m2b, lowb, highb = _moments(values.reshape(1, -1), mask.reshape(1, -1))
    nb, mb, m2b, lowb, highb = nb[0], mb[0], m2b[0], lowb[0], highb[0]
    na = state.count.astype(jnp.float32)
    n = na + nb
    delta = mb - state.mean
    frac = nb / jnp.maximum(n, 1.0)
    mean = state.mean + delta * frac
    m2 = state.m2 + m2b + delta * delta * na * frac
    return RunningMoments(state.count + nb.astype(jnp.int32), mean, m2, jnp.minimum(state.low, lowb),
                          jnp.maximum(state.high, highb))


def _apply(values, mask, count, mean, m2, low, high, cfg: Whitening):
    """Whiten values [..., N] with moments broadcastable to them; 0 off the mask."""
    var = m2 / jnp.maximum(count - 1.0, 1.0)
    flat = (count < 2) | (high <= low)  # nothing to scale by: leave unscaled (or exactly 0 when centred)
    scale = jax.lax.rsqrt(var + cfg.eps)
    v = values.astype(jnp.float32)
    if cfg.shift_mean:
        out = jnp.where(flat, 0.0, (v - mean) * scale)
    else:
        out = jnp.where(flat, v, v * scale)
    return jnp.where(mask.astype(bool), out, 0.0)


def whiten(values: jnp.ndarray, mask: jnp.ndarray, cfg: Whitening,
           moments: RunningMoments | None = None) -> tuple[jnp.ndarray, RunningMoments | None]:
    """``(whitened, moments)``: values [B, T] whitened over the action tokens of ``cfg.scope``; float32, 0 off
    the mask. ``moments`` is required for (and only updated by) the ``running`` scope, which whitens with the
    moments after adding this batch. ``rows`` needs B divisible by ``cfg.rows``."""
    mask = mask.astype(bool)
    if cfg.scope == "none":
        return jnp.where(mask, values.astype(jnp.float32), 0.0), moments
    if cfg.scope == "running":
        if moments is None:
            raise ValueError("the running whitening scope needs RunningMoments (RunningMoments.zeros() at start)")
        moments = merge_moments(moments, values, mask)
        n = moments.count.astype(jnp.float32)
        return _apply(values, mask, n, moments.mean, moments.m2, moments.low, moments.high, cfg), moments
    b, t = values.shape
    rows = b if cfg.scope == "batch" else cfg.rows
    if b % rows:
        raise ValueError(f"whitening in blocks of {rows} rows needs a multiple of {rows} rows, got {b}")
    shaped = (b // rows, rows * t)
    v, m = values.reshape(shaped), mask.reshape(shaped)
    stats = [s[:, None] for s in _moments(v, m)]
    return _apply(v, m, *stats, cfg).reshape(b, t), moments


def gae(rewards: jnp.ndarray, values: jnp.ndarray, mask: jnp.ndarray, gamma: float | jnp.ndarray,
        lam: float | jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Generalised advantage estimation over each row's action tokens: ``(advantages, returns)``.

    rewards, values: [B, T] (values[t] = V of the state before token t; any float dtype); mask: [B, T] bool.
    Returns float32 [B, T], 0 off the mask (formula 4 of the module docstring). One reverse ``lax.scan`` over T.
    """
    keep = mask.astype(bool)
    r = jnp.where(keep, rewards.astype(jnp.float32), 0.0).T
    v = jnp.where(keep, values.astype(jnp.float32), 0.0).T
    gamma = jnp.asarray(gamma, jnp.float32)
    decay = gamma * jnp.asarray(lam, jnp.float32)

    def step(carry, x):
        next_v, next_a = carry
        r_t, v_t, m_t = x
        a_t = r_t + gamma * next_v - v_t + decay * next_a
        return (jnp.where(m_t, v_t, next_v), jnp.where(m_t, a_t, next_a)), jnp.where(m_t, a_t, 0.0)

    zeros = jnp.zeros(r.shape[1:], jnp.float32)
    _, adv = jax.lax.scan(step, (zeros, zeros), (r, v, keep.T), reverse=True)
    adv = adv.T
    return adv, jnp.where(keep, adv + v.T, 0.0)


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    """PPO's advantage settings. Defaults are the paper's (GAMMA-0.99, lam 1.0, k1, RW-True: rewards divided by
    their std over the batch; RW-False is ``reward_whitening=Whitening("none")``). The original always whitens
    the advantages."""

    gamma: float = 0.99
    lam: float = 1.0
    kl_estimator: str = "k1"
    reward_whitening: Whitening = dataclasses.field(
        default_factory=lambda: Whitening(scope="batch", shift_mean=False))
    advantage_whitening: Whitening = dataclasses.field(
        default_factory=lambda: Whitening(scope="batch", shift_mean=True))

    def __post_init__(self):
        check_estimator(self.kl_estimator)


class WhiteningState(NamedTuple):
    """The running moments of the ``running`` scopes (unused by the others); checkpoint it with the run."""

    rewards: RunningMoments
    advantages: RunningMoments

    @classmethod
    def zeros(cls) -> "WhiteningState":
        return cls(RunningMoments.zeros(), RunningMoments.zeros())


class Advantages(NamedTuple):
    """What one rollout batch trains on; all [B, T] float32, 0 off the mask."""

    advantages: jnp.ndarray  # whitened GAE advantages
    returns: jnp.ndarray  # value targets: GAE advantages (before whitening) + old values
    rewards: jnp.ndarray  # penalised (and whitened, when configured) per-token rewards fed to GAE
    kl: jnp.ndarray  # per-token KL estimate of the rollout policy to the reference


def ppo_advantages(scores: jnp.ndarray, values: jnp.ndarray, logp_old: jnp.ndarray, logp_ref: jnp.ndarray,
                   mask: jnp.ndarray, kl_coef: jnp.ndarray | float, cfg: AdvantageConfig,
                   state: WhiteningState | None = None) -> tuple[Advantages, WhiteningState]:
    """Formulas 1-5 of the module docstring for one rollout batch; all inputs [B, T] on the token axis.

    scores: reward-model rewards; values: the old critic values V_old; logp_old / logp_ref: rollout-policy and
    reference log-probs of the tokens; kl_coef: scalar. Returns the arrays and the updated running moments
    (``state`` None starts from zero moments; only the ``running`` scopes change them).
    """
    state = WhiteningState.zeros() if state is None else state
    rewards, kl = penalized_rewards(scores, logp_old, logp_ref, mask, kl_coef, cfg.kl_estimator)
    rewards, reward_moments = whiten(rewards, mask, cfg.reward_whitening, state.rewards)
    adv, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    adv_white, adv_moments = whiten(adv, mask, cfg.advantage_whitening, state.advantages)
    return Advantages(adv_white, returns, rewards, kl), WhiteningState(reward_moments, adv_moments)
