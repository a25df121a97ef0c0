"""``python -m reclm_jax.eval.report RUN [RUN ...] --out DIR``: compares evaluated runs (models, the general-LLM
base model, the teacher and popularity baselines) in the order given.

Writes ``DIR/index.html`` (everything on one page, opens from file://), ``DIR/report.md``, ``DIR/report.json``,
``DIR/report.csv`` and ``DIR/plots/*.png``: per task a table (rows: metrics, columns: runs) in both countings
(ours: failures count; the original's: they are skipped), a summary of each run's headline metrics, the failure
counts, per-task metric bars, the control metrics per intention, and the first ``--examples`` samples every run
answered. The folder is written whole and then swapped in, so an interrupted run never leaves half a report;
an existing ``DIR`` is replaced only when it holds a report (or nothing).

``--screenshot PNG`` also saves the page as a headless Chromium renders it, by default its top 2400 px
(``--screenshot-height 0``: the whole page); skipped with a warning when no Chromium is installed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

from reclm_jax.atomic import replace_dir, temp_dir
from reclm_jax.errors import UserError
from reclm_jax.eval import report_browser, report_tables
from reclm_jax.eval.report_data import Comparison, compare
from reclm_jax.eval.report_examples import examples_json, select_examples
from reclm_jax.eval.report_html import page
from reclm_jax.eval.report_plots import write_plots

SCREENSHOT_HEIGHT = 2400  # px: a picture of the report for docs, not the whole (long) page


def check_out_dir(out: str) -> Path:
    """The report folder, refused (UserError) when empty, when its parent folder does not exist, when it is a
    file, or when it is a non-empty folder that is not a report (it would be replaced)."""
    if not out or not out.strip():
        raise UserError("--out: empty path; give the folder to write the report into")
    path = Path(out).expanduser()
    parent = path.resolve().parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: its parent folder {parent} does not exist")
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / "report.json").is_file():
        raise UserError(f"--out {out}: a non-empty folder without report.json (not a report); it would be "
                        f"replaced: give a new or empty folder")
    return path


def write_report(comparison: Comparison, out: Path, title: str, n_examples: int, progress: bool = False) -> Path:
    """Writes the whole report folder ``out`` (see the module doc) and returns ``out/index.html``."""
    created = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    examples = select_examples(comparison, n_examples, progress)
    tmp = temp_dir(out)  # plain writes inside: the folder swap below is what makes the report appear whole
    plots = write_plots(comparison, tmp, progress)
    texts = {"report.md": report_tables.markdown(comparison, title, created, plots),
             "report.csv": report_tables.csv_text(comparison),
             "report.json": json.dumps(report_tables.report_json(comparison, title, created, plots,
                                                                 examples_json(examples)), indent=2),
             "index.html": page(comparison, title, created, plots, examples)}
    for name, text in texts.items():
        (tmp / name).write_text(text, encoding="utf-8")
    replace_dir(tmp, out)
    return out / "index.html"


def _summary_text(comparison: Comparison) -> str:
    header = ["run"] + report_tables.summary_header(comparison)
    names = [m for _, m in report_tables.summary_columns(comparison)] + ["failed", "samples"]
    rows = [[label] + [report_tables.fmt(m, v) for m, v in zip(names, vals)]
            for label, vals in report_tables.summary_rows(comparison, "reclm").items()]
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in
                               enumerate(zip(r, widths))) for r in [header] + rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.eval.report",
                                description="Compare evaluated runs: tables, plots, examples and one HTML page.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="evaluated run folders (python -m reclm_jax.eval "
                   "--output_dir, or the baselines), in the order the columns should have")
    p.add_argument("--out", required=True, metavar="DIR", help="the report folder (created or replaced)")
    p.add_argument("--examples", type=int, default=3, metavar="N",
                   help="example samples per task (the first N every run answered; default 3, 0 for none)")
    p.add_argument("--title", default=None, help="the page title (default: the run names)")
    p.add_argument("--screenshot", default=None, metavar="PNG",
                   help="also save a headless-Chromium screenshot of the page (skipped without Chromium)")
    p.add_argument("--screenshot-width", type=int, default=1280, metavar="PX")
    p.add_argument("--screenshot-height", type=int, default=SCREENSHOT_HEIGHT, metavar="PX",
                   help=f"default {SCREENSHOT_HEIGHT}: the top of the page (runs, summary, control plot); 0: the "
                        f"whole page (at most {report_browser.MAX_HEIGHT} px)")
    args = p.parse_args(argv)
    if args.examples < 0:
        raise UserError(f"--examples {args.examples}: must be 0 or more")
    for flag, v in (("--screenshot-width", args.screenshot_width), ("--screenshot-height", args.screenshot_height)):
        if not (100 <= v <= report_browser.MAX_HEIGHT or flag == "--screenshot-height" and v == 0):
            raise UserError(f"{flag} {v}: must be between 100 and {report_browser.MAX_HEIGHT}"
                            + (" (or 0: the whole page)" if flag == "--screenshot-height" else ""))
    shot = Path(args.screenshot).expanduser() if args.screenshot else None
    if shot is not None and not shot.resolve().parent.is_dir():
        raise UserError(f"--screenshot {args.screenshot}: its folder {shot.resolve().parent} does not exist")
    out = check_out_dir(args.out)
    comparison = compare(args.runs)
    for w in comparison.warnings:
        print(f"warning: {w}", file=sys.stderr)
    title = args.title or "Evaluation report: " + ", ".join(comparison.labels)
    index = write_report(comparison, out, title, args.examples, progress=True)
    print(_summary_text(comparison))
    print(f"report: {index.resolve()}")
    if shot is not None:
        if report_browser.find_browser() is None:
            print(f"warning: no Chromium found ({', '.join(report_browser.BROWSERS)}): no screenshot written "
                  f"(apt-get install chromium)", file=sys.stderr)
        else:
            report_browser.screenshot(index, shot, args.screenshot_width, args.screenshot_height or None)
            print(f"screenshot: {shot}")
    return 0


if __name__ == "__main__":
    from reclm_jax.cli import run_main

    run_main(main)
