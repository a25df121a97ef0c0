"""Run by test_sharding.py in a fresh process: 6 simulated CPU devices, a model with SmolLM2's heads (9 query
heads, 3 KV heads, head_dim 64) on (fsdp 2, tp 3) and on (fsdp 3, tp 2), against one device.

Prints one JSON line of findings; the test asserts on them.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 6)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from reclm_jax.models.hf_loading import load_llama  # noqa: E402
from reclm_jax.models.lora import LoraConfig, add_lora, linear_modules  # noqa: E402
from reclm_jax.models.sharding import MeshConfig, make_mesh, path_name  # noqa: E402

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def build(model_dir: str, mesh):
    model = load_llama(model_dir, mesh=mesh, progress=False)
    add_lora(model, LoraConfig(rank=4, targets=ATTENTION + ("up_proj",)), "actor")
    # B starts at zero, which would hide a wrongly laid out B: give every B the same random values on every mesh
    for i, (name, lin) in enumerate(sorted(linear_modules(model).items())):
        if "actor" in lin.adapters:
            var = lin.lora["actor"]["b"]
            value = np.random.default_rng(i).normal(0, 0.05, var[...].shape).astype(np.float32)
            var.set_value(jax.device_put(value, var[...].sharding))
    return model


def layout(model) -> dict:
    """Per parameter: its spec and the shape of one device's shard."""
    out = {}
    for p, v in nnx.to_flat_state(nnx.state(model)):
        x = v[...]
        out[path_name(p)] = {"spec": [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec],
                             "shard": list(x.sharding.shard_shape(x.shape))}
    return out


def forward(model, mesh, tokens, mask, adapter):
    """Jitted logits [B, T, V] under ``mesh`` (one program per call: eager op-by-op dispatch would be slower)."""
    graphdef = nnx.graphdef(model)

    @jax.jit
    def logits(state, tokens, mask):
        return nnx.merge(graphdef, state)(tokens, attention_mask=mask, adapter=adapter).logits

    with jax.set_mesh(mesh):
        return np.asarray(logits(nnx.state(model), tokens, mask))


def main(model_dir: str) -> None:
    tokens = np.random.default_rng(0).integers(4, 300, (6, 16))
    mask = np.ones_like(tokens)
    mask[1, :4] = 0
    one = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    single = build(model_dir, one)
    want = forward(single, one, tokens, mask, "actor")
    res = {"devices": jax.device_count(),
           "adapter_effect": float(np.abs(want - forward(single, one, tokens, mask, None)).max())}
    for label, cfg in (("tp3", MeshConfig(data=1, fsdp=2, tp=3)), ("tp2", MeshConfig(data=1, fsdp=3, tp=2))):
        mesh = make_mesh(cfg)
        model = build(model_dir, mesh)
        got = forward(model, mesh, tokens, mask, "actor")
        res[label] = {"layout": layout(model), "max_diff": float(np.abs(got - want).max())}
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1])
