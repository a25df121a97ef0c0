"""The SFT loss (masking, both weightings) and the optimiser schedule, against hand computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reclm_jax.sft.loss import masked_lm_loss
from reclm_jax.train.optim import OptimConfig, decay_mask, lr_schedule


def _case(seed=0, b=3, t=7, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((b, t, v)).astype(np.float32)
    tokens = rng.integers(0, v, (b, t)).astype(np.int32)
    mask = np.zeros((b, t), np.int32)
    mask[0, 4:] = 1
    mask[1, 2:5] = 1  # row 2: no label tokens at all
    return logits, tokens, mask


def _ref_token_losses(logits, tokens):
    """-log softmax(logits[t])[tokens[t+1]] computed with numpy."""
    lg = logits[:, :-1].astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    return lse - np.take_along_axis(lg, tokens[:, 1:, None], -1)[..., 0]


def test_sequence_weighting_is_mean_of_per_sample_means():
    logits, tokens, mask = _case()
    num, den = masked_lm_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask), "sequence")
    ref = _ref_token_losses(logits, tokens)
    m = mask[:, 1:]
    per = [(ref[i] * m[i]).sum() / m[i].sum() for i in range(2)]
    assert float(den) == 2.0  # the row without labels does not count
    np.testing.assert_allclose(float(num) / float(den), np.mean(per), rtol=1e-5)


def test_token_weighting_is_mean_over_tokens():
    logits, tokens, mask = _case(1)
    num, den = masked_lm_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask), "token")
    ref = _ref_token_losses(logits, tokens)
    assert float(den) == mask[:, 1:].sum()
    np.testing.assert_allclose(float(num), (ref * mask[:, 1:]).sum(), rtol=1e-5)


def test_labels_on_prompt_tokens_do_not_change_the_loss():
    logits, tokens, mask = _case(2)
    changed = tokens.copy()
    changed[mask == 0] = (changed[mask == 0] + 3) % 11  # every prompt/pad label differs now
    a = masked_lm_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    b = masked_lm_loss(jnp.asarray(logits), jnp.asarray(changed), jnp.asarray(mask))
    assert float(a[0]) == float(b[0]) and float(a[1]) == float(b[1])
    changed[0, 5] = (changed[0, 5] + 1) % 11  # an output label: the loss must move
    c = masked_lm_loss(jnp.asarray(logits), jnp.asarray(changed), jnp.asarray(mask))
    assert float(c[0]) != float(a[0])


def test_schedule_warmup_then_power_two_decay():
    cfg = OptimConfig(lr=1e-3, lr_end=1e-7, power=2.0, warmup_ratio=0.1)
    sched = lr_schedule(cfg, 100)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(5e-4)
    assert float(sched(10)) == pytest.approx(1e-3)
    # HF: (lr - end) * (1 - (s - w) / (total - w)) ** 2 + end
    assert float(sched(55)) == pytest.approx((1e-3 - 1e-7) * 0.5 ** 2 + 1e-7, rel=1e-5)
    assert float(sched(100)) == pytest.approx(1e-7, rel=1e-3)


def test_weight_decay_only_on_matrices():
    params = {"a": jnp.ones((3, 2)), "bias": jnp.ones((3,)), "nested": {"k": jnp.ones((2, 2, 2))}}
    assert jax.tree.leaves(decay_mask(params)) == [True, False, True]


@pytest.mark.parametrize("weighting", ["sequence", "token"])
def test_chunked_loss_equals_full_loss_and_gradient(weighting):
    from reclm_jax.sft.loss import chunked_lm_loss

    rng = np.random.default_rng(3)
    b, t, d, v = 3, 37, 8, 50
    hidden = jnp.asarray(rng.standard_normal((b, t, d)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((d, v)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
    mask = np.zeros((b, t), np.int32)
    mask[0, 20:] = 1
    mask[1, 30:35] = 1  # rows with labels only in later chunks; chunk 0 is skipped
    mask = jnp.asarray(mask)

    def full(w):
        num, den = masked_lm_loss(hidden @ w, tokens, mask, weighting)
        return num / den

    def chunked(w):
        num, den = chunked_lm_loss(lambda h, _: h @ w, hidden, tokens, mask, weighting, chunk=8)
        return num / den

    np.testing.assert_allclose(float(chunked(w)), float(full(w)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(chunked)(w)), np.asarray(jax.grad(full)(w)), atol=1e-6)
