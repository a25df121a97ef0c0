"""Run by test_runtime.py in a fresh process with 8 simulated CPU devices (mesh data 2, fsdp 2, tp 2).

Builds the SFT step on a tiny model and prints one JSON line: how many sharding constraints the lowered step
holds with and without the runtime's mesh set, and the losses of a few steps in each case and on one device.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402

from reclm_jax.models.lora import LoraConfig  # noqa: E402
from reclm_jax.models.sharding import MeshConfig  # noqa: E402
from reclm_jax.sft.step import Batch, make_train_step  # noqa: E402
from reclm_jax.train.backbone import ModelSettings, load_backbone  # noqa: E402
from reclm_jax.train.optim import OptimConfig, make_optimizer  # noqa: E402
from reclm_jax.train.runtime import Runtime  # noqa: E402
from reclm_jax.train.state import place_state  # noqa: E402

CONSTRAINT_MARKERS = ("sdy.sharding_constraint", "@Sharding", "mhlo.sharding_constraint")


def constraints(text: str) -> int:
    return sum(text.count(m) for m in CONSTRAINT_MARKERS)


def losses(model_dir: str, runtime: Runtime, activate: bool, tokens, loss_mask) -> tuple[list[float], int]:
    settings = ModelSettings(path=model_dir, param_dtype="float32", dtype="float32")
    lora = LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj", "lm_head"))
    bb = load_backbone(settings, {"default": lora}, runtime, progress=False)
    tx = make_optimizer(OptimConfig(lr=1e-2, warmup_ratio=0.0), 100)
    tr, opt, sh = place_state(bb.trainable, tx.init(bb.trainable), runtime)
    step = make_train_step(bb.graphdef, tx, dropout=False, state_shardings=sh)
    batch = Batch(*(runtime.place(x[None], batch_dim=1) for x in (tokens, np.ones_like(tokens), loss_mask)))
    ctx = runtime.activate() if activate else _null()
    out, n = [], 0
    with ctx:
        n = constraints(step.lower(tr, opt, bb.frozen, batch, jax.random.key(0)).as_text())
        for i in range(3):
            tr, opt, m = step(tr, opt, bb.frozen, batch, jax.random.key(i))
            out.append(float(m["loss"]))
    return out, n


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main(model_dir: str) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 500, (8, 48)).astype(np.int32)
    loss_mask = np.zeros_like(tokens)
    loss_mask[:, 30:] = 1
    mesh_rt = Runtime.create(MeshConfig(data=2, fsdp=2, tp=2))
    one_rt = Runtime.create(MeshConfig(data=1), devices=jax.devices()[:1])
    on, n_on = losses(model_dir, mesh_rt, True, tokens, loss_mask)
    off, n_off = losses(model_dir, mesh_rt, False, tokens, loss_mask)
    single, _ = losses(model_dir, one_rt, True, tokens, loss_mask)
    print(json.dumps({"devices": jax.device_count(), "constraints_with_mesh": n_on, "constraints_without": n_off,
                      "losses_mesh": on, "losses_no_mesh": off, "losses_single": single}))


if __name__ == "__main__":
    main(sys.argv[1])
