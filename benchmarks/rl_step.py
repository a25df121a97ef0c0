"""One PPO iteration on SmolLM2-135M-Instruct (bf16), split into its phases, and the rollout's tokens/s against
transformers ``generate`` with the same prompts and sampling, measured in the same run.

    python benchmarks/rl_step.py [--model DIR] [--data_path DIR --teacher_checkpoint RUN] [--prompts 8]
        [--samples 2] [--new-tokens 256] [--prompt-len 256] [--rounds 2] [--iterations 2] [--repeats 2]
        [--torch-threads 2] [--json FILE] [--smoke]

Model: ``--model`` (e.g. a merged SFT folder, ``python -m reclm_jax.sft.merge``'s ``RUN/merged``), default the
converted SmolLM2-135M-Instruct (``reclm_jax.models.fetch.ensure_smollm2``). Prompts: with ``--data_path`` and
``--teacher_checkpoint``, the first iteration's ``--prompts`` RL train prompts of that dataset (the RL tasks of
``configs/rl_smollm2_ml1m.yaml``) and the NR-20.1 reward; without, synthetic recommendation prompts of about
``--prompt-len`` tokens (made-up titles in the chat template) and the toy token reward (``rl.toy``: the reward
phase then costs nothing). Every other setting is ``configs/rl_smollm2_ml1m.yaml``'s (the paper run's PPO: 4
epochs of mini-batches of 4, the KLT early stop; LoRA r 4 actor and critic, the actor's own lm_head, the value
head), with ``rollout.max_new_tokens = --new-tokens`` and one response bucket of that length, so no shape changes
between iterations.

reclm-jax runs the trainer's own iteration (``RLTrainer.train_iteration`` with ``sync_timing``: each phase waits
for its device work): rollout (the kept ``Sampler``: one greedy and ``--samples - 1`` sampled responses per
prompt, top-k 20, temperature 0.7), reward, old + reference log-probs and values (one jitted pass; the
advantages' small pass added to it), update (PPO epochs of jitted optimiser steps). Its first iteration is a
warm-up and compiles; compile time per phase = the warm-up's time minus the median timed iteration's. Each
round's reclm-jax worker shares one persistent compilation cache, fresh for this run: round 1 compiles cold,
later rounds load from it (both reported).

Rollout tokens/s: generated tokens (each response up to and including its stop token) per second of the
rollout's generation alone: reclm-jax's ``Rollout.responses`` (the call an iteration makes) against
transformers ``generate`` on the same prompt ids (left-padded): ``do_sample=False`` for the greedy responses,
``do_sample=True, top_k=20, temperature=0.7, top_p=1.0`` for the sampled ones, the same ``max_new_tokens`` and
stop ids, bf16 weights, ``torch.set_num_threads(--torch-threads)``, under ``inference_mode``; best of
``--repeats`` timed calls per worker after one untimed call, median over rounds. Responses differ between the
engines (sampling; bf16 near-ties), so each engine's mean response length is printed beside its rate.

Each engine runs in its own fresh worker process (this script with ``--worker``), rounds alternating their order:
JAX's and torch's thread pools in one process slowed torch many times (see ``generate.py``). Peak memory is each
worker's ``ru_maxrss``. A first ``--worker prompts`` process writes the prompts both engines read.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import median_or_none, resolve_model, run_one  # noqa: E402  (numpy and the stdlib only)
from rl_phases import (CONFIG, PHASES, REPO, compile_split, dash as _f, rl_overrides, run_iterations,  # noqa: E402
                       synthetic_samples, timed_summary)

ENGINES = ("reclm-jax", "transformers")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# -- workers ------------------------------------------------------------------------------------------------
def prompts_worker(args) -> dict:
    """Writes ``<work>/prompts.json``: the samples and their prompt token ids (as the policy sees them)."""
    from reclm_jax.config import load_config
    from reclm_jax.models.tokenizer import load_tokenizer
    from reclm_jax.rl.config import RLConfig
    from reclm_jax.rl.data import RLData, episode_order, prompt_ids

    work = Path(args.work)
    cfg = load_config(RLConfig, CONFIG, rl_overrides(args, work))
    tok = load_tokenizer(args.model)
    if args.data_path:
        source = RLData(cfg, tok).source
        samples = source.take(0, episode_order(len(source), cfg.train.seed, 0)[:args.prompts])
    else:
        samples = synthetic_samples(tok, args.prompts, args.prompt_len)
    ids = prompt_ids(samples, tok, cfg)
    (work / "prompts.json").write_text(json.dumps({"samples": samples, "ids": ids}))
    return {"prompt_tokens": [len(x) for x in ids]}


def jax_worker(args) -> dict:
    import jax

    from reclm_jax.compile_cache import enable_compilation_cache
    from reclm_jax.config import load_config
    from reclm_jax.rl.config import RLConfig
    from reclm_jax.rl.data import ListSource
    from reclm_jax.rl.trainer import RLTrainer

    enable_compilation_cache()  # the parent chose this run's cache folder
    work = Path(args.work)
    data = json.loads((work / "prompts.json").read_text())
    cfg = load_config(RLConfig, CONFIG, rl_overrides(args, work))
    t = time.perf_counter()
    trainer = RLTrainer(cfg, progress=False, source=ListSource(data["samples"]), val_samples=[], sync_timing=True)
    out: dict = {"engine": "reclm-jax", "round": args.round, "version": f"jax {jax.__version__}",
                 "load_s": round(time.perf_counter() - t, 2), "iterations": []}
    with trainer.runtime.activate():
        out["iterations"] = run_iterations(trainer, data["samples"], 1 + args.iterations)  # the first compiles
        trainer.rollout.sampler.update_params(trainer.trainable["lora"])  # the last update donated the old ones
        out["generate"] = timed_generation(lambda: trainer.rollout.responses(data["ids"], trainer.iteration + 1)[0],
                                           args.repeats)
    out["max_rss_gib"] = round(peak_rss_gib(), 2)
    return out


class TorchRollout:
    """transformers ``generate`` doing what one rollout does: the greedy batch, then the sampled batch."""

    def __init__(self, model: str, ids: list[list[int]], args):
        import torch
        import transformers

        from reclm_jax.models.special_tokens import resolve_stop_ids
        from reclm_jax.models.tokenizer import load_tokenizer, pad_token_id

        torch.set_num_threads(args.torch_threads)
        torch.manual_seed(0)
        self.torch, self.samples = torch, args.samples
        tok = load_tokenizer(model)
        self.pad, self.stops = pad_token_id(tok), list(resolve_stop_ids(tok))
        self.model = transformers.LlamaForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()
        width = max(len(x) for x in ids)
        rows = [[self.pad] * (width - len(x)) + list(x) for x in ids]  # left-padded, as the Sampler
        self.ids = torch.tensor(rows, dtype=torch.long)
        self.mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
        base = dict(max_new_tokens=args.new_tokens, eos_token_id=self.stops, pad_token_id=self.pad)
        self.greedy = transformers.GenerationConfig(do_sample=False, **base)
        self.sampled = transformers.GenerationConfig(do_sample=True, top_k=20, temperature=0.7, top_p=1.0, **base)
        self.version = f"torch {torch.__version__}, transformers {transformers.__version__}"

    def _run(self, config, rows: int) -> list[list[int]]:
        ids, mask = self.ids.repeat_interleave(rows, 0), self.mask.repeat_interleave(rows, 0)
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=mask, generation_config=config)
        return [response_tokens(r, self.stops) for r in out[:, ids.shape[1]:].tolist()]

    def __call__(self) -> list[list[int]]:
        out = self._run(self.greedy, 1)
        if self.samples > 1:
            out += self._run(self.sampled, self.samples - 1)
        return out


def response_tokens(row: list[int], stops: list[int]) -> list[int]:
    """A generated row up to and including its first stop id (the padding after it dropped)."""
    for j, t in enumerate(row):
        if t in stops:
            return row[:j + 1]
    return row


def timed_generation(fn, repeats: int) -> dict:
    """One untimed call, then ``repeats`` timed ones: their seconds and generated-token counts."""
    first = time.perf_counter()
    fn()
    out = {"first_s": round(time.perf_counter() - first, 3), "times": [], "tokens": []}
    for _ in range(repeats):
        t = time.perf_counter()
        responses = fn()
        out["times"].append(time.perf_counter() - t)
        out["tokens"].append(sum(len(r) for r in responses))
        out["rows"] = len(responses)
    return out


def torch_worker(args) -> dict:
    data = json.loads((Path(args.work) / "prompts.json").read_text())
    t = time.perf_counter()
    engine = TorchRollout(args.model, data["ids"], args)
    out = {"engine": "transformers", "round": args.round, "version": engine.version,
           "load_s": round(time.perf_counter() - t, 2), "generate": timed_generation(engine, args.repeats)}
    out["max_rss_gib"] = round(peak_rss_gib(), 2)
    return out


WORKERS = {"prompts": prompts_worker, "reclm-jax": jax_worker, "transformers": torch_worker}


# -- parent: summary and printing ---------------------------------------------------------------------------
def generation_rate(gen: dict) -> tuple[float | None, float | None]:
    """(tokens/s of the best timed call, mean response length) of one worker's ``timed_generation``."""
    if not gen["times"]:
        return None, None
    best = min(range(len(gen["times"])), key=lambda i: gen["times"][i])
    return gen["tokens"][best] / gen["times"][best], statistics.mean(gen["tokens"]) / gen["rows"]


def summarise(outputs: list[dict]) -> dict:
    """Worker outputs (any rounds) -> phase medians and compile times (reclm-jax), rollout tokens/s of both
    engines (median over rounds of each worker's best call) and their ratio, peak memory, load times."""
    jax_runs = sorted((o for o in outputs if o["engine"] == "reclm-jax"), key=lambda o: o["round"])
    timed = [it for o in jax_runs for it in o["iterations"][1:]]
    s: dict = timed_summary(timed)
    s["compile_s"] = []
    for o in jax_runs:
        s["compile_s"].append({"round": o["round"], "programs": o["iterations"][0]["compiled"],
                               **compile_split(o["iterations"])})
    s["rollout_tok_s"], s["mean_response_tokens"], s["max_rss_gib"], s["load_s"] = {}, {}, {}, {}
    for e in ENGINES:
        runs = [o for o in outputs if o["engine"] == e]
        rates = [generation_rate(o["generate"]) for o in runs]
        s["rollout_tok_s"][e] = median_or_none([r for r, _ in rates])
        s["mean_response_tokens"][e] = median_or_none([n for _, n in rates])
        s["max_rss_gib"][e] = max((o["max_rss_gib"] for o in runs), default=None)
        s["load_s"][e] = median_or_none([o["load_s"] for o in runs])
    ours, theirs = s["rollout_tok_s"]["reclm-jax"], s["rollout_tok_s"]["transformers"]
    s["ratio_rollout_jax_over_transformers"] = round(ours / theirs, 3) if ours and theirs else None
    return s


def report(s: dict, prompts: int, samples: int, new_tokens: int) -> str:
    """The printed summary: the phase split, compile times, then the rollout against transformers."""
    ph = s["phases_s"]
    lines = [f"PPO iteration, {prompts} prompts x {samples} responses, up to {new_tokens} new tokens: "
             f"{_f(s['iteration_s'])} s = " + " + ".join(f"{p} {_f(ph[p])}" for p in PHASES)
             + f" s ({_f(s['updates'], '{:.0f}')} optimiser updates)"]
    if s["recompiled_in_timed_iterations"]:
        lines.append(f"warning: {s['recompiled_in_timed_iterations']} programs compiled during timed iterations")
    for c in s["compile_s"]:
        lines.append(f"compile, round {c['round']} ({c['programs']} programs; round 1 cold, later rounds from the "
                     "cache): " + ", ".join(f"{p} {_f(c[p], '{:.1f}')} s" for p in PHASES))
    r = s["rollout_tok_s"]
    lines.append(f"rollout generation: reclm-jax {_f(r['reclm-jax'], '{:.1f}')} tok/s "
                 f"(mean response {_f(s['mean_response_tokens']['reclm-jax'], '{:.0f}')} tokens) | transformers "
                 f"{_f(r['transformers'], '{:.1f}')} tok/s (mean response "
                 f"{_f(s['mean_response_tokens']['transformers'], '{:.0f}')} tokens) | ratio "
                 f"{_f(s['ratio_rollout_jax_over_transformers'], '{:.2f}x')}")
    lines.append("peak memory (ru_maxrss): " + ", ".join(f"{e} {_f(s['max_rss_gib'][e])} GiB" for e in ENGINES))
    return "\n".join(lines)


# -- parent: orchestration ----------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="HF Llama folder (default: the cached SmolLM2-135M-Instruct)")
    p.add_argument("--data_path", default=None, help="raw dataset folder: real RL prompts and the NR-20.1 reward")
    p.add_argument("--teacher_checkpoint", default=None, help="teacher run folder (needed with --data_path)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=2, help="responses per prompt: 1 greedy + samples-1 sampled")
    p.add_argument("--new-tokens", type=int, default=None, help="default 256")
    p.add_argument("--prompt-len", type=int, default=None, help="synthetic prompts' tokens; default 256")
    p.add_argument("--rounds", type=int, default=None, help="default 2")
    p.add_argument("--iterations", type=int, default=None, help="timed PPO iterations per round; default 2")
    p.add_argument("--repeats", type=int, default=None, help="timed rollout generations per worker; default 2")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny random model, short prompts and responses, 1 round")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    smoke = dict(new_tokens=8, prompt_len=48, rounds=1, iterations=1, repeats=1)
    for key, full in dict(new_tokens=256, prompt_len=256, rounds=2, iterations=2, repeats=2).items():
        if getattr(args, key) is None:
            setattr(args, key, smoke[key] if args.smoke else full)
    if args.worker:
        print("RESULT " + json.dumps(WORKERS[args.worker](args)), flush=True)
        return
    if bool(args.data_path) != bool(args.teacher_checkpoint):
        sys.exit("error: --data_path and --teacher_checkpoint go together (the RL tasks and reward need the teacher)")
    work = Path(tempfile.mkdtemp(prefix="reclm_jax_rl_bench_"))
    args.model = resolve_model(args.model, args.smoke, work)
    env = dict(os.environ, RECLM_JAX_COMPILATION_CACHE=str(work / "jax_cache"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    passthrough = ["--model", args.model, "--work", str(work), "--prompts", str(args.prompts), "--samples",
                   str(args.samples), "--new-tokens", str(args.new_tokens), "--prompt-len", str(args.prompt_len),
                   "--iterations", str(args.iterations), "--repeats", str(args.repeats), "--torch-threads",
                   str(args.torch_threads)]
    if args.data_path:
        passthrough += ["--data_path", args.data_path, "--teacher_checkpoint", args.teacher_checkpoint]
    result: dict = {"model": args.model, "prompts": args.prompts, "samples": args.samples,
                    "new_tokens": args.new_tokens, "data": args.data_path or "synthetic", "cpus": os.cpu_count(),
                    "torch_threads": args.torch_threads, "load_avg_start": [round(x, 2) for x in os.getloadavg()]}

    def worker(engine: str, r: int) -> dict:
        out, why, tail = run_one([sys.executable, __file__, "--worker", engine, "--round", str(r), *passthrough], env)
        if out is None:
            sys.exit(f"error: the {engine} worker failed ({why}); its folder: {work}\n{tail}")
        return out

    result["prompt_tokens"] = worker("prompts", 0)["prompt_tokens"]
    outputs = []
    for r in range(1, args.rounds + 1):
        for engine in (ENGINES if r % 2 else ENGINES[::-1]):
            outputs.append(worker(engine, r))
            rate, length = generation_rate(outputs[-1]["generate"])
            print(f"round {r}/{args.rounds} {engine}: rollout generation {_f(rate, '{:.1f}')} tok/s (mean response "
                  f"{_f(length, '{:.0f}')} tokens; load average {os.getloadavg()[0]:.2f})", flush=True)
    summary = summarise(outputs)
    result.update(summary, versions={o["engine"]: o["version"] for o in outputs}, workers=outputs,
                  load_avg_end=[round(x, 2) for x in os.getloadavg()])
    print(json.dumps({k: v for k, v in result.items() if k != "workers"}), flush=True)
    print(f"\n{Path(args.model).name}, {result['data']} prompts ({statistics.mean(result['prompt_tokens']):.0f} tokens "
          f"on average), {os.cpu_count()} CPUs, load average {result['load_avg_start'][0]} -> "
          f"{result['load_avg_end'][0]}")
    print(report(summary, args.prompts, args.samples, args.new_tokens), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
