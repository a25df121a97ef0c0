"""Training: the CLI end to end on a learnable synthetic dataset, the run folder, and user-error handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "reclm_jax.teacher.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_learns_a_deterministic_successor(cycle_dataset, tmp_path):
    data, _ = cycle_dataset
    out = tmp_path / "run"
    res = _run("--config", "configs/teacher_tiny.yaml", f"data_path={data}", f"output_dir={out}",
               "train.max_epochs=8", "train.progress=false")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["teacher"]["test"]["hr@10"] == 1.0
    assert report["teacher"]["test"]["ndcg@10"] > 0.9
    assert report["popularity"]["test"]["hr@10"] < 0.2  # the task is not trivially solved by popularity
    assert "teacher" in res.stdout and "popularity" in res.stdout  # the printed final table
    # the run folder a Teacher loads
    assert (out / "best").is_dir() and not (out / "best.tmp").exists()
    items = json.loads((out / "items.json").read_text())
    assert items == [str(i + 1) for i in range(200)]
    assert "data_path" in (out / "config.yaml").read_text()
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    assert report["epochs_run"] == 8 and 1 <= report["best_epoch"] <= 8
    assert len(report["history"]) == 8
    # re-evaluating the saved best checkpoint reproduces the training's final report
    from reclm_jax.teacher.evaluate import evaluate_run

    again = evaluate_run(out)
    for split in ("valid", "test"):
        assert again["teacher"][split] == pytest.approx(report["teacher"][split])
        assert again["popularity"][split] == report["popularity"][split]


def test_trained_teacher_predicts_the_successor(cycle_dataset, tmp_path):
    from reclm_jax.teacher.teacher import Teacher
    from reclm_jax.testing.tiny_teacher import tiny_teacher_config
    from reclm_jax.teacher.train import train

    data, succ = cycle_dataset
    out = tmp_path / "run"
    train(tiny_teacher_config(data, out, seed=1, epochs=8))
    t = Teacher.from_checkpoint(out)
    starts = ["1", "50", "123", "200"]
    histories = [[s, succ[s]] for s in starts]
    top1 = t.topk(histories, 1)
    assert [r[0] for r in top1] == [succ[succ[s]] for s in starts]


@pytest.mark.parametrize("args, needle", [
    (["output_dir=/tmp/x"], "data_path"),
    (["data_path=/nonexistent/dir", "output_dir=/tmp/x"], "/nonexistent/dir"),
    (["--config", "configs/teacher_tiny.yaml", "model.nope=1"], "model.nope"),
    (["--config", "configs/teacher_tiny.yaml", "model.dim=30", "model.num_heads=4", "data_path=x"], "model.dim"),
])
def test_cli_user_errors_exit_2_without_traceback(args, needle):
    res = _run(*args)
    assert res.returncode == 2
    assert res.stderr.startswith("error:") and needle in res.stderr
    assert "Traceback" not in res.stderr


def test_train_examples_never_see_the_last_two_items(cycle_dataset):
    from reclm_jax.datasets.raw import load_raw
    from reclm_jax.teacher.splits import build_splits

    raw = load_raw(cycle_dataset[0], item_index="id")
    row = {i: k + 1 for k, i in enumerate(raw.items)}
    sp = build_splits(raw.sequential, row, 10)
    n_expected = sum(len(s) - 3 for s in raw.sequential.values())
    assert len(sp.train_target) == n_expected
    # every (history-last, target) pair of training is a transition inside some seq[:-2]
    inside = {(row[s[j]], row[s[j + 1]]) for s in raw.sequential.values() for j in range(len(s) - 3)}
    pairs = set(zip(sp.train_history[:, -1].tolist(), sp.train_target.tolist()))
    assert pairs <= inside
    assert np.all(sp.item_counts[0] == 0)
