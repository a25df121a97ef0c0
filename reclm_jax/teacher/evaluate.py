"""Evaluates a teacher run folder: ``python -m reclm_jax.teacher.evaluate --checkpoint RUN_DIR [--data_path DIR]``.

Prints valid/test HR@10/20 and NDCG@10/20 (full ranking, seen items masked) of the saved best model next to
the popularity baseline, and writes them to ``<RUN_DIR>/eval.json``. Useful for a run stopped by hand, whose
training never reached its own final report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flax import nnx

from reclm_jax.atomic import write_json_atomic
from reclm_jax.cli import run_main
from reclm_jax.datasets.raw import load_raw
from reclm_jax.errors import UserError
from reclm_jax.teacher.checkpoint import load_items, load_model, load_run_config
from reclm_jax.teacher.splits import build_splits
from reclm_jax.teacher.train import final_metrics, format_report, make_score_fn


def evaluate_run(run_dir: str | Path, data_path: str | Path | None = None) -> dict:
    cfg = load_run_config(run_dir)
    data = data_path or cfg.data_path
    raw = load_raw(data, item_index="id")
    items = load_items(run_dir)
    if set(items) != set(raw.items):
        raise UserError(f"{data}: its items differ from those of the teacher in {run_dir}")
    model = load_model(run_dir, cfg, len(items))
    splits = build_splits(raw.sequential, {i: k + 1 for k, i in enumerate(items)}, cfg.model.window)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    score = make_score_fn(graphdef)
    bs = min(cfg.train.eval_batch_size, len(splits.valid))
    return final_metrics(lambda h: score(params, rest, h), splits, len(items) + 1, bs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.teacher.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="teacher run folder (training output_dir)")
    p.add_argument("--data_path", default=None, help="raw dataset folder (default: the run's config)")
    a = p.parse_args(argv)
    report = evaluate_run(a.checkpoint, a.data_path)
    write_json_atomic(Path(a.checkpoint) / "eval.json", report)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    run_main(main)
