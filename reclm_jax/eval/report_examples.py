"""Example prompts and outputs for the report: per task, the first N samples that every run answered, so the
same users are compared across models and baselines.

A run without an outputs file for a task (e.g. a baseline scored from lists) is left out of that task's
examples and named in ``missing``; texts longer than ``MAX_CHARS`` are cut (the page stays small).
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from reclm_jax.eval.report_data import Comparison

MAX_CHARS = 4000
_FIELDS = ("input_text", "output_text", "error", "items")


@dataclass(frozen=True)
class Example:
    """One sample of one task: ``answers[label]`` holds that run's ``input_text``, ``output_text`` (str or None),
    ``error`` (str or None) and ``items`` (list of mapped titles)."""
    task: str
    index: int
    answers: dict[str, dict]


@dataclass(frozen=True)
class TaskExamples:
    task: str
    examples: tuple[Example, ...]
    missing: tuple[str, ...]  # labels of runs without outputs for this task


def _cut(text):
    if isinstance(text, str) and len(text) > MAX_CHARS:
        return text[:MAX_CHARS] + f"... [{len(text) - MAX_CHARS} more characters]"
    return text


def _clean(row: dict) -> dict:
    out = {k: _cut(row.get(k)) for k in _FIELDS}
    items = out["items"]
    out["items"] = [str(i) for i in items] if isinstance(items, list) else []
    return out


def _by_index(rows: list[dict]) -> dict[int, dict]:
    out = {}
    for row in rows:
        idx = row.get("index")
        if isinstance(idx, int) and not isinstance(idx, bool) and idx not in out:
            out[idx] = row
    return out


def select_examples(comparison: Comparison, n: int, progress: bool = False) -> list[TaskExamples]:
    """For each common task, the ``n`` lowest sample indices present in the outputs of every run that has
    outputs for the task (list in task order; ``n = 0`` gives none, reading nothing)."""
    result = []
    bar = tqdm(total=len(comparison.tasks) * len(comparison.runs) if n > 0 else 0, desc="reading outputs",
               unit="file", leave=False, disable=not progress or n == 0)
    for task in comparison.tasks:
        per_run = {}
        missing = []
        for r in comparison.runs:
            rows = _by_index(r.run.outputs(task)) if n > 0 else {}
            bar.update(1 if n > 0 else 0)
            if rows:
                per_run[r.label] = rows
            else:
                missing.append(r.label)
        examples: list[Example] = []
        if per_run and n > 0:
            shared = set.intersection(*(set(rows) for rows in per_run.values()))
            for idx in sorted(shared)[:n]:
                examples.append(Example(task, idx, {label: _clean(rows[idx]) for label, rows in per_run.items()}))
        result.append(TaskExamples(task, tuple(examples), tuple(missing) if n > 0 else ()))
    bar.close()
    return result


def examples_json(examples: list[TaskExamples]) -> dict:
    """``{task: {"missing": [labels], "examples": [{"index", "answers": {label: {...}}}]}}`` for report.json."""
    return {te.task: {"missing": list(te.missing),
                      "examples": [{"index": e.index, "answers": e.answers} for e in te.examples]}
            for te in examples}
