"""Teacher training speed: seconds per epoch (training plus its validation) on MovieLens, next to RecBole's.

    .venv/bin/python benchmarks/teacher_epoch.py [--datasets ml-100k,ml-1m] [--epochs 3] [--out results.json]
        [key=value ...]    # teacher config overrides, e.g. model.matmul_dtype=float32 train.steps_per_call=1

Runs ``reclm_jax.teacher.train`` with each dataset's config (``configs/teacher_<ml100k|ml1m>.yaml``; the
prepared datasets under ``$RECLM_JAX_CACHE/datasets``, made by ``python -m reclm_jax.datasets.prepare`` or the
quickstart) for ``--epochs`` epochs, one dataset per subprocess, and reads the run log: each epoch's training
and validation seconds. The epoch figure is the median over epochs 2.. (epoch 1 also compiles, or loads the
compiled step from the persistent cache; it is reported apart), plus the test HR@10 at the best epoch.

The RecBole figures are quoted, not measured here: RecBole's SASRec on one thread of this machine type, 63 s
per ML-100K epoch and 695 s per ML-1M epoch (issue 12). These 2-core machines are shared, so every result also
shows the load average and the cores the run had (its CPU seconds over its wall seconds; 2 means the machine was
ours).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECBOLE_QUOTED_S = {"ml-100k": 63.0, "ml-1m": 695.0}  # quoted (issue 12), one thread of this machine type


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_dataset(dataset: str, epochs: int, overrides: list[str]) -> dict:
    from reclm_jax.assets import cache_dir

    data = cache_dir() / "datasets" / dataset
    if not (data / "sequential.pickle").is_file():
        raise SystemExit(f"error: {data} is missing: python -m reclm_jax.datasets.prepare --dataset {dataset} "
                         f"--out {data}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "reclm_jax.teacher.train", "--config",
               f"configs/teacher_{dataset.replace('-', '')}.yaml", f"data_path={data}", f"output_dir={out}",
               f"train.max_epochs={epochs}", "train.progress=false", *overrides]
        load_start = os.getloadavg()[0]
        cpu_start, wall_start = _children_cpu(), time.perf_counter()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        load_end = os.getloadavg()[0]
        cores_used = (_children_cpu() - cpu_start) / (time.perf_counter() - wall_start)
        records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        report = json.loads((out / "metrics.json").read_text())
    per_epoch = [(r["train_seconds"], r["valid_seconds"]) for r in records if r["kind"] == "train"]
    steady = [t + v for t, v in per_epoch[1:]] or [sum(per_epoch[0])]
    return {
        "dataset": dataset,
        "epochs": len(per_epoch),
        "epoch_s": round(statistics.median(steady), 2),
        "train_s": round(statistics.median(t for t, _ in per_epoch[1:] or per_epoch), 2),
        "valid_s": round(statistics.median(v for _, v in per_epoch[1:] or per_epoch), 2),
        "first_epoch_s": round(sum(per_epoch[0]), 2),
        "run_s": report["train_seconds"],
        "test_hr@10": round(report["teacher"]["test"]["hr@10"], 4),
        "best_epoch": report["best_epoch"],
        "recbole_quoted_s": RECBOLE_QUOTED_S[dataset],
        "load_avg": [round(load_start, 2), round(load_end, 2)],
        "cores_used": round(cores_used, 2),
        "overrides": overrides,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="ml-100k,ml-1m")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("overrides", nargs="*", help="teacher config overrides (key=value)")
    a = p.parse_args()
    results = []
    print(f"{'dataset':<9}{'epoch s':>9}{'train s':>9}{'valid s':>9}{'epoch 1 s':>11}{'RecBole s (quoted)':>20}"
          f"{'ratio':>8}{'test HR@10':>12}  cores used, load avg")
    for ds in a.datasets.split(","):
        r = run_dataset(ds, a.epochs, a.overrides)
        results.append(r)
        print(f"{ds:<9}{r['epoch_s']:>9.1f}{r['train_s']:>9.1f}{r['valid_s']:>9.2f}{r['first_epoch_s']:>11.1f}"
              f"{r['recbole_quoted_s']:>20.0f}{r['recbole_quoted_s'] / r['epoch_s']:>7.1f}x"
              f"{r['test_hr@10']:>12.4f}  {r['cores_used']:.2f}, {r['load_avg'][0]:.2f} -> {r['load_avg'][1]:.2f}",
              flush=True)
    print(f"({a.epochs} epochs each; epoch s = median of epochs 2..; RecBole: SASRec on one thread of this machine "
          "type, quoted from issue 12, not measured here)")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
