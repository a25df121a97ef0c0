"""Before/after tables of validation metrics (the quickstart prints one)."""

from __future__ import annotations

HEADLINE = ("CorrectCount", "NonExistRate", "RepeatRate", "Recall", "NDCG", "TargetCategoryRate",
            "CategoryRateCorrect")


def before_after_table(before: dict | None, after: dict, metrics: tuple[str, ...] = HEADLINE) -> str:
    """Rows: task x metric; columns: before (base model), after (trained adapter).

    ``before``/``after``: ``{"results": {task: {metric: value}}, ...}`` as stored in ``metrics.json``.
    Recall and NDCG are at k = the task's item count (10 by default), i.e. HR@10 and NDCG@10.
    """
    res_a = after["results"]
    res_b = (before or {}).get("results", {})
    lines = [f"{'task':34s} {'metric':20s} {'before':>10s} {'after':>10s}"]
    for task in res_a:
        for m in metrics:
            if m not in res_a[task]:
                continue
            b = res_b.get(task, {}).get(m)
            lines.append(f"{task:34s} {m:20s} {('%.4f' % b) if b is not None else '-':>10s} "
                         f"{res_a[task][m]:>10.4f}")
    if before:
        lines.append(f"{'mean over tasks':34s} {'NDCG':20s} {before['mean_NDCG']:>10.4f} {after['mean_NDCG']:>10.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m reclm_jax.sft.report RUN``: the before/after table of an SFT run's ``metrics.json``."""
    import argparse
    import json
    from pathlib import Path

    from reclm_jax.errors import UserError

    p = argparse.ArgumentParser(prog="python -m reclm_jax.sft.report", description=main.__doc__)
    p.add_argument("run", help="an SFT output_dir")
    args = p.parse_args(argv)
    path = Path(args.run) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{path}: not found (the run has not validated yet)")
    m = json.loads(path.read_text())
    if "after" not in m:
        raise UserError(f"{path}: no validation after training yet")
    print(before_after_table(m.get("before"), m["after"]))
    return 0


if __name__ == "__main__":
    from reclm_jax.cli import run_main

    run_main(main)
