"""The KL controllers: Ziegler et al.'s adaptive update rule step by step against hand arithmetic."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.rl.kl_control import (KLControlConfig, KLControlState, init_kl_control, proportional_error,
                                     update_kl_control)


def test_adaptive_rule_over_several_steps_by_hand():
    cfg = KLControlConfig(kind="adaptive", coef=0.3, target=6.0, horizon=100.0)
    update = jax.jit(functools.partial(update_kl_control, cfg))
    state = init_kl_control(cfg)
    # (observed KL, coefficient after the update), 16 responses per update, so K = 16 / 100 = 0.16:
    steps = [
        (9.0, 0.3 * 1.032),  # e = 9/6 - 1 = 0.5, clipped to 0.2: x (1 + 0.2 * 0.16)
        (6.6, 0.3096 * 1.016),  # e = 0.1 (inside the clip): x (1 + 0.1 * 0.16)
        (3.0, 0.3145536 * 0.968),  # e = -0.5, clipped to -0.2
        (5.4, 0.3044878848 * 0.984),  # e = -0.1
        (6.0, 0.29961607864),  # on target: unchanged
    ]
    for kl, expect in steps:
        state = update(state, jnp.float32(kl), 16)
        np.testing.assert_allclose(float(state.coef), expect, rtol=1e-6)
    assert state.coef.dtype == jnp.float32 and state.coef.shape == ()


def test_proportional_error_is_clipped_both_ways():
    cfg = KLControlConfig(kind="adaptive", target=2.0, max_error=0.2)
    got = [float(proportional_error(cfg, kl)) for kl in (0.0, 1.8, 2.0, 2.3, 100.0)]
    np.testing.assert_allclose(got, [-0.2, -0.1, 0.0, 0.15, 0.2], rtol=1e-6)


def test_n_steps_scales_the_step():
    cfg = KLControlConfig(kind="adaptive", coef=1.0, target=1.0, horizon=1000.0)
    one = update_kl_control(cfg, init_kl_control(cfg), 2.0, 1)
    many = update_kl_control(cfg, init_kl_control(cfg), 2.0, 500)
    np.testing.assert_allclose([float(one.coef), float(many.coef)], [1.0002, 1.1], rtol=1e-6)


def test_fixed_controller_is_the_originals_klc():
    cfg = KLControlConfig()  # the paper: KLC-0.3, fixed
    state = init_kl_control(cfg)
    for kl in (0.0, 50.0, 1e6):
        state = update_kl_control(cfg, state, kl, 16)
    assert float(state.coef) == pytest.approx(0.3)


def test_state_is_a_checkpointable_pytree():
    state = KLControlState(jnp.float32(0.25))
    leaves, treedef = jax.tree_util.tree_flatten(state)
    assert len(leaves) == 1 and leaves[0].dtype == jnp.float32
    restored = jax.tree_util.tree_unflatten(treedef, [np.float32(0.125)])
    cfg = KLControlConfig(kind="adaptive", coef=0.3, target=1.0, horizon=10.0)
    assert float(update_kl_control(cfg, restored, 1.0, 4).coef) == 0.125


@pytest.mark.parametrize("kwargs", [dict(kind="pid"), dict(coef=-1.0), dict(kind="adaptive", target=0.0),
                                    dict(kind="adaptive", horizon=0.0)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        KLControlConfig(**kwargs)
