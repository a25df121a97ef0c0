"""The report's one HTML page (``index.html``): every table, the plots (relative paths to ``plots/``) and the
examples in ``<details>``, with inline CSS and no external resource, so it opens from ``file://``.

A small inline script marks the ``<body>`` once the page has loaded (``data-checked``, ``data-images``,
``data-images-ok`` = images with ``naturalWidth > 0``, ``data-tables``, ``data-height``): the headless-browser
check (``report_browser.page_check``) reads those from the dumped DOM. Every text from a run (names, prompts,
outputs, items, errors) is HTML-escaped.
"""

from __future__ import annotations

from html import escape

from reclm_jax.eval.report_data import COUNTING_TITLES, COUNTINGS, Comparison
from reclm_jax.eval.report_examples import TaskExamples
from reclm_jax.eval.report_metrics import DESCRIPTIONS, intention, task_slug
from reclm_jax.eval.report_tables import (best_positions, failure_rows, fmt, metric_label, runs_rows,
                                          SUMMARY_NOTE, summary_columns, summary_header, summary_rows)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1a1a1a;
       background: #fafafa; line-height: 1.4; }
main { max-width: 1240px; margin: 0 auto; padding: 16px 20px 60px; }
h1 { font-size: 1.6em; margin-bottom: 4px; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { margin-bottom: 6px; } nav a { margin-right: 12px; white-space: nowrap; }
.note { color: #555; font-size: 0.92em; }
.warnings { background: #fff6d6; border: 1px solid #e3c65a; padding: 8px 14px; }
table { border-collapse: collapse; margin: 6px 0 14px; background: white; font-size: 0.9em; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; }
th { background: #eef2f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
th.baseline { background: #e6e6e6; font-style: italic; } td.best { font-weight: bold; background: #e8f5e9; }
td.metric { white-space: nowrap; } .desc { color: #666; font-size: 0.85em; } td.metric .desc { display: block; }
.answers { display: grid; grid-template-columns: repeat(auto-fit, minmax(270px, 1fr)); gap: 4px 16px; }
.answers h4, details h4 { margin: 8px 0 2px; }
.scroll { overflow-x: auto; max-width: 100%; }
nav { line-height: 1.8; }
.pair { display: flex; flex-wrap: wrap; gap: 28px; } .pair > div { flex: 1 1 460px; min-width: 0; max-width: 100%; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; background: white; }
details { background: white; border: 1px solid #ddd; margin: 6px 0; padding: 4px 10px; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f3f3f3; padding: 6px 8px; white-space: pre-wrap; word-break: break-word; font-size: 0.85em;
      max-height: 360px; overflow: auto; }
.error { color: #a40000; } ol.items { margin: 2px 0 8px; font-size: 0.9em; }
"""

_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } }
  var b = document.body;
  b.setAttribute('data-images', String(imgs.length));
  b.setAttribute('data-images-ok', String(ok));
  b.setAttribute('data-tables', String(document.getElementsByTagName('table').length));
  b.setAttribute('data-height', String(document.documentElement.scrollHeight));
  b.setAttribute('data-checked', '1');
});
"""


def _e(x) -> str:
    return escape(str(x), quote=True)


def _anchor(task: str) -> str:
    return "task-" + task_slug(task)


def _header_cells(comparison: Comparison) -> str:
    return "".join(f'<th class="baseline" title="baseline: {_e(r.kind)}">{_e(r.label)}</th>' if r.is_baseline
                   else f'<th title="{_e(r.kind)}">{_e(r.label)}</th>' for r in comparison.runs)


def _plain_table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if i >= numeric_from else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _task_table(comparison: Comparison, counting: str, task: str) -> str:
    eligible = [not r.is_baseline for r in comparison.runs]
    rows = []
    for metric, values in comparison.tables[counting][task].items():
        best = best_positions(task, metric, values, eligible)
        cells = "".join(f'<td class="num{" best" if i in best else ""}">{_e(fmt(metric, v))}</td>'
                        for i, v in enumerate(values))
        desc = DESCRIPTIONS.get(metric)
        label = _e(metric_label(task, metric)) + (f' <span class="desc">{_e(desc)}</span>' if desc else "")
        rows.append(f'<tr><td class="metric">{label}</td>{cells}</tr>')
    return (f"<div class='scroll'><table><thead><tr><th>metric</th>{_header_cells(comparison)}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _summary_table(comparison: Comparison, counting: str) -> str:
    cols = summary_columns(comparison)
    names = [m for _, m in cols] + ["failed", "samples"]
    tasks = [t for t, _ in cols] + ["", ""]
    rows = summary_rows(comparison, counting)
    eligible = [not r.is_baseline for r in comparison.runs]
    best = [best_positions(t, m, [rows[label][j] for label in comparison.labels], eligible) if t else set()
            for j, (t, m) in enumerate(zip(tasks, names))]
    body = []
    for i, r in enumerate(comparison.runs):
        cls = ' class="baseline"' if r.is_baseline else ""
        cells = "".join(f'<td class="num{" best" if i in best[j] else ""}">{_e(fmt(m, v))}</td>'
                        for j, (m, v) in enumerate(zip(names, rows[r.label])))
        body.append(f"<tr><th{cls}>{_e(r.label)}</th>{cells}</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in ["run"] + summary_header(comparison))
    return (f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            f"<p class='note'>{_e(SUMMARY_NOTE)}</p>")


def _answer(label: str, answer: dict, prompt0: str | None) -> str:
    parts = [f"<div><h4>{_e(label)}</h4>"]
    if answer.get("input_text") is not None and answer["input_text"] != prompt0:
        parts.append(f"<details><summary>this run's prompt (differs)</summary><pre>{_e(answer['input_text'])}"
                     f"</pre></details>")
    if answer.get("error"):
        parts.append(f'<p class="error">error: {_e(answer["error"])}</p>')
    out = answer.get("output_text")
    parts.append(f"<pre>{_e(out)}</pre>" if out is not None else '<p class="error">no output</p>')
    items = answer.get("items") or []
    if items:
        parts.append('<div class="note">mapped items:</div><ol class="items">'
                     + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ol>")
    else:
        parts.append('<div class="note">no mapped items</div>')
    return "".join(parts) + "</div>"


def _examples(te: TaskExamples) -> str:
    parts = []
    if te.missing:
        parts.append(f'<p class="note">No outputs for this task from: {_e(", ".join(te.missing))}.</p>')
    if not te.examples:
        parts.append('<p class="note">No sample answered by every run.</p>')
    for ex in te.examples:
        first = next(iter(ex.answers.values()))
        prompt0 = first.get("input_text")
        body = [f"<h4>prompt</h4><pre>{_e(prompt0)}</pre><div class='answers'>"]
        body += [_answer(label, ans, prompt0) for label, ans in ex.answers.items()] + ["</div>"]
        parts.append(f"<details><summary>sample {ex.index}</summary>{''.join(body)}</details>")
    return "".join(parts)


def page(comparison: Comparison, title: str, created: str, plots: dict[str, str],
         examples: list[TaskExamples]) -> str:
    """The whole index.html as a string; ``plots``: ``{"control" | task: path relative to the page}``."""
    by_task = {te.task: te for te in examples}

    nav = " ".join(f'<a href="#{_anchor(t)}">{_e(t)}</a>' for t in comparison.tasks)
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           f"<style>{_CSS}</style></head><body><main>",
           f"<h1>{_e(title)}</h1><p class='note'>Written {_e(created)}. Arrows: ↑ higher is better, ↓ lower is "
           "better; bold: the best model (baselines in grey are not ranked). *Rate metrics are average counts "
           "per list (divide by k for a share); Recall/NDCG/CorrectCount/CategoryRateCorrect are fractions of the "
           "samples.</p>",
           f"<nav><a href='#summary'>summary</a> <a href='#control'>control</a> <a href='#failures'>failures</a> "
           f"{nav}</nav>", "<h2 id='runs'>Runs</h2>", _plain_table(*runs_rows(comparison), numeric_from=99)]
    if comparison.warnings:
        out.append("<div class='warnings'><b>Warnings</b><ul>"
                   + "".join(f"<li>{_e(w)}</li>" for w in comparison.warnings) + "</ul></div>")
    out.append("<h2 id='summary'>Summary</h2>")
    for counting in COUNTINGS:
        out.append(f"<h3>Counting {_e(COUNTING_TITLES[counting])}</h3>{_summary_table(comparison, counting)}")
    if "control" in plots:
        out.append(f"<h2 id='control'>Control metrics per intention</h2><img src='{_e(plots['control'])}' "
                   "alt='control metrics per intention'>")
    out.append("<h2 id='failures'>Failures</h2><p class='note'>failed / samples per task, and how many samples the "
               "original's counting skipped.</p>" + _plain_table(*failure_rows(comparison)))
    for task in comparison.tasks:
        kind = intention(task)
        out.append(f"<h2 id='{_anchor(task)}'>{_e(task)}"
                   + (f" <span class='desc'>({_e(kind)})</span>" if kind else "") + "</h2><div class='pair'>")
        for counting in COUNTINGS:
            name, _, how = COUNTING_TITLES[counting].partition(" (")
            out.append(f"<div><h3>Counting {_e(name)}</h3><p class='note'>({_e(how)}</p>"
                       f"{_task_table(comparison, counting, task)}</div>")
        out.append("</div>")
        if task in plots:
            out.append(f"<img src='{_e(plots[task])}' alt='{_e(task)} metrics'>")
        if task in by_task:
            out.append(f"<h3>Examples</h3>{_examples(by_task[task])}")
    out.append(f"</main><script>{_CHECK_SCRIPT}</script></body></html>")
    return "\n".join(out)
