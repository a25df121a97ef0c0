"""The report's tables as data (summary, per task, failures) and as Markdown, CSV and JSON.

Per task: rows are metrics, columns are runs, once per counting (``report_data.COUNTINGS``). The summary has one
row per run and the headline metric of each task (``report_metrics.summary_metric``). The CSV is long-form
(``counting,task,metric,run,value``; the failure counts under counting ``counts``), so every number of the
report is one line and reads back without knowing the layout.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from reclm_jax.eval.report_data import COUNT_FIELDS, COUNTING_TITLES, COUNTINGS, Comparison
from reclm_jax.eval.report_metrics import HIGHER, LOWER, direction, short_task, summary_metric

ARROWS = {HIGHER: " ↑", LOWER: " ↓"}
CSV_HEADER = ("counting", "task", "metric", "run", "value")


def fmt(metric: str, value: float | None) -> str:
    """A table cell: "-" for a missing value, Count and the counts as integers, the rest with 4 decimals."""
    if value is None:
        return "-"
    if metric == "Count" or metric in COUNT_FIELDS:
        return str(int(value))
    return f"{value:.4f}"


def metric_label(task: str, metric: str) -> str:
    """The metric with an arrow saying which way is better on this task."""
    return metric + ARROWS.get(direction(task, metric), "")


def summary_columns(comparison: Comparison) -> list[tuple[str, str]]:
    """(task, metric) pairs of the summary table, in task order."""
    return [(t, m) for t in comparison.tasks for m in summary_metric(t)
            if m in comparison.tables["reclm"][t] or m in comparison.tables["original"][t]]


def summary_rows(comparison: Comparison, counting: str) -> dict[str, list[float | None]]:
    """{label: [value per summary column..., total failed, total samples]}."""
    cols = summary_columns(comparison)
    rows = {}
    for label in comparison.labels:
        values = [comparison.value(counting, t, m, label) for t, m in cols]
        failed = [comparison.counts[t][label]["failed"] for t in comparison.tasks]
        samples = [comparison.counts[t][label]["samples"] for t in comparison.tasks]
        values.append(None if any(v is None for v in failed) else float(sum(failed)))
        values.append(None if any(v is None for v in samples) else float(sum(samples)))
        rows[label] = values
    return rows


# Short names in the summary's header (its columns are many); SUMMARY_NOTE spells them out under the table.
SUMMARY_ABBREVIATIONS = {"Recall": "HR", "TargetCategoryRate": "TCR", "CategoryRateCorrect": "CRC"}
SUMMARY_NOTE = ("HR = Recall (HR@k), TCR = TargetCategoryRate (items of category C per list), "
                "CRC = CategoryRateCorrect (lists meeting the proportion), CorrectCount = lists with exactly k items; "
                "failed / samples: over all tasks.")


def summary_header(comparison: Comparison) -> list[str]:
    return [f"{short_task(t)} {SUMMARY_ABBREVIATIONS.get(m, m)}{ARROWS.get(direction(t, m), '')}"
            for t, m in summary_columns(comparison)] + ["failed", "samples"]


def best_positions(task: str, metric: str, values: list[float | None], eligible: list[bool]) -> set[int]:
    """Indices of the best value among the eligible runs (models, not baselines) for a metric with a direction;
    empty when the metric has none or fewer than two runs compare."""
    sign = direction(task, metric)
    pool = [(v, i) for i, v in enumerate(values) if v is not None and eligible[i]]
    if sign == 0 or len(pool) < 2:
        return set()
    best = max(v * sign for v, _ in pool)
    return {i for v, i in pool if v * sign == best}


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def runs_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["run", "kind", "folder", "data_path", "item_index", "max_users", "complete", "created"]
    rows = []
    for r in comparison.runs:
        info = r.run.info
        rows.append([r.label, r.kind, str(r.run.path), str(info.get("data_path")), str(info.get("item_index")),
                     str(info.get("max_users")), str(bool(info.get("complete"))), str(info.get("created"))])
    return header, rows


def failure_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Rows: tasks; cells: "failed / samples (skipped by the original: s)" per run."""
    header = ["task"] + comparison.labels
    rows = []
    for t in comparison.tasks:
        cells = [t]
        for label in comparison.labels:
            c = comparison.counts[t][label]
            cells.append(f"{fmt('failed', c['failed'])} / {fmt('samples', c['samples'])} "
                         f"(skipped {fmt('skipped_original', c['skipped_original'])})")
        rows.append(cells)
    return header, rows


def task_rows(comparison: Comparison, counting: str, task: str) -> tuple[list[str], list[list[str]]]:
    header = ["metric"] + comparison.labels
    rows = [[metric_label(task, m)] + [fmt(m, v) for v in values]
            for m, values in comparison.tables[counting][task].items()]
    return header, rows


def markdown(comparison: Comparison, title: str, created: str, plots: dict[str, str]) -> str:
    """report.md: runs, warnings, summary (both countings), control plot, failures, per-task tables and plots."""
    out = [f"# {title}", "", f"Written {created}. Arrows: ↑ higher is better, ↓ lower is better; "
           "*Rate metrics are average counts per list (divide by k for a share), the others fractions of the "
           "samples. Examples of prompts and outputs: index.html.", "", "## Runs", ""]
    out += _md_table(*runs_rows(comparison))
    if comparison.warnings:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in comparison.warnings]
    for counting in COUNTINGS:
        out += ["", f"## Summary, counting {COUNTING_TITLES[counting]}", ""]
        rows = summary_rows(comparison, counting)
        header = ["run"] + summary_header(comparison)
        names = [m for _, m in summary_columns(comparison)] + ["failed", "samples"]
        out += _md_table(header, [[label] + [fmt(m, v) for m, v in zip(names, vals)] for label, vals in rows.items()])
        out += ["", SUMMARY_NOTE]
    if "control" in plots:
        out += ["", "## Control metrics per intention", "", f"![control metrics]({plots['control']})"]
    out += ["", "## Failures (failed / samples, and how many the original's counting skipped)", ""]
    out += _md_table(*failure_rows(comparison))
    for task in comparison.tasks:
        out += ["", f"## {task}"]
        for counting in COUNTINGS:
            out += ["", f"Counting {COUNTING_TITLES[counting]}:", ""] + _md_table(*task_rows(comparison, counting, task))
        if task in plots:
            out += ["", f"![{task} metrics]({plots[task]})"]
    return "\n".join(out) + "\n"


def csv_text(comparison: Comparison) -> str:
    """report.csv: one line per number (the failure counts under counting "counts")."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for counting in COUNTINGS:
        for task in comparison.tasks:
            for metric, values in comparison.tables[counting][task].items():
                for label, v in zip(comparison.labels, values):
                    w.writerow([counting, task, metric, label, "" if v is None else repr(v)])
    for task in comparison.tasks:
        for label in comparison.labels:
            for name, v in comparison.counts[task][label].items():
                w.writerow(["counts", task, name, label, "" if v is None else v])
    return buf.getvalue()


def read_csv(text: str) -> dict[str, dict[str, dict[str, dict[str, float | None]]]]:
    """Parses ``csv_text`` back: ``{counting: {task: {metric: {run: value}}}}`` (counts as ints)."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != CSV_HEADER:
        raise ValueError(f"not a report CSV (header {rows[0] if rows else None})")
    out: dict[str, Any] = {}
    for counting, task, metric, run, value in rows[1:]:
        v = None if value == "" else (int(value) if counting == "counts" else float(value))
        out.setdefault(counting, {}).setdefault(task, {}).setdefault(metric, {})[run] = v
    return out


def report_json(comparison: Comparison, title: str, created: str, plots: dict[str, str], examples: dict) -> dict:
    """report.json: every table keyed by run label, plus the runs' run.json, warnings, plots and examples."""
    labels = comparison.labels
    summary = {}
    for counting in COUNTINGS:
        summary[counting] = {"columns": [[t, m] for t, m in summary_columns(comparison)] + [["", "failed"],
                                                                                             ["", "samples"]],
                             "rows": summary_rows(comparison, counting)}
    return {
        "title": title, "created": created,
        "runs": [{"label": r.label, "path": str(r.run.path), "info": r.run.info} for r in comparison.runs],
        "tasks": list(comparison.tasks), "warnings": list(comparison.warnings),
        "countings": {c: COUNTING_TITLES[c] for c in COUNTINGS},
        "tables": {c: {t: {m: dict(zip(labels, vals)) for m, vals in comparison.tables[c][t].items()}
                       for t in comparison.tasks} for c in COUNTINGS},
        "counts": comparison.counts, "summary": summary, "plots": plots, "examples": examples,
    }
