"""Run by test_scan_layers.py in a fresh process: a layer stack on 8 simulated CPU devices, mesh (data 2, fsdp 2,
tp 2), against the unrolled model on one device.

Prints one JSON line of findings; the test asserts on them.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from reclm_jax.models.hf_loading import load_llama  # noqa: E402
from reclm_jax.models.lora import LoraConfig, add_lora  # noqa: E402
from reclm_jax.models.sampler import Sampler  # noqa: E402
from reclm_jax.models.sharding import MeshConfig, make_mesh  # noqa: E402
from reclm_jax.train.runtime import Runtime  # noqa: E402


def main(model_dir: str) -> None:
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tp=2))
    single = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    scanned = load_llama(model_dir, mesh=mesh, kernels="xla", scan_layers=True, progress=False)
    unrolled = load_llama(model_dir, mesh=single, kernels="xla", progress=False)
    for m in (scanned, unrolled):
        add_lora(m, LoraConfig(rank=4, targets=("q_proj", "down_proj")), "default")
    q = scanned.model.layers.self_attn.q_proj
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, 100, (4, 10)), jnp.int32)
    with Runtime(mesh).activate():
        got = jax.jit(lambda t: scanned(t, adapter="default").logits)(tokens)
        gen = Sampler(scanned, pad_id=3, runtime=Runtime(mesh))([[5, 9, 11], [30, 31, 4, 8]], max_new_tokens=8)
    want = unrolled(tokens, adapter="default").logits
    ref = Sampler(unrolled, pad_id=3)([[5, 9, 11], [30, 31, 4, 8]], max_new_tokens=8)
    print(json.dumps({
        "kernel_spec": [str(a) for a in q.kernel[...].sharding.spec],
        "lora_a_spec": [str(a) for a in q.lora["default"]["a"][...].sharding.spec],
        "kernel_shards": len(q.kernel[...].sharding.device_set),
        "logits_max_diff": float(np.max(np.abs(np.asarray(got) - np.asarray(want)))),
        "logits_scale": float(jnp.max(jnp.abs(want))),
        "same_tokens": bool(np.array_equal(gen.tokens, ref.tokens)),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
