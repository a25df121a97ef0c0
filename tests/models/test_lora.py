"""LoRA: zero-B identity, named adapters, trainable split, merge, save/load, value head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reclm_jax.errors import UserError
from reclm_jax.models.adapter_io import load_adapter, save_adapter
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.lora import (ALL_LINEARS, LoraConfig, adapter_modules, add_lora, merge_lora,
                                   select_targets, split_trainable)
from reclm_jax.models.value_head import ValueHead

TOKENS = np.random.default_rng(3).integers(4, 500, (2, 24))


def randomize_b(model, name, seed=0, std=0.05):
    for i, lin in enumerate(adapter_modules(model, name).values()):
        b = lin.lora[name]["b"]
        b.set_value(jax.random.normal(jax.random.key(seed * 1000 + i), b[...].shape) * std)


def test_zero_b_is_base_and_adapters_switch(tiny_llama_factory):
    model = load_llama(tiny_llama_factory("smollm2"), progress=False)
    base = np.asarray(model(TOKENS).logits)
    add_lora(model, LoraConfig(rank=4, alpha=8, targets=ALL_LINEARS + ("lm_head",)), "actor")
    add_lora(model, LoraConfig(rank=2, alpha=2, targets=("q_proj", "v_proj")), "critic", seed=1)
    np.testing.assert_array_equal(np.asarray(model(TOKENS, adapter="actor").logits), base)
    randomize_b(model, "actor")
    actor = np.asarray(model(TOKENS, adapter="actor").logits)
    assert np.abs(actor - base).max() > 1e-2
    np.testing.assert_array_equal(np.asarray(model(TOKENS).logits), base)  # None = reference policy
    np.testing.assert_array_equal(np.asarray(model(TOKENS, adapter="critic").logits), base)  # critic B still 0
    # dropout only acts when a key is given
    add_lora(model, LoraConfig(rank=4, dropout=0.5), "drop")
    randomize_b(model, "drop", seed=2)
    det = np.asarray(model(TOKENS, adapter="drop").logits)
    np.testing.assert_array_equal(det, np.asarray(model(TOKENS, adapter="drop").logits))
    noisy = np.asarray(model(TOKENS, adapter="drop", dropout_rng=jax.random.key(0)).logits)
    assert np.abs(noisy - det).max() > 1e-4


def test_targets_by_pattern_and_trainable_split(tiny_llama_factory):
    model = load_llama(tiny_llama_factory("llama2"), progress=False)
    assert select_targets(model, ("lm_head",)) == ["lm_head"]
    assert sorted(select_targets(model, (r"model\.layers\.1\..*(q|k)_proj",))) == [
        "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.q_proj"]
    assert len(select_targets(model, ALL_LINEARS)) == 14
    with pytest.raises(UserError, match="matches no module"):
        select_targets(model, ("qproj",))
    add_lora(model, LoraConfig(rank=4), "actor")
    add_lora(model, LoraConfig(rank=4, targets=("down_proj",)), "critic")
    graphdef, train, frozen = split_trainable(model, ("actor",), full_tune=("lm_head",))
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(train)}
    assert "lm_head.kernel" in names and len(names) == 14 * 2 + 1
    assert all(".lora.actor." in n for n in names - {"lm_head.kernel"})

    def loss(train):
        m = nnx.merge(graphdef, train, frozen)
        return jnp.mean(m(TOKENS, adapter="actor").logits ** 2)

    grads = jax.grad(loss)(train)
    flat = dict((".".join(map(str, p)), v) for p, v in nnx.to_flat_state(grads))
    assert np.abs(np.asarray(flat["model.layers.0.self_attn.q_proj.lora.actor.b"][...])).max() > 0


@pytest.mark.parametrize("variant", ["llama2", "smollm2"])
def test_merged_equals_unmerged(tiny_llama_factory, variant):
    model = load_llama(tiny_llama_factory(variant), progress=False)
    add_lora(model, LoraConfig(rank=4, alpha=8, targets=ALL_LINEARS + ("lm_head",)), "actor")
    randomize_b(model, "actor")
    unmerged = np.asarray(model(TOKENS, adapter="actor").logits)
    merge_lora(model, "actor")
    assert not model.config.tie_word_embeddings  # an lm_head adapter unties a tied head
    np.testing.assert_allclose(np.asarray(model(TOKENS).logits), unmerged, atol=1e-5)


def test_save_and_load_adapter_round_trip(tiny_llama_factory, tmp_path):
    d = tiny_llama_factory("llama3")
    model = load_llama(d, progress=False)
    cfg = LoraConfig(rank=4, alpha=16, targets=("q_proj", "down_proj"))
    add_lora(model, cfg, "actor")
    randomize_b(model, "actor")
    head = model.lm_head.kernel
    head.set_value(head[...] * 1.5)  # a fully tuned lm_head travels with the adapter
    want = np.asarray(model(TOKENS, adapter="actor").logits)
    ckpt = save_adapter(tmp_path / "ckpt", model, "actor", config=cfg, full_tune=("lm_head",))
    assert sorted(p.name for p in ckpt.iterdir()) == ["lora_adapter.json", "lora_adapter.safetensors"]
    fresh = load_llama(d, progress=False)
    name = load_adapter(ckpt, fresh)
    assert name == "actor"
    np.testing.assert_allclose(np.asarray(fresh(TOKENS, adapter="actor").logits), want, atol=1e-6)
    save_adapter(tmp_path / "ckpt", fresh, "actor")  # overwriting an existing checkpoint is allowed
    assert not (tmp_path / "ckpt.tmp").exists() and not (tmp_path / "ckpt.old").exists()
    with pytest.raises(UserError, match="no LoRA adapter named 'critic'"):
        save_adapter(tmp_path / "x", fresh, "critic")
    with pytest.raises(UserError, match="not a reclm-jax adapter"):
        load_adapter(tmp_path, fresh)


def test_value_head_shapes_and_init():
    head = ValueHead(128, rngs=nnx.Rngs(0))
    w = np.asarray(head.dense.kernel[...])
    np.testing.assert_allclose(w.T @ w, 2.0 * np.eye(64), atol=1e-4)  # orthogonal columns, gain sqrt(2)
    assert not np.asarray(head.dense.bias[...]).any() and not np.asarray(head.out.bias[...]).any()
    hidden = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 128)), jnp.float32)
    values = head(hidden)
    assert values.shape == (2, 5) and values.dtype == jnp.float32
    manual = jax.nn.gelu(hidden @ w, approximate=False) @ np.asarray(head.out.kernel[...])
    np.testing.assert_allclose(np.asarray(values), manual[..., 0], atol=1e-5)
