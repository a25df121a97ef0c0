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
    # the run log: per epoch (step = epoch) the training loss and lr, then the validation metrics; the final
    # report's metrics at the best epoch
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    per_epoch = [r for r in records if r["kind"] in ("train", "valid")]
    assert [(r["kind"], r["step"]) for r in per_epoch] == [(k, e) for e in range(1, 9) for k in ("train", "valid")]
    for r, h in zip(per_epoch[::2], report["history"]):
        assert (r["loss"], r["lr"]) == (h["loss"], h["lr"])
    for r, h in zip(per_epoch[1::2], report["history"]):
        assert r["ndcg@10"] == h["ndcg@10"] and set(r) == {"time", "kind", "step", "hr@10", "hr@20", "ndcg@10",
                                                           "ndcg@20"}
    final = {r["kind"]: r for r in records[len(per_epoch):]}
    assert sorted(final) == [f"final/{w}/{s}" for w in ("popularity", "teacher") for s in ("test", "valid")]
    assert final["final/teacher/test"]["step"] == report["best_epoch"]
    assert final["final/teacher/test"]["hr@10"] == report["teacher"]["test"]["hr@10"]
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
    # A run killed while swapping in a new best/ leaves the previous one as best.old only: the reader recovers it.
    (out / "best").rename(out / "best.old")
    t = Teacher.from_checkpoint(out)
    assert (out / "best").is_dir() and not (out / "best.old").exists()
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


@pytest.mark.parametrize("minutes", [0, 1e-6])
def test_a_spent_time_budget_stops_after_one_step_and_still_reports(cycle_dataset, tmp_path, minutes, capsys):
    import dataclasses

    from reclm_jax.testing.tiny_teacher import tiny_teacher_config
    from reclm_jax.teacher.train import train

    cfg = tiny_teacher_config(cycle_dataset[0], tmp_path / "run", epochs=5)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_minutes=minutes, progress=True))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text('{"kind": "train", "step": 99}\n')  # an earlier run's log
    report = train(cfg)
    # the budget is spent before the first step ends: that epoch is cut short, validated, and training stops
    assert report["epochs_run"] == 1 and report["best_epoch"] == 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 1
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records[:2]] == [("train", 1), ("valid", 1)]  # this run's only
    assert f"stopping: time budget of {minutes} minutes spent" in capsys.readouterr().out


def _tiny(data, out, **train):
    import dataclasses

    from reclm_jax.testing.tiny_teacher import tiny_teacher_config

    cfg = tiny_teacher_config(data, out, seed=3, epochs=train.pop("epochs", 2))
    model = train.pop("model", {})
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train),
                               model=dataclasses.replace(cfg.model, **model))


def test_steps_per_call_changes_the_dispatch_not_the_run(cycle_dataset, tmp_path):
    from reclm_jax.teacher.train import train

    # 10 steps per epoch: chunks of 4 leave a short last chunk (a traced count, no second program)
    one = train(_tiny(cycle_dataset[0], tmp_path / "a", steps_per_call=1))
    four = train(_tiny(cycle_dataset[0], tmp_path / "b", steps_per_call=4))
    assert one["train_examples"] == four["train_examples"] and -(-one["train_examples"] // 256) == 10
    for a, b in zip(one["history"], four["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["ndcg@10"] == pytest.approx(b["ndcg@10"], abs=1e-6)
    assert one["teacher"]["test"]["hr@10"] == four["teacher"]["test"]["hr@10"]


def test_bf16_products_learn_the_successor_too(cycle_dataset, tmp_path):
    from reclm_jax.teacher.train import train

    report = train(_tiny(cycle_dataset[0], tmp_path / "run", epochs=8, model={"matmul_dtype": "bfloat16"}))
    assert report["teacher"]["test"]["hr@10"] == 1.0
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["train_seconds"] > 0 and r["valid_seconds"] > 0 for r in records if r["kind"] == "train")


@pytest.mark.parametrize("bf16_dot", [True, False], ids=["bf16-dot", "no-bf16-dot"])
def test_auto_products_follow_the_machine_and_the_run_records_them(cycle_dataset, tmp_path, monkeypatch, bf16_dot):
    import yaml

    from reclm_jax.models import native_kernels
    from reclm_jax.teacher.config import resolve_matmul_dtype
    from reclm_jax.teacher.train import train

    monkeypatch.setattr(native_kernels, "has_bf16_dot", lambda: bf16_dot)
    want = "bfloat16" if bf16_dot else "float32"
    assert resolve_matmul_dtype("auto") == want
    assert resolve_matmul_dtype("float32") == "float32" and resolve_matmul_dtype("bfloat16") == "bfloat16"
    train(_tiny(cycle_dataset[0], tmp_path / "run", epochs=1, model={"matmul_dtype": "auto"}))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["matmul_dtype"] == want  # a later load rebuilds the model it trained
