"""LoRA: zero-B identity, named adapters, trainable split, owned full copies, merge, save/load, value head."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from reclm_jax.errors import UserError
from reclm_jax.models.adapter_io import load_adapter, save_adapter
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.linear import FullKernel, LoRAParam
from reclm_jax.models.lora import (ALL_LINEARS, LoraConfig, adapter_filter, adapter_modules, adapter_names, add_lora,
                                   linear_modules, merge_lora, own_full_copy, remove_lora, select_targets,
                                   split_trainable)
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
    add_lora(model, LoraConfig(rank=4), "actor", full_tune=("lm_head",))
    add_lora(model, LoraConfig(rank=4, targets=("down_proj",)), "critic")
    # An adapter named like a module must not select that module's other adapters.
    add_lora(model, LoraConfig(rank=2, targets=("up_proj",)), "mlp")
    graphdef, train, frozen = split_trainable(model, ("actor",))
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(train)}
    # The actor's own lm_head copy trains; the shared lm_head.kernel stays frozen.
    assert "lm_head.full.actor" in names and len(names) == 14 * 2 + 1
    assert all(".lora.actor." in n for n in names - {"lm_head.full.actor"})
    assert "lm_head.kernel" in {".".join(map(str, p)) for p, _ in nnx.to_flat_state(frozen)}
    mlp_only = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, adapter_filter("mlp")))}
    assert len(mlp_only) == 2 * 2 and all(".lora.mlp." in n for n in mlp_only)
    assert issubclass(LoRAParam, nnx.LoRAParam) and issubclass(FullKernel, LoRAParam)
    # flax's own LoRAParam filter sees every adapter parameter, copies included, and no base weight
    assert len(nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))) == 14 * 2 + 1 + 2 * 2 + 2 * 2

    def loss(train):
        m = nnx.merge(graphdef, train, frozen)
        return jnp.mean(m(TOKENS, adapter="actor").logits ** 2)

    grads = jax.grad(loss)(train)
    flat = dict((".".join(map(str, p)), v) for p, v in nnx.to_flat_state(grads))
    assert np.abs(np.asarray(flat["model.layers.0.self_attn.q_proj.lora.actor.b"][...])).max() > 0


def perturb_full_copy(model, name, module="lm_head", factor=1.5):
    var = linear_modules(model)[module].full[name]
    var.set_value(var[...] * factor)


def test_reference_policy_is_unchanged_by_an_actor_step_that_fully_tunes_lm_head(tiny_llama_factory):
    model = load_llama(tiny_llama_factory("smollm2"), progress=False)  # tied: lm_head reads the embedding
    add_lora(model, LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj")), "actor", full_tune=("lm_head",))
    add_lora(model, LoraConfig(rank=2, alpha=2, targets=("q_proj",)), "critic", seed=1)
    randomize_b(model, "critic", seed=3)
    emb = np.asarray(model.model.embed_tokens.weight[...])
    np.testing.assert_array_equal(np.asarray(model.lm_head.full["actor"][...]), emb.T)  # starts as the head
    graphdef, train, frozen = split_trainable(model, ("actor",))

    def logits(train, adapter):
        return nnx.merge(graphdef, train, frozen)(TOKENS, adapter=adapter).logits

    before = {a: np.asarray(logits(train, a)) for a in (None, "critic", "actor")}
    tx = optax.adam(1e-2)

    @jax.jit
    def step(train, opt_state):
        grads = jax.grad(lambda t: jnp.mean(jax.nn.log_softmax(logits(t, "actor"))[..., 7]))(train)
        updates, opt_state = tx.update(grads, opt_state, train)
        return optax.apply_updates(train, updates), opt_state

    new_train, _ = step(train, tx.init(train))
    moved = np.abs(np.asarray(new_train["lm_head"]["full"]["actor"][...]) - emb.T).max()
    assert moved > 1e-3  # the actor's head copy itself trained
    for a in (None, "critic"):
        np.testing.assert_array_equal(np.asarray(logits(new_train, a)), before[a], err_msg=f"adapter={a}")
    assert np.abs(np.asarray(logits(new_train, "actor")) - before["actor"]).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(nnx.merge(graphdef, new_train, frozen).model.embed_tokens.weight[...]),
                                  emb)
    with pytest.raises(UserError, match="already has a full copy"):
        own_full_copy(model, "actor", ("lm_head",))
    remove_lora(model, "actor")
    assert model.lm_head.full_copies == () and adapter_names(model) == ["critic"]


@pytest.mark.parametrize("variant", ["llama2", "smollm2"])
def test_merged_equals_unmerged(tiny_llama_factory, variant):
    model = load_llama(tiny_llama_factory(variant), progress=False)
    add_lora(model, LoraConfig(rank=4, alpha=8, targets=ALL_LINEARS + ("lm_head",)), "actor",
             full_tune=("lm_head", "model.layers.0.mlp.down_proj"))
    randomize_b(model, "actor")
    perturb_full_copy(model, "actor")
    perturb_full_copy(model, "actor", "model.layers.0.mlp.down_proj", 0.5)
    unmerged = np.asarray(model(TOKENS, adapter="actor").logits)
    merge_lora(model, "actor")
    assert not model.config.tie_word_embeddings  # an lm_head adapter unties a tied head
    assert model.lm_head.full_copies == () and model.lm_head.adapters == {}
    np.testing.assert_allclose(np.asarray(model(TOKENS).logits), unmerged, atol=1e-5)


def test_save_and_load_adapter_round_trip(tiny_llama_factory, tmp_path):
    d = tiny_llama_factory("llama3")
    model = load_llama(d, progress=False)
    cfg = LoraConfig(rank=4, alpha=16, targets=("q_proj", "down_proj"))
    add_lora(model, cfg, "actor", full_tune=("lm_head",))
    randomize_b(model, "actor")
    perturb_full_copy(model, "actor")  # a fully tuned lm_head travels with the adapter
    want = np.asarray(model(TOKENS, adapter="actor").logits)
    ckpt = save_adapter(tmp_path / "ckpt", model, "actor", config=cfg)
    assert sorted(p.name for p in ckpt.iterdir()) == ["lora_adapter.json", "lora_adapter.safetensors"]
    fresh = load_llama(d, progress=False)
    base = np.asarray(fresh(TOKENS).logits)
    name = load_adapter(ckpt, fresh)
    assert name == "actor" and fresh.lm_head.full_copies == ("actor",)
    np.testing.assert_allclose(np.asarray(fresh(TOKENS, adapter="actor").logits), want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(fresh(TOKENS).logits), base)  # the base head is not overwritten
    save_adapter(tmp_path / "ckpt", fresh, "actor")  # overwriting an existing checkpoint is allowed
    assert not (tmp_path / "ckpt.tmp").exists() and not (tmp_path / "ckpt.old").exists()
    with pytest.raises(UserError, match="no LoRA adapter named 'critic'"):
        save_adapter(tmp_path / "x", fresh, "critic")
    with pytest.raises(UserError, match="not a reclm-jax adapter"):
        load_adapter(tmp_path, fresh)



def test_an_adapter_of_full_copies_only_round_trips(tiny_llama_factory, tmp_path):
    d = tiny_llama_factory("llama3")
    model = load_llama(d, progress=False)
    own_full_copy(model, "head", ("lm_head",), param_dtype="bfloat16")  # no LoRA factors at all
    perturb_full_copy(model, "head")
    want = np.asarray(model(TOKENS, adapter="head").logits)
    ckpt = save_adapter(tmp_path / "ckpt", model, "head")
    fresh = load_llama(d, progress=False)
    base = np.asarray(fresh(TOKENS).logits)
    assert load_adapter(ckpt, fresh) == "head"
    assert adapter_modules(fresh, "head") == {} and fresh.lm_head.full_copies == ("head",)
    assert fresh.lm_head.full["head"][...].dtype == jnp.bfloat16  # the copy's own dtype, not the LoRA default
    np.testing.assert_array_equal(np.asarray(fresh(TOKENS, adapter="head").logits), want)
    np.testing.assert_array_equal(np.asarray(fresh(TOKENS).logits), base)


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
