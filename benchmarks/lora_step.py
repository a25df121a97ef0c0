"""Shared pieces of the LoRA SFT step benchmarks (``sft_step.py`` on CPU, ``gpu_sft.py`` on a GPU).

The JAX side always runs the library's real jitted step (``reclm_jax.sft.step.make_train_step``) with the
optimiser the trainer uses; only the model weights and the batch are made up here. Throughput does not
depend on weight values, so a randomly initialised model times the same as the pretrained one (the shapes and
the random models are in ``model_shapes.py``, shared with the decode benchmark).
"""

from __future__ import annotations

import collections
import dataclasses
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from reclm_jax.models.llama import LlamaForCausalLM
from reclm_jax.models.llama_config import LlamaConfig
from reclm_jax.models.lora import ALL_LINEARS, LoraConfig, add_lora, layer_linears, split_trainable
from reclm_jax.models.sharding import make_mesh
from model_shapes import matmul_params
from reclm_jax.train.optim import OptimConfig, make_optimizer
from reclm_jax.sft.step import Batch, make_train_step
from reclm_jax.train.runtime import Runtime
from reclm_jax.train.state import place_state

# JAX's persistent-cache events (hits, misses), counted so that a benchmark can say whether its step was loaded
# from the cache or compiled; one listener for the process (listeners cannot be removed).
_CACHE_EVENTS: collections.Counter = collections.Counter()
jax.monitoring.register_event_listener(
    lambda event, **_: _CACHE_EVENTS.update([event]) if event.startswith("/jax/compilation_cache/") else None)

# RecLM-gen's defaults: r 16, alpha 8, dropout 0.1 on every linear layer including lm_head.
LORA = LoraConfig(rank=16, alpha=8.0, dropout=0.1, targets=ALL_LINEARS + ("lm_head",))


def synthetic_batch(vocab: int, rows: int, seq: int, seed: int = 0,
                    label_from: float = 0.5) -> dict[str, np.ndarray]:
    """int32 [rows, seq] arrays: random tokens, no padding, labels from position ``int(seq * label_from)`` on
    (the part before plays the prompt, whose tokens carry no loss)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, (rows, seq), dtype=np.int64).astype(np.int32)
    loss_mask = np.zeros((rows, seq), np.int32)
    loss_mask[:, int(seq * label_from):] = 1
    return {"tokens": tokens, "attention_mask": np.ones((rows, seq), np.int32), "loss_mask": loss_mask}


@dataclasses.dataclass
class JaxStep:
    """The jitted step with its state, ready to call ``run(n)``."""

    step: object
    trainable: object
    opt_state: object
    frozen: object
    batch: Batch
    rng: jax.Array
    compile_s: float = 0.0  # trace + lower + compile (or load from the persistent cache)
    lower_s: float = 0.0  # trace + lower alone: paid on every run, cache or not
    cache_hit: bool = False  # the step's executable came from JAX's persistent compilation cache

    def run(self, n: int) -> list[float]:
        """Runs ``n`` steps; the wall time of each, waiting for its result."""
        times = []
        for _ in range(n):
            t = time.perf_counter()
            self.rng, key = jax.random.split(self.rng)
            self.trainable, self.opt_state, metrics = self.step(self.trainable, self.opt_state, self.frozen,
                                                                self.batch, key)
            jax.block_until_ready((self.trainable, metrics))
            times.append(time.perf_counter() - t)
        self.last_loss = float(metrics["loss"])
        return times


def prepare_jax_step(model: LlamaForCausalLM, arrays: dict[str, np.ndarray], mesh=None,
                     lora: LoraConfig = LORA, weighting: str = "token", accum: int = 1,
                     rng_impl: str = "threefry2x32") -> JaxStep:
    """Adds the LoRA adapter, splits the model and compiles the library's train step (AOT, so ``compile_s``
    is tracing, lowering and compiling alone, or loading the executable from JAX's persistent cache if one is
    configured: ``cache_hit``). ``arrays``: int32 [B, T] as ``synthetic_batch``; ``accum`` splits the B rows into
    that many micro-batches, accumulated inside the step (same update, less activation memory). ``rng_impl``:
    the PRNG of the dropout key ("threefry2x32", JAX's default, or "rbg": XLA's RngBitGenerator)."""
    mesh = mesh if mesh is not None else make_mesh()
    add_lora(model, lora, "default")
    graphdef, trainable, frozen = split_trainable(model, ("default",))
    tx = make_optimizer(OptimConfig(), total_steps=10_000)
    runtime = Runtime(mesh)
    trainable, opt_state, shardings = place_state(trainable, tx.init(trainable), runtime)
    step = make_train_step(graphdef, tx, weighting=weighting, dropout=lora.dropout > 0, state_shardings=shardings)
    rows = arrays["tokens"].shape[0]
    if rows % accum:
        raise ValueError(f"batch {rows} is not divisible by accum {accum}")
    rows //= accum
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    spec = P(None, ("data", "fsdp"), None) if rows % data_ways == 0 else P()
    put = {k: jax.device_put(v.reshape(accum, rows, -1), NamedSharding(mesh, spec)) for k, v in arrays.items()}
    batch = Batch(put["tokens"], put["attention_mask"], put["loss_mask"])
    rng = jax.random.key(0, impl=rng_impl)
    t = time.perf_counter()
    with runtime.activate():  # as the trainer: the activation sharding constraints apply
        lowered = step.lower(trainable, opt_state, frozen, batch, rng)
        lower_s = time.perf_counter() - t
        hits = _CACHE_EVENTS["/jax/compilation_cache/cache_hits"]
        compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    cache_hit = _CACHE_EVENTS["/jax/compilation_cache/cache_hits"] > hits
    return JaxStep(compiled, trainable, opt_state, frozen, batch, rng, compile_s, lower_s, cache_hit)


def lora_params_shape_sum(cfg: LlamaConfig) -> int:
    """Sum of (in + out) over the adapted linears (all of them, lm_head included)."""
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    per_layer = (d + cfg.num_heads * h) * 2 + (d + cfg.num_kv_heads * h) * 2 + 3 * (d + f)
    return cfg.num_layers * per_layer + d + cfg.vocab_size


FLOPS_CONVENTION = (
    "model FLOPs of one LoRA step per token = 4*N (forward 2N + backward 2N: activation gradients only, the "
    "frozen base gets no weight gradient; N = weights in matmuls incl. lm_head, embedding excluded) "
    "+ 12*L*T*heads*head_dim (attention scores and values over the full T x T square, forward + backward) "
    "+ 6*r*sum(in+out) (LoRA factors, forward + both gradients); remat recomputation not counted (MFU, not HFU)")


def lora_step_flops(cfg: LlamaConfig, rows: int, seq: int, rank: int = LORA.rank) -> float:
    """Model FLOPs of one step on [rows, seq] tokens, by ``FLOPS_CONVENTION``."""
    per_token = (4 * matmul_params(cfg) + 12 * cfg.num_layers * seq * cfg.num_heads * cfg.head_dim
                 + 6 * rank * lora_params_shape_sum(cfg))
    return float(per_token) * rows * seq


def count_check(model: LlamaForCausalLM) -> int:
    """``matmul_params`` counted from the live model (a guard that the formula matches the modules)."""
    return sum(lin.in_features * lin.out_features for lin, _ in layer_linears(model).values())  # per layer
