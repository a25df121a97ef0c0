"""Compile time of one LoRA SFT train step, unrolled layers against ``model.scan_layers: true``.

    python benchmarks/compile_time.py [--layers 32] [--hidden 256] [--seq 128] [--batch 2] [--dtype bfloat16]
                                      [--remat] [--smoke] [--json FILE]

The step is the SFT trainer's own (``reclm_jax.sft.step.make_train_step`` through ``lora_step.prepare_jax_step``,
with the trainer's optimiser and RecLM-gen's adapter: r 16, alpha 8, dropout 0.1 on every linear and lm_head)
on a random Llama of ``--layers`` layers with small widths (hidden 256, head_dim 32, 8 query and 4 KV heads, MLP
1024, vocab 4096 by default), so that a deep model fits in the memory of a small CPU machine: compile time grows
with the number of layers, not with their width. Each variant compiles in its own fresh process (this script
with ``--worker``), with JAX's persistent compilation cache turned off, so neither reuses the other's or an
earlier run's programs; the figures are tracing + lowering and XLA compilation, then one step is run to show
the program works. ``--smoke``: 4 layers of hidden 128 (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import run_one  # noqa: E402  (numpy and the stdlib only)

VARIANTS = ("unrolled", "scanned")


def model_config(args):
    from reclm_jax.models.llama_config import LlamaConfig

    heads = args.hidden // 32
    return LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                       num_layers=args.layers, num_heads=heads, num_kv_heads=max(1, heads // 2), head_dim=32,
                       param_dtype=args.dtype, dtype=args.dtype, remat=args.remat,
                       scan_layers=args.worker == "scanned")


def run_worker(args) -> dict:
    """One variant in this process: build the random model, compile the step (timed), run it once."""
    import jax
    from lora_step import prepare_jax_step, synthetic_batch
    from model_shapes import random_llama

    cfg = model_config(args)
    model = random_llama(cfg)
    cpu = time.process_time()
    step = prepare_jax_step(model, synthetic_batch(cfg.vocab_size, args.batch, args.seq))
    cpu = time.process_time() - cpu
    t = time.perf_counter()
    step.run(1)
    return {"variant": args.worker, "lower_s": step.lower_s, "compile_s": step.compile_s, "compile_cpu_s": cpu,
            "cache_hit": step.cache_hit, "first_step_s": time.perf_counter() - t, "loss": step.last_loss,
            "jax": jax.__version__}


def summarize(outputs: dict[str, dict]) -> dict:
    """Both variants' figures and unrolled / scanned ratios (compile = tracing + lowering + XLA compilation, wall
    clock; compile_cpu = the worker's CPU time over the same span plus attaching the adapter, which a machine
    shared with other jobs stretches less than the wall clock)."""
    out = {}
    for v in VARIANTS:
        o = outputs[v]
        out[f"{v}_compile_s"] = round(o["compile_s"], 2)
        out[f"{v}_compile_cpu_s"] = round(o["compile_cpu_s"], 2)
        out[f"{v}_lower_s"] = round(o["lower_s"], 2)
        out[f"{v}_first_step_s"] = round(o["first_step_s"], 3)
        out[f"{v}_loss"] = round(o["loss"], 4)
    out["ratio_compile"] = round(outputs["unrolled"]["compile_s"] / outputs["scanned"]["compile_s"], 2)
    out["ratio_compile_cpu"] = round(outputs["unrolled"]["compile_cpu_s"] / outputs["scanned"]["compile_cpu_s"], 2)
    out["ratio_lower"] = round(outputs["unrolled"]["lower_s"] / outputs["scanned"]["lower_s"], 2)
    return out


def report_line(result: dict) -> str:
    """The one-line summary: both compile times (wall and CPU, tracing + lowering apart) and the ratios."""
    parts = []
    for v in VARIANTS:
        parts.append(f"{v} {result[f'{v}_compile_s']:.1f} s (CPU {result[f'{v}_compile_cpu_s']:.1f} s; tracing and "
                     f"lowering {result[f'{v}_lower_s']:.1f} s)")
    return (f"LoRA SFT step compile, {result['layers']} layers of hidden {result['hidden']}, {result['dtype']}: "
            f"{', '.join(parts)}; unrolled / scanned = {result['ratio_compile']:.2f}x wall, "
            f"{result['ratio_compile_cpu']:.2f}x CPU")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256, help="hidden size (a multiple of 64; head_dim 32)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--remat", action="store_true", help="recompute each layer in the backward pass")
    p.add_argument("--smoke", action="store_true", help="4 layers of hidden 128: the whole path in seconds")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--worker", default=None, choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.layers, args.hidden, args.vocab = 4, 128, 512
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args)), flush=True)
        return

    # Fresh compilations only: no persistent cache in the workers.
    env = dict(os.environ, RECLM_JAX_COMPILATION_CACHE="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    passthrough = ["--layers", str(args.layers), "--hidden", str(args.hidden), "--vocab", str(args.vocab),
                   "--seq", str(args.seq), "--batch", str(args.batch), "--dtype", args.dtype]
    passthrough += ["--remat"] if args.remat else []
    outputs = {}
    for variant in VARIANTS:
        result, why, tail = run_one([sys.executable, __file__, "--worker", variant, *passthrough], env)
        if result is None:
            sys.exit(f"error: the {variant} worker failed ({why}):\n{tail}")
        outputs[variant] = result
        if outputs[variant]["cache_hit"]:
            sys.exit(f"error: the {variant} step was loaded from a compilation cache; its time is not a compile")
        print(f"{variant}: compile {outputs[variant]['compile_s']:.1f} s", flush=True)
    result = {"layers": args.layers, "hidden": args.hidden, "vocab": args.vocab, "seq": args.seq,
              "batch": args.batch, "dtype": args.dtype, "remat": args.remat, "jax": outputs["scanned"]["jax"],
              "cpus": len(os.sched_getaffinity(0)), **summarize(outputs)}
    print(json.dumps(result), flush=True)
    print(report_line(result), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
