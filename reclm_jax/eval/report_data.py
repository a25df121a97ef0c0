"""The evaluation report's data: evaluated runs read and checked, their scores lined up task by task.

``compare(paths)`` reads each run folder (``eval.run_dir``: run.json, scores.json), refuses what cannot be
compared (a missing folder, a run without scores) with a ``UserError``, and keeps the tasks every run has: runs
over different datasets, item indexes or task lists give warnings (listed in the report) rather than errors, so a
baseline scored on fewer tasks still shows next to the models.

Counting names: ``reclm`` (ours: failed requests and empty outputs count as failures in every average) and
``original`` (RecLM-gen's test client: such samples skipped, so its averages are over fewer samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from reclm_jax.errors import UserError
from reclm_jax.eval.report_metrics import metric_order
from reclm_jax.eval.run_dir import EvalRun, load_run


COUNTINGS = ("reclm", "original")
COUNTING_TITLES = {
    "reclm": "ours (failed requests and empty outputs count as failures)",
    "original": "the original's (failed requests and empty general-LLM lists skipped, as RecLM-gen's client)",
}
COUNT_FIELDS = ("samples", "failed", "skipped_original")
BASELINE_KINDS = ("teacher", "popularity")


@dataclass(frozen=True)
class ReportRun:
    """One column of the report: a run with its unique display ``label`` (its name; a suffix when two runs share
    one)."""
    label: str
    run: EvalRun

    @property
    def kind(self) -> str:
        return self.run.kind

    @property
    def is_baseline(self) -> bool:
        return self.run.kind in BASELINE_KINDS


@dataclass(frozen=True)
class Comparison:
    """Runs in the order given and their scores on the tasks they share.

    ``tables[counting][task][metric]`` is a list with one value per run (float or None where that run lacks the
    metric); ``counts[task][label]`` the run's ``{"samples", "failed", "skipped_original"}`` (ints or None).
    """
    runs: tuple[ReportRun, ...]
    tasks: tuple[str, ...]
    tables: dict[str, dict[str, dict[str, list[float | None]]]]
    counts: dict[str, dict[str, dict[str, int | None]]]
    warnings: tuple[str, ...] = field(default=())

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.runs]

    def value(self, counting: str, task: str, metric: str, label: str) -> float | None:
        row = self.tables[counting][task].get(metric)
        return None if row is None else row[self.labels.index(label)]


def read_run(path: str | Path) -> EvalRun:
    """An evaluated run that has scores; ``UserError`` naming the folder or file otherwise."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run folder")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder (give an evaluated run folder, the client's --output_dir)")
    run = load_run(path)
    if run.scores is None:
        raise UserError(f"{path}: no scores.json (the evaluation has not finished scoring; run python -m "
                        f"reclm_jax.eval again to resume it)")
    for key in ("reclm", "original"):
        table = run.scores.get(key)
        if not isinstance(table, dict):
            raise UserError(f"{path / 'scores.json'}: no {key!r} table")
        bad = [t for t, metrics in table.items() if not isinstance(metrics, dict)]
        if bad:
            raise UserError(f"{path / 'scores.json'}: {key}.{bad[0]} is not a {{metric: value}} object")
    return run


def _labels(runs: Sequence[EvalRun]) -> list[str]:
    labels: list[str] = []
    for r in runs:
        label, n = str(r.name), 2
        while label in labels:
            label, n = f"{r.name} ({n})", n + 1
        labels.append(label)
    return labels


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _scored_tasks(run: EvalRun) -> list[str]:
    """The run's tasks (run.json order) that its scores.json holds, then any scored task run.json omits."""
    scored = run.scores["reclm"]
    listed = [t for t in run.tasks if t in scored]
    return listed + [t for t in scored if t not in listed]


def _warnings(runs: Sequence[ReportRun], per_run: list[list[str]], common: list[str]) -> list[str]:
    out = []
    for key, what in (("data_path", "datasets"), ("item_index", "item indexes"), ("max_users", "user limits")):
        values = {r.label: r.run.info.get(key) for r in runs}
        if len({str(v) for v in values.values()}) > 1:
            listing = ", ".join(f"{k}: {v}" for k, v in values.items())
            out.append(f"the runs use different {what} ({key}: {listing}); their numbers may not compare")
    for r, tasks in zip(runs, per_run):
        extra = [t for t in tasks if t not in common]
        if extra:
            out.append(f"{r.label}: tasks not in every run left out: {', '.join(extra)}")
        if not r.run.complete:
            out.append(f"{r.label}: the run is not complete (run.json complete=false): its numbers may change")
    return out


def compare(paths: Sequence[str | Path]) -> Comparison:
    """Reads the runs at ``paths`` (in order) and lines up their scores on the tasks they all have.

    UserError: a path that is not an evaluated run with scores, or no task common to all runs.
    """
    if not paths:
        raise UserError("give at least one evaluated run folder")
    loaded = [read_run(p) for p in paths]
    runs = tuple(ReportRun(label, r) for label, r in zip(_labels(loaded), loaded))
    per_run = [_scored_tasks(r) for r in loaded]
    common = [t for t in per_run[0] if all(t in tasks for tasks in per_run[1:])]
    if not common:
        listing = "; ".join(f"{r.label}: {', '.join(t) or 'none'}" for r, t in zip(runs, per_run))
        raise UserError(f"the runs share no scored task ({listing})")
    tables: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for counting in COUNTINGS:
        tables[counting] = {}
        for task in common:
            per = [r.run.scores[counting].get(task) or {} for r in runs]
            names = metric_order({m for p in per for m in p})
            tables[counting][task] = {m: [_number(p.get(m)) for p in per] for m in names}
    counts = {task: {r.label: {f: _count(r.run, task, f) for f in COUNT_FIELDS} for r in runs} for task in common}
    return Comparison(runs, tuple(common), tables, counts, tuple(_warnings(runs, per_run, common)))


def _count(run: EvalRun, task: str, name: str) -> int | None:
    v = ((run.scores.get("counts") or {}).get(task) or {}).get(name)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
