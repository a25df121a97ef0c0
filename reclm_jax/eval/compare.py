"""Validation metrics of runs side by side, read from their ``metrics.json`` files (any stage that writes
``{"before": {...}, "after": {...}}`` with ``{"results": {task: {metric: value}}, "mean_NDCG", "mean_reward"}``).

    python -m reclm_jax.eval.compare RUN                                      # before | after of one run
    python -m reclm_jax.eval.compare base=SFT_RUN:before SFT=SFT_RUN:after+RL_RUN:before RL=RL_RUN:after

A column is ``LABEL=SOURCE[+SOURCE...]``, a source ``RUN[:before|:after]`` (default ``after``); a metric missing
from a column's first source is taken from the next (the quickstart's SFT column: the SFT run's metrics, and
the rewards, which only the RL run measures, from the RL run's validation of the same merged SFT model).

Tasks of different stages are paired by what they ask (``task_key``): SFT's validation tasks and RL's share
their users, targets, categories and prompts when both lists are parallel (``SFTTestSeqRec`` with ``RLSeqRec``,
``SFT+TestPersonalControlRec`` with ``RL+PersonalControlRec``, ``SFTTestPersonalCategoryRateEP_50`` with
``RLPersonalCategoryRateEP_50``, ...) and the same ``val_num_per_task``, so such columns are measured on the
same samples. Recall and NDCG are at k = the task's item count (10 by default): HR@10 and NDCG@10.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Sequence

from reclm_jax.errors import UserError

HEADLINE = ("CorrectCount", "NonExistRate", "RepeatRate", "Recall", "NDCG", "TargetCategoryRate",
            "CategoryRateCorrect", "RewardSum")
PHASES = ("before", "after")
_PAIR = re.compile(r"^(?:SFT|RL)([+-]?)(?:Test)?(.+)$")


def task_key(task: str) -> str:
    """What a validation task asks, without its stage: ``SFTTestSeqRec`` and ``RLSeqRec`` -> ``SeqRec``,
    ``SFT-TestPersonalControlRec`` and ``RL-PersonalControlRec`` -> ``-PersonalControlRec``."""
    m = _PAIR.match(task)
    return m.group(1) + m.group(2) if m else task


def merge_validations(validations: Sequence[dict | None]) -> dict:
    """One column from several validations: per (paired) task and metric, the first value found; the task's
    name from the first validation that has it; ``mean_NDCG`` / ``mean_reward`` likewise."""
    col: dict = {"results": {}, "names": {}}
    for v in validations:
        if not v:
            continue
        for task, row in v.get("results", {}).items():
            key = task_key(task)
            col["names"].setdefault(key, task)
            merged = col["results"].setdefault(key, {})
            for m, x in row.items():
                merged.setdefault(m, x)
        for k in ("mean_NDCG", "mean_reward"):
            if k in v:
                col.setdefault(k, v[k])
    return col


def comparison_table(columns: Sequence[tuple[str, Sequence[dict | None]]], metrics: Sequence[str] = HEADLINE) -> str:
    """Rows: task x metric (the tasks of the first column that has them, then any others), then the means over
    tasks; one column per ``(label, [validation, ...])``; "-" where a column lacks the value."""
    cols = [(label, merge_validations(vals)) for label, vals in columns]
    names: dict[str, str] = {}
    for _, c in cols:
        for key, name in c["names"].items():
            names.setdefault(key, name)
    width = [max(10, len(label)) for label, _ in cols]

    def cells(values) -> str:
        return " ".join((f"{v:.4f}" if isinstance(v, (int, float)) else "-").rjust(w) for v, w in zip(values, width))

    lines = [f"{'task':34s} {'metric':20s} " + " ".join(label.rjust(w) for (label, _), w in zip(cols, width))]
    for key, name in names.items():
        for m in metrics:
            values = [c["results"].get(key, {}).get(m) for _, c in cols]
            if any(v is not None for v in values):
                lines.append(f"{name:34s} {m:20s} {cells(values)}")
    for mean, metric in (("mean_NDCG", "NDCG"), ("mean_reward", "reward")):
        values = [c.get(mean) for _, c in cols]
        if any(v is not None for v in values):
            lines.append(f"{'mean over tasks':34s} {metric:20s} {cells(values)}")
    return "\n".join(lines)


def before_after_table(before: dict | None, after: dict, metrics: Sequence[str] = HEADLINE) -> str:
    """One run's table: its validation before training and after."""
    return comparison_table([("before", [before]), ("after", [after])], metrics)


def read_validation(source: str) -> dict:
    """``RUN[:before|:after]`` -> that validation of the run's ``metrics.json``; ``UserError`` naming what is
    missing."""
    run, phase = source, "after"
    head, _, tail = source.rpartition(":")
    if head and tail in PHASES:
        run, phase = head, tail
    path = Path(run) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{path}: not found (is {run} a run's output_dir, and has it validated yet?)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if phase not in m:
        raise UserError(f"{path}: no validation {phase} training"
                        + (" yet" if phase == "after" else " (the run was started with train.val_before=false)"))
    return m[phase]


def parse_columns(specs: Sequence[str]) -> list[tuple[str, list[dict]]]:
    """The command's column arguments -> ``comparison_table`` columns (a bare ``RUN``: its before and after)."""
    if len(specs) == 1 and "=" not in specs[0]:
        run = specs[0]
        return [("before", [read_validation(f"{run}:before")]), ("after", [read_validation(f"{run}:after")])]
    columns = []
    for spec in specs:
        label, eq, sources = spec.partition("=")
        if not eq or not label or not sources:
            raise UserError(f"column {spec!r}: expected LABEL=RUN[:before|:after][+RUN...] (or one bare RUN)")
        columns.append((label, [read_validation(s) for s in sources.split("+")]))
    return columns


def main(argv: Sequence[str] | None = None, prog: str = "python -m reclm_jax.eval.compare") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog="columns: LABEL=RUN[:before|:after][+RUN[:phase]...], or one bare RUN "
                                       "(its before and after)")
    p.add_argument("columns", nargs="+", help="a run's output_dir, or LABEL=RUN[:before|:after][+...] per column")
    args = p.parse_args(argv)
    print(comparison_table(parse_columns(args.columns)))
    return 0


if __name__ == "__main__":
    from reclm_jax.cli import run_main

    run_main(main)
