"""LoRA SFT step throughput and MFU of one model shape on an accelerator (called by ``benchmarks/gpu.sh``).

    python benchmarks/gpu_sft.py --model {smollm2,llama2-7b} --batch 8 --seq 1024 [--remat] [--smoke]

The model is randomly initialised straight on the device (``model_shapes.random_llama``; a 7B model is never
built on the host) in the SmolLM2-135M or Llama-2-7B shape; step time does not depend on weight values.
Frozen weights are stored and multiplied in bf16, LoRA factors and AdamW state are fp32 (the trainer's
setting). The step is the library's ``make_train_step``, compiled ahead of time (compile time printed
apart), then ``--warmup`` untimed and ``--steps`` timed steps. ``--smoke`` shrinks the model to 2 small
layers so the whole path can be checked on a CPU in seconds.
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

from lora_step import (FLOPS_CONVENTION, LORA, count_check, lora_step_flops, prepare_jax_step,  # noqa: E402
                       synthetic_batch)
from model_shapes import SHAPES, matmul_params, random_llama, shape_config  # noqa: E402

# Dense bf16 tensor-core peaks from the vendor data sheets (SXM parts, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def peak_flops(device_kind: str) -> float | None:
    for name, peak in PEAK_BF16.items():
        if name in device_kind:
            return peak
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=tuple(SHAPES), default="smollm2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--remat", action="store_true")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rng-impl", choices=("threefry2x32", "rbg"), default="threefry2x32",
                   help="PRNG of the LoRA dropout key (threefry2x32 is JAX's default and the trainer's)")
    p.add_argument("--smoke", action="store_true", help="2 tiny layers (hidden 64, vocab 512): a CPU check")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--print-convention", action="store_true", help="print how MFU is counted and exit")
    args = p.parse_args()
    if args.print_convention:
        peaks = ", ".join(f"{k} {v / 1e12:g}" for k, v in PEAK_BF16.items())
        print(f"MFU = model FLOPs / step time / dense bf16 peak ({peaks} TFLOP/s). {FLOPS_CONVENTION}.")
        return

    label, cfg = shape_config(args.model, args.smoke, param_dtype=args.dtype, dtype=args.dtype, remat=args.remat)
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)

    t = time.perf_counter()
    model = random_llama(cfg)
    jax.block_until_ready(jax.tree.leaves(model))
    init_s = time.perf_counter() - t
    print(f"  [{label}] random init on {kind}: {init_s:.1f} s", flush=True)
    assert count_check(model) == matmul_params(cfg), "FLOP formula disagrees with the model's linears"
    # Labels on every position, so the step never skips the head on a label-free chunk and the FLOP count
    # (which includes the head everywhere) is the work done.
    arrays = synthetic_batch(cfg.vocab_size, args.batch, args.seq, label_from=0.0)
    js = prepare_jax_step(model, arrays, rng_impl=args.rng_impl)
    print(f"  [{label}] compiled in {js.compile_s:.1f} s", flush=True)
    del model
    js.run(args.warmup)
    times = js.run(args.steps)

    step_s = statistics.median(times)
    tokens = args.batch * args.seq
    flops = lora_step_flops(cfg, args.batch, args.seq)
    achieved = flops / step_s
    peak = peak_flops(kind) if args.dtype == "bfloat16" else None
    mem = (dev.memory_stats() or {}).get("peak_bytes_in_use") if hasattr(dev, "memory_stats") else None
    result = {
        "model": label, "device": kind, "batch": args.batch, "seq": args.seq, "remat": args.remat,
        "rng_impl": args.rng_impl,
        "dtype": f"{args.dtype} frozen weights and compute, fp32 LoRA + AdamW",
        "lora": f"r{LORA.rank} alpha{LORA.alpha:g} dropout{LORA.dropout} all linears + lm_head",
        "init_s": round(init_s, 2), "compile_s": round(js.compile_s, 1),
        "step_s_median": round(step_s, 4), "step_s_min": round(min(times), 4),
        "tokens_per_s": round(tokens / step_s, 1), "model_tflops_per_s": round(achieved / 1e12, 2),
        "mfu": None if peak is None else round(achieved / peak, 4),
        "peak_tflops_assumed": None if peak is None else peak / 1e12,
        "peak_mem_gib": None if mem is None else round(mem / 2**30, 2),
        "loss": round(js.last_loss, 4),
    }
    print(f"{label} | {kind} | batch {args.batch} x seq {args.seq} | remat {args.remat} | compile "
          f"{result['compile_s']} s | step {step_s * 1e3:.1f} ms | {result['tokens_per_s']:.0f} tok/s | "
          f"{result['model_tflops_per_s']} model TFLOP/s | MFU "
          f"{'n/a' if peak is None else f'{100 * achieved / peak:.1f}%'} | peak mem {result['peak_mem_gib']} GiB",
          flush=True)
    print("  " + json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
