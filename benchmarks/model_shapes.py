"""Model shapes the accelerator benchmarks time, and random models of those shapes built on the device.

``SHAPES`` maps a benchmark's ``--model`` name to (label, HF ``config.json`` dict); ``shape_config`` turns one into
a ``LlamaConfig``, optionally shrunk to 2 tiny layers for a CPU smoke run. Throughput does not depend on weight
values, so a random model times the same as the pretrained one. Used by ``gpu_sft.py`` (LoRA step),
``gpu_decode.py`` (decoding), ``gpu_ppo.py`` (a PPO iteration) and, through ``lora_step.py``, the CPU SFT benchmark.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from reclm_jax.models.llama import LlamaForCausalLM
from reclm_jax.models.llama_config import LlamaConfig, from_hf_config
from reclm_jax.models.sharding import make_mesh, param_sharding, path_name

# config.json of SmolLM2-135M-Instruct (as converted by reclm_jax.models.fetch) and of Llama-2-7B.
SMOLLM2_135M = {
    "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
LLAMA2_7B = {
    "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2,
}


SHAPES = {"smollm2": ("SmolLM2-135M", SMOLLM2_135M), "llama2-7b": ("Llama-2-7B", LLAMA2_7B)}


def shape_hf(name: str, smoke: bool = False) -> tuple[str, dict]:
    """(label, HF ``config.json`` dict) of ``SHAPES[name]``; ``smoke``: 2 layers of hidden 64, vocab 512, 4 heads
    of 16 (GQA kept for SmolLM2), so the whole path runs on a CPU in seconds."""
    label, hf = SHAPES[name]
    hf = dict(hf)
    if smoke:
        hf.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, vocab_size=512,
                  num_attention_heads=4, num_key_value_heads=2 if name == "smollm2" else 4, head_dim=16)
        label += " (smoke: 2 tiny layers)"
    return label, hf


def shape_config(name: str, smoke: bool = False, **kwargs) -> tuple[str, LlamaConfig]:
    """(label, ``LlamaConfig``) of ``shape_hf(name, smoke)``; ``kwargs`` go to ``from_hf_config`` (dtypes, remat,
    kernels)."""
    label, hf = shape_hf(name, smoke)
    return label, from_hf_config(hf, source=label, **kwargs)


def random_llama(cfg: LlamaConfig, mesh=None, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised model (weights N(0, 0.02), norms 1) whose parameters are created on the device,
    each straight into its ``NamedSharding`` on ``mesh``: nothing of model size is built on the host.

    One small jitted generator per distinct (shape, dtype, sharding), not one program for the whole model:
    XLA:GPU took over 170 s to compile a single init program for SmolLM2-135M (H200, jax 0.11.2), while a
    Llama has only about eight distinct parameter shapes.
    """
    mesh = mesh if mesh is not None else make_mesh()
    abstract = nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)
    generators: dict = {}

    def generator(shape, dtype, sharding, ones: bool):
        key = (shape, jnp.dtype(dtype).name, sharding, ones)
        if key not in generators:
            def make(rng):
                if ones:
                    return jnp.ones(shape, dtype)
                return (jax.random.normal(rng, shape, jnp.float32) * 0.02).astype(dtype)

            generators[key] = jax.jit(make, out_shardings=sharding)
        return generators[key]

    root = jax.random.key(seed)
    placed = []
    for i, (path, var) in enumerate(nnx.to_flat_state(abstract_state)):
        name = path_name(path)
        value = var.get_value()
        shape = tuple(value.shape)
        sharding = param_sharding(name, shape, mesh, cfg)
        make = generator(shape, value.dtype, sharding, ones=name.endswith("norm.weight"))
        placed.append((path, var.replace(make(jax.random.fold_in(root, i)))))
    return nnx.merge(graphdef, nnx.from_flat_state(placed))


def matmul_params(cfg: LlamaConfig) -> int:
    """Weights that take part in a matmul per token: every decoder linear plus the lm_head (the embedding
    lookup is not a matmul)."""
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    attn = d * cfg.num_heads * h * 2 + d * cfg.num_kv_heads * h * 2
    mlp = 3 * d * f
    return cfg.num_layers * (attn + mlp) + d * cfg.vocab_size
