"""``scan_layers``: the decoder layers as one scanned stack give the unrolled model's logits, cached decoding,
LoRA step, greedy generations and exported files; LoRA names stay per layer; misuse is a UserError."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reclm_jax.errors import UserError
from reclm_jax.models.adapter_io import load_adapter, save_adapter
from reclm_jax.models.hf_export import export_merged
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.kv_cache import init_cache
from reclm_jax.models.llama_config import from_hf_config
from reclm_jax.models.lora import LoraConfig, add_lora, layer_linears, select_targets, split_trainable
from reclm_jax.models.sampler import Sampler
from reclm_jax.models.sharding import make_mesh, partition_spec
from reclm_jax.sft.step import Batch, make_train_step
from reclm_jax.train.optim import OptimConfig, make_optimizer

LAYERS = 3


@pytest.fixture(scope="module")
def model_dir(tiny_llama_factory):
    return tiny_llama_factory("llama3", num_layers=LAYERS)


def _pair(model_dir, **kw):
    return (load_llama(model_dir, progress=False, **kw),
            load_llama(model_dir, progress=False, scan_layers=True, **kw))


def _tokens(vocab, b=2, t=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, vocab, (b, t)).astype(np.int32)
    mask = np.ones((b, t), bool)
    mask[1, :4] = False  # left padding in one row
    return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.parametrize("kernels", ["xla", "cpu"])
def test_stack_loads_the_same_weights_and_gives_the_same_logits(model_dir, kernels):
    unrolled, scanned = _pair(model_dir, kernels=kernels)
    assert isinstance(scanned.model.layers.self_attn.q_proj.kernel[...], jax.Array)
    np.testing.assert_array_equal(np.asarray(scanned.model.layers.mlp.up_proj.kernel[...][2]),
                                  np.asarray(unrolled.model.layers[2].mlp.up_proj.kernel[...]))
    tokens, mask = _tokens(unrolled.config.vocab_size)
    want = unrolled(tokens, attention_mask=mask).logits
    got = scanned(tokens, attention_mask=mask).logits
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-4)
    assert float(jnp.max(jnp.abs(want))) > 0.1


def test_cached_decoding_matches_the_unrolled_model(model_dir):
    unrolled, scanned = _pair(model_dir, kernels="xla")
    tokens, mask = _tokens(unrolled.config.vocab_size, t=8)
    nxt = jnp.asarray([[7], [9]], jnp.int32)
    outs = []
    for m in (unrolled, scanned):
        cache = init_cache(m.config, 2, 12)
        first = m(tokens, attention_mask=mask, cache=cache, prefill=True)
        second = m(nxt, cache=first.cache)
        outs.append((first.logits, second.logits, second.cache))
    assert outs[1][2].keys.shape == (LAYERS, 2, unrolled.config.num_kv_heads, 12, unrolled.config.head_dim)
    for a, b in zip(outs[0][:2], outs[1][:2]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(outs[1][2].keys[1]), np.asarray(outs[0][2].keys[1]), atol=1e-6)


def test_greedy_generation_through_the_sampler_is_the_same(model_dir):
    unrolled, scanned = _pair(model_dir, kernels="cpu")
    prompts = [[5, 9, 11, 20], [30, 31]]
    got = [Sampler(m, pad_id=3)(prompts, max_new_tokens=10) for m in (unrolled, scanned)]
    np.testing.assert_array_equal(got[1].tokens, got[0].tokens)
    np.testing.assert_array_equal(got[1].lengths, got[0].lengths)
    np.testing.assert_allclose(got[1].logprobs, got[0].logprobs, atol=1e-4)


def test_one_lora_sft_step_with_dropout_gives_the_same_loss_and_update(model_dir):
    # With dropout: each layer of the stack must draw the unrolled layer's mask for the update to match; the
    # stack with remat (each layer checkpointed inside the scan) too.
    cfg = LoraConfig(rank=4, alpha=8.0, dropout=0.3, targets=("q_proj", "v_proj", "down_proj", "lm_head"))
    tokens, mask = _tokens(100, b=2, t=16, seed=1)
    loss_mask = mask.at[:, :8].set(False)
    batch = Batch(tokens[None], mask[None].astype(jnp.int32), loss_mask[None].astype(jnp.int32))
    tx = make_optimizer(OptimConfig(lr=1e-2), total_steps=10)
    results = []
    for scan, remat in ((False, False), (True, False), (True, True)):
        m = load_llama(model_dir, progress=False, kernels="xla", scan_layers=scan, remat=remat)
        add_lora(m, cfg, "default", seed=3)
        graphdef, trainable, frozen = split_trainable(m)
        step = make_train_step(graphdef, tx, weighting="token", dropout=True)
        trainable, _, metrics = step(trainable, tx.init(trainable), frozen, batch, jax.random.key(0))
        nnx.update(m, trainable)
        deltas = {k: np.asarray(lin.lora["default"]["b"][...] if layer is None else
                                lin.lora["default"]["b"][...][layer])
                  for k, (lin, layer) in layer_linears(m).items() if "default" in lin.adapters}
        results.append((float(metrics["loss"]), float(metrics["grad_norm"]), deltas))
    loss_u, norm_u, b_u = results[0]
    assert len(b_u) == 3 * LAYERS + 1 and all(np.abs(b).max() > 0 for b in b_u.values())  # the step moved them
    for loss_s, norm_s, b_s in results[1:]:
        assert loss_s == pytest.approx(loss_u, rel=1e-5) and norm_s == pytest.approx(norm_u, rel=1e-4)
        assert list(b_s) == list(b_u)
        for k in b_u:
            # Adam's first step is about lr * sign(g) (1e-2): where |g| is near eps, float reordering in the
            # scan moves it by a few 1e-6 (seen: 4e-6).
            np.testing.assert_allclose(b_s[k], b_u[k], atol=2e-5, rtol=1e-4)


def test_adapter_and_merged_export_files_are_byte_identical(model_dir, tmp_path):
    unrolled, scanned = _pair(model_dir)
    add_lora(unrolled, LoraConfig(rank=4, targets=("q_proj", "up_proj", "lm_head")), "actor")
    rng = np.random.default_rng(0)
    for lin, _ in layer_linears(unrolled).values():  # nonzero B so that merging changes the kernels
        if "actor" in lin.adapters:
            b = lin.lora["actor"]["b"]
            b.set_value(jnp.asarray(rng.standard_normal(b[...].shape) * 0.1, b[...].dtype))
    save_adapter(tmp_path / "a_unrolled", unrolled, "actor")
    assert load_adapter(tmp_path / "a_unrolled", scanned) == "actor"
    assert scanned.model.layers.self_attn.q_proj.lora["actor"]["a"][...].shape[0] == LAYERS
    save_adapter(tmp_path / "a_scanned", scanned, "actor")
    for name in ("lora_adapter.json", "lora_adapter.safetensors"):
        assert (tmp_path / "a_scanned" / name).read_bytes() == (tmp_path / "a_unrolled" / name).read_bytes()
    for label, m in (("unrolled", unrolled), ("scanned", scanned)):
        export_merged(m, model_dir, tmp_path / f"m_{label}", adapter="actor", max_shard_size="200KB",
                      progress=False)
    files = sorted(p.name for p in (tmp_path / "m_unrolled").iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) > 1  # sharded: the order of tensors matters
    assert files == sorted(p.name for p in (tmp_path / "m_scanned").iterdir())
    for f in files:
        assert (tmp_path / "m_scanned" / f).read_bytes() == (tmp_path / "m_unrolled" / f).read_bytes(), f


def test_lora_targets_are_per_layer_names_and_partial_stacks_are_refused(model_dir):
    unrolled, scanned = _pair(model_dir)
    assert select_targets(scanned, ("q_proj",)) == select_targets(unrolled, ("q_proj",))
    assert "model.layers.2.mlp.down_proj" in layer_linears(scanned)
    with pytest.raises(UserError, match=r"model\.layers\.N\.self_attn\.q_proj in layers \[0, 1\] of 3"):
        add_lora(scanned, LoraConfig(targets=(r"model\.layers\.[01]\.self_attn\.q_proj",)), "part")
    add_lora(unrolled, LoraConfig(targets=(r"model\.layers\.[01]\.self_attn\.q_proj",)), "part")  # fine unrolled


def test_stacked_parameters_shard_as_one_layer_with_the_layer_dim_whole(model_dir):
    mesh, cfg = make_mesh(), from_hf_config(model_dir, scan_layers=True)
    one = partition_spec("model.layers.0.self_attn.q_proj.kernel", (128, 128), mesh, cfg)
    stacked = partition_spec("model.layers.self_attn.q_proj.kernel", (LAYERS, 128, 128), mesh, cfg)
    assert tuple(stacked) == (None, *one) and one[0] == "fsdp"
    lora_a = partition_spec("model.layers.mlp.down_proj.lora.default.a", (LAYERS, 256, 4), mesh, cfg)
    assert tuple(lora_a) == (None, *partition_spec("model.layers.1.mlp.down_proj.lora.default.a", (256, 4), mesh,
                                                    cfg)) == (None, "tp", None)


def test_the_key_is_read_from_yaml_overrides():
    from pathlib import Path

    from reclm_jax.config import load_config
    from reclm_jax.rl.config import RLConfig
    from reclm_jax.sft.config import SFTConfig

    configs = Path(__file__).resolve().parents[2] / "configs"
    base = ["data_path=d", "model.path=m"]
    sft = configs / "sft_tiny.yaml"
    assert load_config(SFTConfig, sft, base + ["model.scan_layers=true"]).model.scan_layers is True
    assert load_config(SFTConfig, sft, base).model.scan_layers is False
    rl = load_config(RLConfig, configs / "rl_tiny.yaml", ["model.path=m", "model.scan_layers=true"])
    assert rl.model.scan_layers is True
    with pytest.raises(UserError, match="scan_layers"):
        load_config(SFTConfig, sft, base + ["model.scan_layers=maybe"])


def test_a_sharded_stack_matches_the_unrolled_model_on_one_device(model_dir):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("scan_mesh_check.py")), str(model_dir)],
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["kernel_spec"] == ["None", "fsdp", "tp"] and res["kernel_shards"] == 8  # the layer dim unsharded
    assert res["lora_a_spec"] == ["None", "fsdp", "None"]
    assert res["logits_max_diff"] <= 1e-4 * max(1.0, res["logits_scale"])
    assert res["same_tokens"]
