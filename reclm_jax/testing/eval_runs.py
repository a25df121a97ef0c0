"""Synthetic evaluated-run folders (``eval.run_dir``'s layout) for testing the report and other readers of runs.

Scores are random in [0, 1) from a seed (``Count`` is the sample count) over each task's metric names
(``eval.metrics.task_metric_names``), so a reader's tables can be checked against the files; outputs are short
numbered lists, one line per index, written in a shuffled order (as a resumed client appends them), with index 5
a failed request (no output, an error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from reclm_jax.eval.metrics import task_metric_names
from reclm_jax.eval.run_dir import make_info, write_info, write_outputs, write_scores

TEST_TASKS = ("SFTTestSeqRec", "SFT+TestPersonalControlRec", "SFT-TestPersonalControlRec",
              "SFTTestPersonalCategoryRateLP1_20", "SFTTestPersonalCategoryRateEP_30",
              "SFTTestPersonalCategoryRateMP_30", "SFTTestItemCount")
FAILED_INDEX = 5


def synthetic_scores(rng: np.random.Generator, tasks: Sequence[str]) -> dict:
    """A ``scores.json`` dict: per task 20-39 samples, 0-4 failed, half of them skipped by the original."""
    reclm, original, counts = {}, {}, {}
    for t in tasks:
        samples = int(rng.integers(20, 40))
        failed = int(rng.integers(0, 5))
        names = task_metric_names(t)
        reclm[t] = {m: (float(samples) if m == "Count" else float(rng.random())) for m in names}
        original[t] = {m: (float(samples - failed) if m == "Count" else float(rng.random())) for m in names}
        counts[t] = {"samples": samples, "failed": failed, "skipped_original": failed // 2}
    return {"reclm": reclm, "original": original, "counts": counts}


def write_synthetic_run(root: str | Path, name: str, kind: str, seed: int, tasks: Sequence[str] = TEST_TASKS,
                        indices: Sequence[int] = range(8), data_path: str = "/data/ml",
                        special: dict[int, str] | None = None, outputs: bool = True,
                        complete: bool = True) -> Path:
    """Writes ``root/<name>_<seed>`` and returns it. ``special`` maps an index to the output text to use there
    (e.g. markup that a page must escape); ``outputs=False`` writes no outputs files (a baseline scored from
    lists only)."""
    rng = np.random.default_rng(seed)
    run = Path(root) / f"{name}_{seed}"
    base_url = None if kind in ("teacher", "popularity") else "http://127.0.0.1:13579/v1"
    write_info(run, make_info(name, kind, base_url, data_path, "title64_t", tasks, 40, complete=complete,
                              created="2026-12-01T10:00:00+00:00"))
    write_scores(run, synthetic_scores(rng, tasks))
    if outputs:
        for t in tasks:
            rows = []
            for i in indices:
                failed = i == FAILED_INDEX
                text = (special or {}).get(i, f"1. {name} movie {i}\n2. other {i}")
                rows.append({"index": i, "task": t, "input_text": f"prompt of user {i} for {t}",
                             "output_text": None if failed else text, "error": "HTTP 500" if failed else None,
                             "items": [] if failed else [f"{name} movie {i} & co", f"other {i}"]})
            rng.shuffle(rows)
            write_outputs(run, t, rows)
    return run
