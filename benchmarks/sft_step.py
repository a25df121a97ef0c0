"""LoRA SFT step throughput on SmolLM2-135M-Instruct: reclm-jax against transformers + peft (torch), one run.

    python benchmarks/sft_step.py [--dtype bfloat16|float32] [--batch 8] [--accum 4] [--seq 512] [--rounds 3]
                                  [--torch-threads N] [--remat]

Both sides train the same adapter (r 16, alpha 8, dropout 0.1 on every linear layer including lm_head) with
AdamW (0.9/0.999, eps 1e-5, weight decay 0.01) and clipping at 1.0, on the same batch: random tokens, no
padding, labels on the second half of every row only (the first half plays the prompt); the JAX loss uses
token weighting, as HF's mean cross-entropy (the trainer's default "sequence" weighting costs the same). The
library's chunked loss skips the LM head on label-free chunks (here 1 of 4), which torch cannot. reclm-jax runs the
library's jitted ``make_train_step`` (compile timed apart, never inside the figures); torch runs the usual
eager ``loss.backward(); clip; optimizer.step()``. ``--accum A`` splits the batch into A micro-batches on both
sides (same update; a whole batch of 8 x 512 needed ~22 GB in JAX and was killed for memory beside other
jobs). ``--dtype bfloat16`` means bf16 frozen weights and compute
with fp32 LoRA factors and optimiser state in JAX, and ``torch.autocast(bfloat16)`` over fp32 weights in
torch (what a peft user writes). The machine may be shared, so the two sides alternate in ``--rounds``
rounds of ``--steps`` timed steps each and the ratio is taken of their medians; the load average is printed.
Tokens/s counts every token of the batch (``batch * seq``), prompt included, on both sides.

Each side of each round runs in a fresh worker process (this script with ``--worker``): XLA's and torch's
thread pools in one process slowed torch ~100x here, and two resident models would not fit in memory beside
other jobs. Each worker runs ``--warmup`` untimed steps first.

The JAX step goes through reclm-jax's persistent compilation cache (``reclm_jax.compile_cache``: under the cache
root, kept between invocations; ``RECLM_JAX_COMPILATION_CACHE`` picks another folder or turns it off), and each
round prints whether its step was loaded from the cache or compiled, and how long that took. Rounds after the
first do load it, but on XLA:CPU (jaxlib 0.10.2) loading this 30-layer step rebuilds its buffer assignment,
thunks and thunk execution graphs and took about as long as compiling it (203 s against 214 s on a loaded
2-CPU machine), so every round still spends minutes before its first step; none of it is in the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from lora_step import LORA, synthetic_batch  # noqa: E402

LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class TorchStep:
    """transformers + peft LoRA training step on the same batch."""

    def __init__(self, model_dir: str, arrays: dict[str, np.ndarray], bf16: bool, threads: int, accum: int = 1):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        torch.set_num_threads(threads)
        self.torch, self.bf16 = torch, bf16
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        base.config.use_cache = False
        cfg = LoraConfig(r=LORA.rank, lora_alpha=LORA.alpha, lora_dropout=LORA.dropout,
                         target_modules=LORA_MODULES, task_type="CAUSAL_LM")
        self.model = get_peft_model(base, cfg)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.params = params
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.999),
                                     eps=1e-5)
        self.tokens = torch.from_numpy(arrays["tokens"].astype(np.int64))
        self.attention = torch.from_numpy(arrays["attention_mask"].astype(np.int64))
        labels = self.tokens.clone()
        labels[torch.from_numpy(arrays["loss_mask"]) == 0] = -100  # HF's ignore index: prompt carries no loss
        self.labels = labels
        self.accum = accum
        self.trainable = sum(p.numel() for p in params)

    def run(self, n: int) -> list[float]:
        torch = self.torch
        times = []
        for _ in range(n):
            t = time.perf_counter()
            # Micro-batches weighted by their label-token share: the same gradient as the whole batch at once.
            total = (self.labels[:, 1:] != -100).sum()
            loss = 0.0
            for tok, att, lab in zip(self.tokens.chunk(self.accum), self.attention.chunk(self.accum),
                                     self.labels.chunk(self.accum)):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    part = self.model(input_ids=tok, attention_mask=att, labels=lab).loss
                part = part * ((lab[:, 1:] != -100).sum() / total)
                part.backward()
                loss = loss + part.detach()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
            self.last_loss = float(loss)
        return times


def run_worker(args, arrays: dict[str, np.ndarray]) -> dict:
    """Builds one side (``--worker torch`` or ``--worker jax``), runs warm-up and timed steps."""
    out: dict = {}
    if args.worker == "torch":
        import torch

        side = TorchStep(args.model, arrays, args.dtype == "bfloat16", args.torch_threads or os.cpu_count() or 1,
                         args.accum)
        out["version"] = f"torch {torch.__version__}"
    else:
        import jax

        import lora_step
        from reclm_jax.compile_cache import enable_compilation_cache
        from reclm_jax.models.hf_loading import load_llama

        enable_compilation_cache()  # before the first compile (jax is imported, so through jax.config)
        model = load_llama(args.model, param_dtype=args.param_dtype or args.dtype, dtype=args.dtype,
                           remat=args.remat, progress=False)
        side = lora_step.prepare_jax_step(model, arrays, accum=args.accum)
        del model
        out["version"] = f"jax {jax.__version__}"
        out["compile_s"] = round(side.compile_s, 1)
        out["lower_s"] = round(side.lower_s, 1)
        out["compile_cache_hit"] = side.cache_hit
    out["warmup_s"] = [round(x, 2) for x in side.run(args.warmup)]
    out["times"] = side.run(args.steps)
    out["loss"] = side.last_loss
    out["max_rss_gib"] = round(rss_gib(), 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None, help="HF SmolLM2 folder (default: the cached converted one)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    p.add_argument("--param-dtype", choices=("float32", "bfloat16"), default=None,
                   help="JAX frozen-weight dtype (default: --dtype)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--accum", type=int, default=4,
                   help="split the batch into this many micro-batches, gradients accumulated (both sides)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per side per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per side per round")
    p.add_argument("--remat", action="store_true", help="JAX: recompute each layer in the backward pass")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads (default: all CPUs); 1 avoids OpenMP barrier stalls when other "
                        "jobs hold cores")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.model is None:
        from reclm_jax.models.fetch import ensure_smollm2

        args.model = str(ensure_smollm2())
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    arrays = synthetic_batch(vocab, args.batch, args.seq)
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args, arrays)), flush=True)
        return

    workers = [("jax", "jax")] + ([] if args.skip_torch else [("torch", "torch")])
    threads = os.cpu_count() or 1
    tokens = args.batch * args.seq
    result: dict = {"model": Path(args.model).name, "batch": args.batch, "accum": args.accum, "seq": args.seq,
                    "dtype": args.dtype,
                    "jax_frozen_dtype": args.param_dtype or args.dtype, "remat": args.remat,
                    "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": threads,
                    "torch_threads": args.torch_threads or threads,
                    "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    passthrough = ["--model", args.model, "--dtype", args.dtype, "--batch", str(args.batch), "--seq", str(args.seq),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--accum", str(args.accum)]
    passthrough += ["--param-dtype", args.param_dtype] if args.param_dtype else []
    passthrough += ["--remat"] if args.remat else []
    passthrough += ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
    from reclm_jax.compile_cache import resolve_dir

    cache = resolve_dir()
    result["jax_compilation_cache"] = str(cache) if cache else None
    env = dict(os.environ)
    times: dict[str, list[float]] = {name: [] for name, _ in workers}
    for r in range(args.rounds):
        for name, spec in workers:
            proc = subprocess.run([sys.executable, __file__, "--worker", spec, *passthrough], env=env,
                                  capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"error: the {name} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            out = json.loads(lines[-1][7:])
            times[name] += out["times"]
            result.setdefault(f"{name}_version", out["version"])
            result.setdefault(f"{name}_warmup_s", []).extend(out["warmup_s"])
            result[f"{name}_loss"] = round(out["loss"], 4)
            result[f"{name}_max_rss_gib"] = max(out["max_rss_gib"], result.get(f"{name}_max_rss_gib", 0.0))
            compiled = ""
            if "compile_s" in out:
                for key in ("compile_s", "lower_s", "compile_cache_hit"):
                    result.setdefault(f"{name}_{key}", []).append(out[key])
                compiled = (f"; compile {out['compile_s']:.1f} s, "
                            f"{'loaded from the cache' if out['compile_cache_hit'] else 'compiled'}, "
                            f"of which tracing and lowering {out['lower_s']:.1f} s")
            print(f"round {r + 1}/{args.rounds} {name}: {tokens / statistics.median(out['times']):.1f} tok/s "
                  f"(steps {', '.join(f'{t:.1f}' for t in out['times'])} s; load {os.getloadavg()[0]:.2f}{compiled})",
                  flush=True)
    for name, _ in workers:
        result[f"{name}_tokens_per_s"] = round(tokens / statistics.median(times[name]), 1)
        result[f"{name}_step_s"] = [round(x, 2) for x in times[name]]
    if "torch_tokens_per_s" in result:
        for name, _ in workers:
            if name != "torch":
                result[f"ratio_{name}_over_torch"] = round(result[f"{name}_tokens_per_s"]
                                                           / result["torch_tokens_per_s"], 3)
    result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result), flush=True)
    summary = " | ".join(f"{name} {result[f'{name}_tokens_per_s']:.1f} tok/s" for name, _ in workers)
    for key, value in result.items():
        if key.startswith("ratio_"):
            summary += f" | {key[6:].replace('_over_', ' / ')} = {value:.2f}x"
    print(f"LoRA SFT step on this CPU, SmolLM2-135M, batch {args.batch} ({args.accum} micro-batches) x seq {args.seq}, "
          f"{args.dtype}: {summary} "
          f"(load average {result['load_avg_start'][0]} -> {result['load_avg_end'][0]}, {threads} CPUs)", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
