"""One PPO iteration of one model shape on an accelerator, split into its phases (called by ``benchmarks/gpu.sh``).

    python benchmarks/gpu_ppo.py --model {smollm2,llama2-7b} [--prompts 8] [--samples 2] [--prompt-len 256]
                                 [--new-tokens 128] [--iterations 2] [--smoke] [--json FILE]

The iteration is the RL trainer's own (``RLTrainer.train_iteration`` with ``sync_timing``, as ``rl_step.py`` runs
it: ``rl_phases.run_iterations``), on a random model built on the device (``model_shapes.random_llama``) in the
SmolLM2-135M or Llama-2-7B shape: no model files, no dataset, no teacher. Its folder holds only the shape's
``config.json`` and the tests' tiny byte-level BPE tokenizer (``reclm_jax.testing.tiny_model``; 512 ids, so the
prompts use the first 512 of the vocabulary and generated ids past it decode to nothing; the toy reward reads
ids, not text). Prompts: ``--prompts`` synthetic recommendation prompts of about ``--prompt-len`` tokens; reward:
the toy token reward (``rl.toy``: the reward phase costs nothing). Every other setting is
``configs/rl_smollm2_ml1m.yaml``'s, the paper run's PPO: one greedy and ``--samples - 1`` sampled responses
(top-k 20, temperature 0.7), 4 epochs of mini-batches of 4, the KLT-0.05 early stop, LoRA r 4 actor and critic,
the actor's own fp32 lm_head, the value head; bf16 frozen weights and compute; ``kernels: auto`` (xla on a GPU).
``rollout.max_new_tokens = --new-tokens`` in one response bucket, so no shape changes between iterations.

The first iteration compiles (untimed); ``--iterations`` timed ones follow. Printed: the median timed iteration's
rollout / reward / old + reference log-probs and values (with the advantages' small pass) / update seconds, the
rollout's tokens/s (generated tokens, each response up to and including its stop token, over the rollout phase:
both generation calls, detokenising and placing the batch), the optimiser updates, and per phase the compile
time (warm-up minus median timed iteration). A random model seldom emits the stop id, so responses run to
``--new-tokens``. ``--smoke``: 2 tiny layers, short prompts and responses, one timed iteration (a CPU check).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rl_phases import CONFIG, PHASES, CountingScorer, compile_split, rl_overrides, run_iterations  # noqa: E402
from rl_phases import dash as _f, median, synthetic_samples, timed_summary  # noqa: E402


def summarise(iterations: list[dict]) -> dict:
    """``run_iterations`` output (the first a warm-up) -> medians over the timed iterations of each phase, the
    iteration (sum of the phases), rollout tokens/s and updates; compile seconds per phase; recompilations."""
    timed = iterations[1:]
    rates = [it["tokens"] / it["rollout"] for it in timed if it.get("tokens") is not None and it["rollout"] > 0]
    s = timed_summary(timed, 4)
    return {
        "phases_s": s["phases_s"],
        "iteration_s": s["iteration_s"],
        "rollout_tokens": median([it.get("tokens") for it in timed], 4),
        "rollout_tok_s": median(rates, 1),
        "updates": s["updates"],
        "epochs": median([it["epochs"] for it in timed], 4),
        "warmup_s": round(iterations[0]["wall"], 2),
        "compile_s": compile_split(iterations),
        "programs_compiled": iterations[0]["compiled"],
        "recompiled_in_timed_iterations": s["recompiled_in_timed_iterations"],
    }


def report(r: dict) -> str:
    """The printed lines of one result (``summarise``'s keys plus the run's model, device, sizes, memory)."""
    ph, c = r["phases_s"], r["compile_s"]
    lines = [f"{r['model']} PPO iteration | {r['device']} | {r['prompts']} prompts x {r['samples']} responses, prompt "
             f"~{_f(r['prompt_tokens_mean'], '{:.0f}')} + up to {r['new_tokens']} new tokens | "
             f"{_f(r['iteration_s'])} s = " + " + ".join(f"{p} {_f(ph[p])}" for p in PHASES)
             + f" s | rollout {_f(r['rollout_tok_s'], '{:.0f}')} tok/s ({_f(r['rollout_tokens'], '{:.0f}')} tokens) | "
             f"{_f(r['updates'], '{:.0f}')} updates in {_f(r['epochs'], '{:.0f}')} epochs | peak mem "
             f"{_f(r['peak_mem_gib'])} GiB",
             f"  [{r['model']}] compile ({r['programs_compiled']} programs; warm-up iteration {_f(r['warmup_s'])} s): "
             + ", ".join(f"{p} {_f(c[p], '{:.1f}')} s" for p in PHASES)]
    if r["recompiled_in_timed_iterations"]:
        lines.append(f"  warning: {r['recompiled_in_timed_iterations']} programs compiled during timed iterations")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("smollm2", "llama2-7b"), default="smollm2")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=2, help="responses per prompt: 1 greedy + samples-1 sampled")
    p.add_argument("--prompt-len", type=int, default=None, help="synthetic prompts' tokens; default 256")
    p.add_argument("--new-tokens", type=int, default=None, help="default 128")
    p.add_argument("--iterations", type=int, default=None, help="timed iterations after the warm-up; default 2")
    p.add_argument("--smoke", action="store_true", help="2 tiny layers, prompt 48 + 8 new tokens: a CPU check")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = p.parse_args()
    for key, full, smoke in (("prompt_len", 256, 48), ("new_tokens", 128, 8), ("iterations", 2, 1)):
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)

    import jax

    from model_shapes import random_llama, shape_hf
    from reclm_jax.config import load_config
    from reclm_jax.models.llama_config import from_hf_config
    from reclm_jax.models.tokenizer import load_tokenizer
    from reclm_jax.rl.config import RLConfig
    from reclm_jax.rl.data import ListSource, prompt_ids
    from reclm_jax.rl.toy import TokenModulusReward
    from reclm_jax.rl.trainer import RLTrainer
    from reclm_jax.testing.tiny_model import build_tokenizer
    from reclm_jax.train.runtime import Runtime

    work = Path(tempfile.mkdtemp(prefix="reclm_jax_gpu_ppo_"))
    label, hf = shape_hf(args.model, args.smoke)
    args.model = str(build_tokenizer(work / "model"))  # the model folder rl_overrides names: tokenizer + config
    (work / "model" / "config.json").write_text(json.dumps(hf))
    cfg = load_config(RLConfig, CONFIG, rl_overrides(args, work))
    runtime = Runtime.create(cfg.mesh)
    m = cfg.model
    model_cfg = from_hf_config(hf, source=label, param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat,
                               kernels=m.kernels)
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    t = time.perf_counter()
    model = random_llama(model_cfg, mesh=runtime.mesh)
    jax.block_until_ready(jax.tree.leaves(model))
    init_s = time.perf_counter() - t
    print(f"  [{label}] random init on {kind}: {init_s:.1f} s", flush=True)

    tok = load_tokenizer(args.model)
    samples = synthetic_samples(tok, args.prompts, args.prompt_len)
    t = time.perf_counter()
    trainer = RLTrainer(cfg, progress=False, runtime=runtime, scorer=CountingScorer(TokenModulusReward(
        cfg.reward.toy_modulus)), source=ListSource(samples), val_samples=[], sync_timing=True, model=model)
    setup_s = time.perf_counter() - t
    del model
    with runtime.activate():
        iterations = run_iterations(trainer, samples, 1 + args.iterations)

    mem = (dev.memory_stats() or {}).get("peak_bytes_in_use") if hasattr(dev, "memory_stats") else None
    prompt_tokens = [len(x) for x in prompt_ids(samples, tok, cfg)]
    result = {"bench": "ppo", "model": label, "device": kind, "prompts": args.prompts, "samples": args.samples,
              "prompt_tokens_mean": statistics.mean(prompt_tokens), "new_tokens": args.new_tokens,
              "dtype": f"{m.param_dtype} frozen weights, {m.dtype} compute, fp32 LoRA + lm_head + AdamW",
              "kernels": model_cfg.kernels, "init_s": round(init_s, 2), "setup_s": round(setup_s, 2),
              **summarise(iterations), "iterations": iterations,
              "peak_mem_gib": None if mem is None else round(mem / 2**30, 2)}
    print(report(result), flush=True)
    print("  " + json.dumps({k: v for k, v in result.items() if k != "iterations"}), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    trainer.store.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
