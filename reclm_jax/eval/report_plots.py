"""The report's PNG plots (matplotlib, Agg): per-task headline metrics and the control metrics per intention.

Every bar chart has one bar per run in the order given: models in colour, the teacher and popularity baselines
in grey with hatching, so "models vs baselines" reads at a glance. Plots use our counting (failures count);
the tables give both. Figures are 1200 px wide at 100 dpi, so they read at 100% zoom in the HTML page.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from tqdm import tqdm  # noqa: E402

from reclm_jax.eval.report_data import Comparison, ReportRun  # noqa: E402
from reclm_jax.eval.report_metrics import (DESCRIPTIONS, FRACTION_METRICS, arrow, control_panels, direction,  # noqa: E402
                                          headline_metrics, short_task, task_slug)
from reclm_jax.eval.report_tables import ARROWS  # noqa: E402

COUNTING = "reclm"
DPI = 100
WIDTH_IN = 12.0
_MODEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                  "#bcbd22")
_BASELINE_STYLE = {"teacher": ("#4d4d4d", "//"), "popularity": ("#b0b0b0", "..")}


def run_styles(runs: tuple[ReportRun, ...]) -> list[dict]:
    """Bar keyword arguments per run: colour and hatch (baselines grey and hatched)."""
    styles, i = [], 0
    for r in runs:
        if r.kind in _BASELINE_STYLE:
            colour, hatch = _BASELINE_STYLE[r.kind]
            styles.append({"color": colour, "hatch": hatch, "edgecolor": "black", "linewidth": 0.6})
        else:
            styles.append({"color": _MODEL_COLOURS[i % len(_MODEL_COLOURS)], "edgecolor": "black",
                           "linewidth": 0.6})
            i += 1
    return styles


def _legend_handles(comparison: Comparison, styles: list[dict]) -> list:
    return [Patch(facecolor=s["color"], hatch=s.get("hatch"), edgecolor="black",
                  label=f"{r.label} ({r.kind})") for r, s in zip(comparison.runs, styles)]


def _grouped(ax, groups: list[str], values: list[list[float | None]], styles: list[dict],
             refs: list[list[float | None]] | None = None, label_fmt: str | None = "{:.2f}") -> bool:
    """Grouped bars on ``ax``: x = ``groups``, one bar per run in each group (``values[run][group]``; None draws
    no bar and "n/a"); ``refs`` (same layout) as black ticks across the bars. Returns whether a tick was drawn."""
    n = len(values)
    width = 0.8 / n
    shown, ticked = [], False
    for j, (vals, s) in enumerate(zip(values, styles)):
        xs = [g + (j - (n - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [0 if v is None else v for v in vals], width, color=s["color"], hatch=s.get("hatch"),
                      edgecolor="black", linewidth=0.6)
        shown += vals
        for bar, v in zip(bars, vals):
            x = bar.get_x() + bar.get_width() / 2
            if v is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
            elif label_fmt:
                ax.text(x, v, label_fmt.format(v), ha="center", va="bottom", fontsize=7)
        if refs is not None:
            pts = [(x, r) for x, r in zip(xs, refs[j]) if r is not None]
            if pts:
                ticked = True
                ax.hlines([p[1] for p in pts], [p[0] - width * 0.45 for p in pts], [p[0] + width * 0.45 for p in pts],
                          colors="black", linewidth=2.5, zorder=3)
                shown += [p[1] for p in pts]
    top = max([v for v in shown if v is not None] + [0.0])
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    pad = 0.85 if len(groups) == 1 else 0.5  # one group: keep its bars from filling the whole panel
    ax.set_xlim(-pad, len(groups) - 1 + pad)
    ax.set_xticks(range(len(groups)), groups, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return ticked


def _finish(fig, comparison: Comparison, styles: list[dict], title: str, path: Path, extra=()) -> Path:
    # Fixed margins instead of tight_layout: laying out measures every text again, which doubled the time.
    handles = _legend_handles(comparison, styles) + list(extra)
    fig.suptitle(title, fontsize=12)
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=9, frameon=False)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def task_plot(comparison: Comparison, task: str, path: Path) -> Path | None:
    """The headline metrics of ``task`` (``report_metrics.headline_metrics``) in two panels, fractions of the
    samples and items per list (their scales differ), one bar per run; None (nothing written) when the task has
    none of them."""
    table = comparison.tables[COUNTING][task]
    metrics = [m for m in headline_metrics(task) if m in table and any(v is not None for v in table[m])]
    panels = [(name, [m for m in metrics if (m in FRACTION_METRICS) == frac])
              for name, frac in (("fraction of the samples", True), ("items per list", False))]
    panels = [(name, ms) for name, ms in panels if ms]
    if not panels:
        return None
    styles = run_styles(comparison.runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(WIDTH_IN, 4.6), squeeze=False,
                             gridspec_kw={"width_ratios": [len(ms) for _, ms in panels]})
    fig.subplots_adjust(left=0.07, right=0.98, top=0.87, bottom=0.24, wspace=0.18)
    for ax, (name, ms) in zip(axes.flat, panels):
        values = [[table[m][i] for m in ms] for i in range(len(comparison.runs))]
        _grouped(ax, [f"{m}{ARROWS.get(direction(task, m), '')}" for m in ms], values, styles,
                 label_fmt="{:.2f}" if len(comparison.runs) * len(ms) <= 24 else None)
        ax.set_ylabel(name, fontsize=9)
        ax.set_xlabel("metric (↑ higher is better, ↓ lower is better)", fontsize=9)
    return _finish(fig, comparison, styles, f"{task}: headline metrics (our counting: failures count)", path)


def control_plot(comparison: Comparison, path: Path) -> Path | None:
    """One panel per intention (+C, -C, LP/EP/MP, ItemCount) among the common tasks: grouped bars (x: the
    intention's tasks, one bar per run) of the metric that judges it, with the same measure on each run's own
    SeqRec list as a black tick where the task has one. None when no control task is present."""
    panels = control_panels(comparison.tasks)
    if not panels:
        return None
    styles = run_styles(comparison.runs)
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH_IN, 3.6 * rows + 1.3), squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.7 / (3.6 * rows + 1.3), bottom=1.0 / (3.6 * rows + 1.3),
                        hspace=0.45, wspace=0.22)
    ticked = False
    for ax, panel in zip(axes.flat, panels):
        values = [[comparison.value(COUNTING, t, panel.metric, r.label) for t in panel.tasks] for r in comparison.runs]
        refs = None if panel.reference is None else [
            [comparison.value(COUNTING, t, panel.reference, r.label) for t in panel.tasks] for r in comparison.runs]
        ticked |= _grouped(ax, [short_task(t) for t in panel.tasks], values, styles, refs)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(f"{DESCRIPTIONS.get(panel.metric, panel.metric)}{arrow(panel.tasks[0], panel.metric)}",
                      fontsize=9)
        ax.set_xlabel("task", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    extra = [Line2D([], [], color="black", linewidth=2.5, label="same measure on the run's own SeqRec list")]
    return _finish(fig, comparison, styles, "Control metrics per intention (our counting: failures count)", path,
                   extra if ticked else ())


def write_plots(comparison: Comparison, out_dir: Path, progress: bool = False) -> dict[str, str]:
    """Writes every plot into ``out_dir/plots/``; returns ``{"control": path, task: path, ...}`` (paths
    relative to ``out_dir``; a key is absent when its plot has nothing to show)."""
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    with tqdm(total=1 + len(comparison.tasks), desc="plots", unit="plot", leave=False, disable=not progress) as bar:
        written = {"control": control_plot(comparison, plots / "control.png")}
        bar.update()
        for t in comparison.tasks:
            written[t] = task_plot(comparison, t, plots / f"task_{task_slug(t)}.png")
            bar.update()
    return {k: p.relative_to(out_dir).as_posix() for k, p in written.items() if p is not None}
