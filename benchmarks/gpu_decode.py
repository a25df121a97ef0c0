"""Greedy decoding throughput of one model shape on an accelerator (called by ``benchmarks/gpu.sh``).

    python benchmarks/gpu_decode.py --model {smollm2,llama2-7b} [--batches 1,64] [--prompt-len 256]
                                    [--new-tokens 128] [--repeats 3] [--smoke] [--json FILE]

The model is random (``model_shapes.random_llama``, built on the device) in the SmolLM2-135M or Llama-2-7B shape,
bf16 weights and compute, ``kernels=xla`` (plain XLA dots and ``jax.nn.dot_product_attention``: what GPUs and
TPUs run). Decoding is the library's ``Sampler`` (pad id 0, no stop ids, so every row decodes all
``--new-tokens``; greedy), on random prompts of exactly ``--prompt-len`` ids, [batch, prompt len] int32. Per batch
size: the first call (trace + compile + one run) is timed apart, then ``--repeats`` timed calls; tokens/s =
batch * new tokens / median call time (prefill included). compile_s ~= first call - median call. The weights'
read rate (bytes of the matmul weights per decode step times steps, over the call time) is a lower bound of the
memory bandwidth the loop uses, comparable to the part's peak. ``--smoke``: 2 tiny layers, a CPU check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from model_shapes import SHAPES, matmul_params, random_llama, shape_config  # noqa: E402
from reclm_jax.models.sampler import Sampler  # noqa: E402

# HBM bandwidth from the vendor data sheets (SXM parts), for the weight read rate's share of the peak.
PEAK_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "L40S": 0.864e12}


def peak_bandwidth(device_kind: str) -> float | None:
    return next((v for k, v in PEAK_BYTES_PER_S.items() if k in device_kind), None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=tuple(SHAPES), default="smollm2")
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes, one program each")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="2 tiny layers (hidden 64, vocab 512): a CPU check")
    p.add_argument("--json", default=None, help="append one JSON line per batch size to this file")
    args = p.parse_args()

    label, cfg = shape_config(args.model, args.smoke, param_dtype="bfloat16", dtype="bfloat16", kernels="xla")
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    t = time.perf_counter()
    model = random_llama(cfg)
    jax.block_until_ready(jax.tree.leaves(model))
    init_s = time.perf_counter() - t
    print(f"  [{label}] random init on {kind}: {init_s:.1f} s", flush=True)
    sampler = Sampler(model, pad_id=0)
    del model
    weight_bytes = matmul_params(cfg) * 2  # bf16; read once per decode step whatever the batch
    peak = peak_bandwidth(kind)
    rng = np.random.default_rng(0)
    for b in (int(x) for x in args.batches.split(",")):
        prompts = rng.integers(3, cfg.vocab_size, (b, args.prompt_len)).tolist()
        t = time.perf_counter()
        first = sampler(prompts, max_new_tokens=args.new_tokens)  # returns numpy: the call has finished
        first_s = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = sampler(prompts, max_new_tokens=args.new_tokens)
            times.append(time.perf_counter() - t)
        assert (out.lengths == args.new_tokens).all() and np.array_equal(out.tokens, first.tokens)
        call_s = statistics.median(times)
        read_rate = weight_bytes * args.new_tokens / call_s
        mem = (dev.memory_stats() or {}).get("peak_bytes_in_use") if hasattr(dev, "memory_stats") else None
        result = {
            "bench": "decode", "model": label, "device": kind, "batch": b, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "dtype": "bfloat16", "kernels": "xla", "init_s": round(init_s, 2),
            "first_call_s": round(first_s, 2), "compile_s": round(first_s - call_s, 2),
            "call_s_median": round(call_s, 4), "call_s_min": round(min(times), 4),
            "tokens_per_s": round(b * args.new_tokens / call_s, 1),
            "ms_per_new_token": round(call_s / args.new_tokens * 1e3, 3),  # prefill included
            "weight_read_gb_per_s": round(read_rate / 1e9, 1),
            "weight_read_share_of_peak": None if peak is None else round(read_rate / peak, 3),
            "peak_mem_gib": None if mem is None else round(mem / 2**30, 2),
        }
        share = "n/a" if peak is None else f"{100 * read_rate / peak:.0f}% of peak"
        print(f"{label} decode | {kind} | batch {b} | prompt {args.prompt_len} + {args.new_tokens} new | compile "
              f"~{result['compile_s']} s | call {call_s:.3f} s ({result['ms_per_new_token']} ms per new token) | "
              f"{result['tokens_per_s']:.0f} tok/s | weights read {result['weight_read_gb_per_s']} GB/s ({share}) | "
              f"peak mem {result['peak_mem_gib']} GiB", flush=True)
        print("  " + json.dumps(result), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
