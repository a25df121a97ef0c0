"""Run by test_sharding.py in a fresh process: 8 simulated CPU devices, mesh (data 2, fsdp 2, tp 2).

Prints one JSON line of findings; the test asserts on them.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import jax.numpy as jnp  # noqa: E402

from reclm_jax.models.generation import LogitsProcessor, generate  # noqa: E402
from reclm_jax.models.hf_loading import load_llama  # noqa: E402
from reclm_jax.models.lora import LoraConfig, add_lora  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from reclm_jax.models.sampler import Sampler, read_rows  # noqa: E402
from reclm_jax.models.sharding import MeshConfig, make_mesh, path_name  # noqa: E402
from reclm_jax.train.runtime import Runtime  # noqa: E402


class BanPerRow(LogitsProcessor):
    row_fields = ("banned",)

    def process(self, state, logits, step, data):
        return jnp.where(jnp.arange(logits.shape[-1])[None] == data["banned"][:, None], -jnp.inf, logits)


def main(model_dir: str) -> None:
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tp=2))
    single = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    sharded_model = load_llama(model_dir, mesh=mesh, progress=False)
    single_model = load_llama(model_dir, mesh=single, progress=False)
    add_lora(sharded_model, LoraConfig(rank=4, targets=("q_proj", "o_proj")), "actor", full_tune=("lm_head",))
    specs = {path_name(p): [list(a) if isinstance(a, tuple) else a for a in v[...].sharding.spec]
             for p, v in nnx.to_flat_state(nnx.state(sharded_model))}
    tokens = np.random.default_rng(0).integers(4, 500, (4, 32))
    mask = np.ones_like(tokens)
    mask[1, :5] = 0

    @jax.jit
    def logits(state, tokens, mask):
        graphdef = nnx.graphdef(sharded_model)
        return nnx.merge(graphdef, state)(tokens, attention_mask=mask).logits

    with jax.set_mesh(mesh):
        a = np.asarray(logits(nnx.state(sharded_model), tokens, mask))
    b = np.asarray(single_model(tokens, attention_mask=mask).logits)
    prompts = [t[:n].tolist() for t, n in zip(tokens, (5, 9, 3, 7))]
    ga = generate(sharded_model, prompts, max_new_tokens=8, pad_id=3).token_lists()
    gb = generate(single_model, prompts, max_new_tokens=8, pad_id=3).token_lists()
    # An explicit Runtime: the program runs under jax.set_mesh, batch rows are placed with runtime.place.
    sampler = Sampler(sharded_model, pad_id=3, runtime=Runtime(mesh))
    gs = sampler(prompts, max_new_tokens=8)
    gs5 = sampler(prompts, max_new_tokens=5).token_lists()
    banned = {"banned": gs.tokens[:, 0]}
    gs_ban = sampler(prompts, max_new_tokens=8, logits_processor=BanPerRow(), processor_data=banned)
    single_ban = Sampler(single_model, pad_id=3)(prompts, max_new_tokens=8, logits_processor=BanPerRow(),
                                                 processor_data=banned)
    # the Sampler reads results from the shards: rows split over data x fsdp, columns over tp, replicas
    grid = np.arange(8 * 6).reshape(8, 6)
    placed = jax.device_put(grid, NamedSharding(mesh, P(("data", "fsdp"), "tp")))
    read_ok = bool((read_rows(placed, np.array([5, 1, 6])) == grid[[5, 1, 6]]).all())
    print(json.dumps({"devices": jax.device_count(), "read_rows_ok": read_ok, "specs": specs, "max_diff": float(np.abs(a - b).max()),
                      "generate_equal": ga == gb, "sampler_equal": gs.token_lists() == gb,
                      "sampler_prefix_equal": gs5 == [t[:5] for t in gb], "sampler_traces": sampler.traces,
                      "row_data_equal": gs_ban.token_lists() == single_ban.token_lists(),
                      "row_data_applied": bool((gs_ban.tokens[:, 0] != gs.tokens[:, 0]).all()),
                      "device_count_of_kernel": len(sharded_model.model.layers[0].mlp.up_proj.kernel[...]
                                                    .sharding.device_set)}))


if __name__ == "__main__":
    main(sys.argv[1])
