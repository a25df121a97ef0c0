"""The jitted train step: exact gradient accumulation, no recompiles, and a tiny model that overfits."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from reclm_jax.config import load_config
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.lora import LoraConfig, add_lora, split_trainable
from reclm_jax.models.tokenizer import load_tokenizer
from reclm_jax.sft.config import SFTConfig
from reclm_jax.sft.data import SFTData, stack_micro_batches
from reclm_jax.sft.step import Batch, make_train_step
from reclm_jax.train.optim import OptimConfig, make_optimizer
from reclm_jax.train.runtime import local_runtime
from reclm_jax.train.state import place_state

CONFIG = Path(__file__).parents[2] / "configs" / "sft_tiny.yaml"


def _batch8(world, tmp_path, tiny_overrides):
    # top-3 lists keep the outputs short (about 36 label tokens a row)
    cfg = load_config(SFTConfig, CONFIG, tiny_overrides(tmp_path, "train.batch_size=8", "data.topk=3"))
    data = SFTData(cfg, load_tokenizer(world["model"]))
    first = next(iter(data.epoch_batches(0)))
    return stack_micro_batches([first], data.pad_id())


def _setup(world, lora_dropout=0.0, lr=1e-2, total=10_000, dtype="float32"):
    runtime = local_runtime()
    model = load_llama(world["model"], mesh=runtime.mesh, progress=False, param_dtype=dtype, dtype=dtype)
    add_lora(model, LoraConfig(rank=16, alpha=32, dropout=lora_dropout,
                               targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                        "down_proj", "lm_head")), "default", seed=0)
    g, tr, fr = split_trainable(model)
    tx = make_optimizer(OptimConfig(lr=lr, warmup_ratio=0.0, lr_end=lr * 0.999, clip_grad_norm=1.0), total)
    tr, opt, sh = place_state(tr, tx.init(tr), runtime)
    return g, tr, fr, opt, make_train_step(g, tx, dropout=lora_dropout > 0, state_shardings=sh)


def _as_batch(arrays, accum):
    a = {k: v.reshape(accum, -1, v.shape[-1]) for k, v in arrays.items()}
    return Batch(jnp.asarray(a["tokens"]), jnp.asarray(a["attention_mask"]), jnp.asarray(a["loss_mask"]))


def test_accumulating_4_micro_batches_of_2_equals_one_batch_of_8(sft_world, tmp_path, tiny_overrides):
    arrays = _batch8(sft_world, tmp_path, tiny_overrides)
    assert arrays["tokens"].shape[:2] == (1, 8)
    results = []
    for accum in (1, 4):
        g, tr, fr, opt, step = _setup(sft_world)
        for i in range(2):  # two updates, so the optimiser state matters too
            tr, opt, metrics = step(tr, opt, fr, _as_batch(arrays, accum), jax.random.key(i))
        results.append((jax.tree.leaves(tr), float(metrics["loss"])))
    (big, loss_big), (acc, loss_acc) = results
    assert abs(loss_big - loss_acc) < 1e-5
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(big, acc))
    assert diff < 1e-5
    assert max(float(jnp.max(jnp.abs(b))) for b in big) > 1e-4  # the params did move


def test_tiny_model_overfits_a_tiny_batch_without_recompiling(sft_world, tmp_path, tiny_overrides):
    arrays = _batch8(sft_world, tmp_path, tiny_overrides)
    # lr 5e-3: at 1e-2 (r 16, alpha 32, lm_head adapted) Adam is on the edge of stability and whether the loss
    # falls 10x in 80 steps hinges on single tokens of the batch (measured: 0.43x vs 0.06x for a batch differing
    # in 4 prompt tokens); at 5e-3 it falls by 1e-4 on both.
    g, tr, fr, opt, step = _setup(sft_world, lr=5e-3)
    batch = _as_batch(arrays, 1)
    losses = []
    for i in range(80):
        tr, opt, metrics = step(tr, opt, fr, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])
    assert step._cache_size() == 1
    assert np.all(np.isfinite(losses))


def test_bf16_training_follows_fp32_training(sft_world, tmp_path, tiny_overrides):
    # bf16 compute takes XLA:CPU's fast paths (f32-accumulating bf16 products with hand-written gradients,
    # blocked causal attention) and LoRA dropout; its loss curve must track the fp32 one.
    batch = _as_batch(_batch8(sft_world, tmp_path, tiny_overrides), 2)
    curves = {}
    for dtype in ("float32", "bfloat16"):
        g, tr, fr, opt, step = _setup(sft_world, lora_dropout=0.1, lr=5e-3, dtype=dtype)
        losses = []
        for i in range(25):
            tr, opt, metrics = step(tr, opt, fr, batch, jax.random.key(i))
            losses.append(float(metrics["loss"]))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(tr))  # LoRA factors stay fp32
        curves[dtype] = np.asarray(losses)
    f32, bf16 = curves["float32"], curves["bfloat16"]
    assert np.all(np.isfinite(bf16)) and bf16[-1] < 0.5 * bf16[0]
    # Same data, same dropout masks: step by step the losses agree to bf16 precision early on (the first
    # three within 0.1% here); from the fourth step the two trajectories may part on a single step (1.05% seen
    # with the faster teacher's labels), so those are allowed 2% and the whole curve is compared on average.
    np.testing.assert_allclose(bf16[:3], f32[:3], rtol=0.005)
    np.testing.assert_allclose(bf16[3:6], f32[3:6], rtol=0.02)
    # The labels come from the tiny teacher; its faster training (issue 12) changed them, and on these the
    # trajectories part more after step 6 (mean 8% apart over 25 steps, both converging).
    assert np.mean(np.abs(bf16 - f32) / f32) < 0.12
