"""Teacher throughput: in-process labelling (users/s) and the HTTP service (requests/s, p50/p99 latency).

    .venv/bin/python benchmarks/teacher.py [--checkpoint RUN_DIR] [--seconds 4] [--out results.json]

Without --checkpoint it builds an ML-1M-sized stand-in (6,040 users, 3,706 items, 18 categories, the default
128-d 2-layer SASRec with random weights: serving cost does not depend on the weights). The service runs in a
subprocess; load comes from this process through raw keep-alive HTTP/1.1 connections (one per simulated
client) so the client side costs as little CPU as possible. Both share this machine's cores, so the figures
are a lower bound for a server with cores of its own.

Rows: single-user requests exactly as the original's clients send them (one user, k=10, immediately=1) at
1/16/64 concurrent clients; the same with micro-batching off (--max_batch 1: one model call per request) as
the baseline; batched requests (32 users each); then in-process ``Teacher.topk``/``ranking`` users/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_standin(root: Path, n_users: int = 6040, n_items: int = 3706, n_cats: int = 18, seed: int = 0) -> Path:
    """An ML-1M-sized raw dataset plus a random-weight teacher run folder; returns the run folder."""
    from flax import nnx

    from reclm_jax.config import save_config
    from reclm_jax.datasets.raw import write_raw
    from reclm_jax.atomic import write_json_atomic
    from reclm_jax.teacher.checkpoint import ITEMS_FILE, save_params
    from reclm_jax.teacher.config import TeacherConfig
    from reclm_jax.teacher.sasrec import SASRec

    rng = np.random.default_rng(seed)
    items = [str(i + 1) for i in range(n_items)]
    cats = {f"Genre{c}": [] for c in range(n_cats)}
    for i in items:
        for c in rng.choice(n_cats, size=int(rng.integers(1, 3)), replace=False):
            cats[f"Genre{c}"].append(i)
    meta = {i: {"title": f"Movie {i} (1999)"} for i in items}
    seqs = {f"u{u + 1}": [items[j] for j in rng.choice(n_items, int(rng.integers(20, 60)), replace=False)]
            for u in range(n_users)}
    data = write_raw(root / "data", cats, meta, seqs)
    run = root / "run"
    cfg = TeacherConfig(data_path=str(data), output_dir=str(run))
    save_config(cfg, run)
    write_json_atomic(run / ITEMS_FILE, items)
    save_params(SASRec(n_items, cfg.model, nnx.Rngs(0)), run)
    return run


async def _client(host: str, port: int, bodies: list[bytes], path: str, stop_at: float, lat: list[float],
                  errors: list[int]):
    reader, writer = await asyncio.open_connection(host, port)
    n = 0
    try:
        while time.perf_counter() < stop_at:
            body = bodies[n % len(bodies)]
            n += 1
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t0 = time.perf_counter()
            writer.write(head + body)
            header = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in header.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if not header.startswith(b"HTTP/1.1 200"):
                errors.append(int(header[9:12]))
    finally:
        writer.close()


def load(port: int, bodies: list[bytes], clients: int, seconds: float, path: str = "/inference") -> dict:
    lat: list[float] = []
    errors: list[int] = []

    async def main():
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(_client("127.0.0.1", port, bodies[c::clients] or bodies, path, stop_at, lat, errors)
                               for c in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "req_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2)}


class Service:
    def __init__(self, run: Path, *extra: str):
        from reclm_jax.service.server import free_port

        self.port = free_port()
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        self.proc = subprocess.Popen([sys.executable, "-m", "reclm_jax.teacher.serve", "--checkpoint", str(run),
                                      "--port", str(self.port), *extra], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        import requests

        deadline = time.time() + 180
        while True:
            try:
                self.health = requests.get(f"http://127.0.0.1:{self.port}/health", timeout=1).json()
                return self
            except requests.RequestException:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("service did not start: " + (self.proc.stderr.read() or ""))
                time.sleep(0.5)

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data_path", default=None)
    p.add_argument("--seconds", type=float, default=4.0, help="duration of each load level")
    p.add_argument("--clients", default="1,16,64")
    p.add_argument("--workers", type=int, default=1,
                   help="> 1 adds a row for the micro-batched service run with this many worker processes")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    a = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from reclm_jax.datasets.raw import load_raw
    from reclm_jax.teacher.checkpoint import load_run_config
    from reclm_jax.teacher.teacher import Teacher

    tmp = tempfile.TemporaryDirectory()
    run = Path(a.checkpoint) if a.checkpoint else build_standin(Path(tmp.name))
    raw = load_raw(a.data_path or load_run_config(run).data_path, item_index="id")
    users = list(raw.sequential)
    hist = {u: raw.sequential[u][:-1][-10:] for u in users}
    single = [json.dumps({"users": [u], "item_lengths": [len(hist[u])], "item_lists": [hist[u]], "k": 10,
                          "immediately": 1}).encode() for u in users[:2000]]
    batched = []
    for s in range(0, 2048, 32):
        us = users[s:s + 32]
        batched.append(json.dumps({"users": us, "item_lengths": [len(hist[u]) for u in us],
                                   "item_lists": [hist[u] for u in us], "k": 10, "immediately": 1}).encode())
    levels = [int(c) for c in a.clients.split(",")]
    results: dict = {"cpu_count": os.cpu_count(), "items": len(raw.meta), "service": []}
    extra_args = [] if a.data_path is None else ["--data_path", a.data_path]

    def report(row):
        results["service"].append(row)
        print(f"{row['mode']:<34}{row['clients']:>8}{row['req_per_s']:>10}{row['users_per_s']:>10}"
              f"{row['p50_ms']:>10}{row['p99_ms']:>10}{row['errors']:>7}", flush=True)

    print(f"{'mode':<34}{'clients':>8}{'req/s':>10}{'users/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>7}")
    modes = [("single-user, micro-batched", [], single, 1),
             ("single-user, no batching (base)", ["--max_batch", "1"], single, 1),
             ("batched 32 users/request", [], batched, 32)]
    if a.workers > 1:
        modes.insert(1, (f"single-user, {a.workers} workers", ["--workers", str(a.workers)], single, 1))
    for mode, args, bodies, per in modes:
        with Service(run, *args, *extra_args) as svc:
            load(svc.port, bodies[:50], 4, 1.0)  # warm-up: first requests compile nothing, but fill caches
            for c in levels:
                row = load(svc.port, bodies, c, a.seconds)
                row.update(mode=mode, users_per_s=round(row["req_per_s"] * per, 1))
                report(row)

    teacher = Teacher.from_checkpoint(run, a.data_path)
    hs = [hist[u] for u in users[:4096]]
    teacher.topk(hs, 10)
    teacher.ranking(hs[:1024], [raw.sequential[u][:100] for u in users[:1024]])
    t0 = time.perf_counter()
    teacher.topk(hs, 10)
    topk_rate = len(hs) / (time.perf_counter() - t0)
    cands = [list(np.random.default_rng(0).choice(raw.items, 20, replace=False)) for _ in hs]
    teacher.ranking(hs, cands)
    t0 = time.perf_counter()
    teacher.ranking(hs, cands)
    rank_rate = len(hs) / (time.perf_counter() - t0)
    results["in_process"] = {"topk10_users_per_s": round(topk_rate, 1), "ranking20_users_per_s": round(rank_rate, 1)}
    print(f"in-process Teacher.topk(k=10): {topk_rate:,.0f} users/s; Teacher.ranking(20 candidates): "
          f"{rank_rate:,.0f} users/s (batches of 4096)")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
