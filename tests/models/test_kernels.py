"""The kernels switch: resolved once when the model is built, bad values named, and each choice really emits
its own products (``cpu``: bf16 x bf16 -> f32 dots and the blocked attention; ``xla``: plain dots and
``jax.nn.dot_product_attention``)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reclm_jax.errors import UserError
from reclm_jax.models import kernels as kernels_mod
from reclm_jax.models import native_kernels
from reclm_jax.models.kernels import resolve_kernels
from reclm_jax.models.linear import Linear
from reclm_jax.models.llama import Attention, LlamaForCausalLM
from reclm_jax.models.llama_config import LlamaConfig, from_hf_config
from reclm_jax.models.lora import ALL_LINEARS, LoraConfig, add_lora, split_trainable
from reclm_jax.testing.tiny_model import tiny_llama_config

TOKENS = np.random.default_rng(0).integers(4, 500, (2, 12))


def tiny_model(kernels: str, dtype: str = "bfloat16") -> LlamaForCausalLM:
    cfg = from_hf_config(tiny_llama_config("smollm2", 512, num_layers=1), param_dtype=dtype, dtype=dtype,
                         kernels=kernels)
    return LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))


def kernel_choices(model) -> set[str]:
    return {m.kernels for _, m in nnx.iter_modules(model) if isinstance(m, (Linear, Attention))}


def test_auto_resolves_to_cpu_here_when_the_model_is_built():
    assert jax.default_backend() == "cpu"
    assert resolve_kernels("auto") == "cpu" and resolve_kernels("xla") == "xla"
    assert from_hf_config(tiny_llama_config("llama2", 512)).kernels == "cpu"
    # A hand-built config keeps "auto" until the model is built from it.
    cfg = from_hf_config(tiny_llama_config("smollm2", 512, num_layers=1)).replace(kernels="auto")
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    assert model.config.kernels == "cpu" and kernel_choices(model) == {"cpu"}
    xla = tiny_model("xla")
    assert xla.config.kernels == "xla" and kernel_choices(xla) == {"xla"}
    # Static attributes: the choice is part of the graphdef that jit keys on.
    assert nnx.graphdef(xla) != nnx.graphdef(tiny_model("cpu"))


def test_bad_kernels_value_is_a_user_error_naming_the_key():
    hf = tiny_llama_config("llama2", 512)
    with pytest.raises(UserError, match=r"kernels must be one of auto, xla, cpu, got 'gpu'"):
        from_hf_config(hf, kernels="gpu")
    with pytest.raises(UserError, match=r"kernels must be one of auto, xla, cpu, got 'tpu'"):
        LlamaConfig(vocab_size=8, hidden_size=64, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2,
                    head_dim=32, kernels="tpu")
    with pytest.raises(UserError, match="kernels must be one of"):
        Linear(4, 4, kernels="fast", rngs=nnx.Rngs(0))


def _lowered_step(model) -> str:
    """StableHLO of one LoRA loss + gradient step (forward and backward) of ``model`` on TOKENS."""
    add_lora(model, LoraConfig(rank=4, targets=ALL_LINEARS + ("lm_head",), param_dtype="bfloat16"), "actor")
    graphdef, train, frozen = split_trainable(model, ("actor",))

    def loss(train):
        logits = nnx.merge(graphdef, train, frozen)(TOKENS, adapter="actor").logits
        return jnp.mean(logits.astype(jnp.float32) ** 2)

    return jax.jit(jax.value_and_grad(loss)).lower(train).as_text()


DOT = re.compile(r"stablehlo\.dot_general.*: \(tensor<([\dx]+)x(\w+)>, tensor<([\dx]+)x(\w+)>\) -> "
                 r"tensor<([\dx]+)x(\w+)>")


def _bf16_dots(text: str) -> list[tuple[int, str]]:
    """(rank of the result, result dtype) of every dot_general with two bf16 operands."""
    out = []
    for line in re.findall(r"stablehlo\.dot_general.*", text):
        m = DOT.search(line)
        assert m, line
        if m.group(2) == m.group(4) == "bf16":
            out.append((m.group(5).count("x") + 1, m.group(6)))
    return out


@pytest.mark.parametrize("kernels", ["cpu", "xla"])
def test_each_choice_emits_its_own_dots_and_attention(kernels, monkeypatch):
    calls = {"blocked": 0, "dpa": 0}
    blocked, dpa = kernels_mod.causal_attention, jax.nn.dot_product_attention

    def count(name, fn):
        def wrapped(*args, **kw):
            calls[name] += 1
            return fn(*args, **kw)

        return wrapped

    monkeypatch.setattr(kernels_mod, "causal_attention", count("blocked", blocked))
    monkeypatch.setattr(jax.nn, "dot_product_attention", count("dpa", dpa))
    # As on a CPU with a bf16 dot instruction (elsewhere "cpu" widens the operands: tests/models/test_matmul.py).
    monkeypatch.setattr(native_kernels, "has_bf16_dot", lambda: True)
    dots = _bf16_dots(_lowered_step(tiny_model(kernels)))
    linear = [dt for rank, dt in dots if rank == 2]  # Linear's products are 2-D (inputs flattened)
    # 7 projections + lm_head, each with a LoRA pair: forward dots alone are 8 * 3.
    assert len(linear) >= 24
    if kernels == "cpu":
        assert all(dt == "f32" for _, dt in dots), dots  # attention's and the backward's included
        assert calls == {"blocked": 1, "dpa": 0}
    else:
        assert all(dt == "bf16" for dt in linear), linear
        assert calls == {"blocked": 0, "dpa": 1}


def test_both_choices_agree_in_float32():
    tokens = np.random.default_rng(1).integers(4, 500, (2, 40))
    a, b = (np.asarray(nnx.jit(lambda m, t: m(t).logits)(tiny_model(k, "float32"), tokens)) for k in ("xla", "cpu"))
    assert np.abs(a).max() > 0.1
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_native_build_follows_the_cpu_flags():
    from reclm_jax.models.native_kernels import cpu_variant, other_builds

    avx512 = {"avx512f", "avx512bw", "avx512vl", "fma", "avx2", "f16c"}
    assert cpu_variant(avx512 | {"avx512_bf16"}) == "bf16"  # Zen 4, Zen 5, Cooper Lake: vdpbf16ps
    assert cpu_variant(avx512 | {"avx512_bf16", "amx_tile", "amx_bf16"}) == "amx"  # Sapphire Rapids: + tiles
    assert cpu_variant(avx512 | {"amx_tile", "amx_bf16"}) == "avx512"  # the amx build needs vdpbf16ps too
    assert cpu_variant(avx512) == "avx512"  # Skylake-SP, Cascade Lake: the two-FMA form
    assert cpu_variant({"avx2", "fma", "f16c"}) == "avx2"  # Zen 2, Haswell: the 256-bit kernels
    # AVX-512 without BW (the kernels' 16-bit loads and permutes) falls back to the AVX2 build
    assert cpu_variant(avx512 - {"avx512bw"}) == "avx2"
    assert cpu_variant({"avx2", "f16c"}) is None  # no FMA: the XLA path
    assert cpu_variant({"sse4_2", "avx"}) is None
    # the tests also check the AVX2 build on an AVX-512 machine (the model never uses it there)
    assert other_builds(avx512) == other_builds(avx512 | {"avx512_bf16"}) == ("avx2",)
    assert other_builds(avx512 | {"avx512_bf16", "amx_tile", "amx_bf16"}) == ("avx2",)
    assert other_builds({"avx2", "fma", "f16c"}) == other_builds(avx512 - {"f16c"}) == ()
