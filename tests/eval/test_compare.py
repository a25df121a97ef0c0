"""Runs' validation metrics side by side (``python -m reclm_jax.eval.compare``), from metrics.json files shaped as
the SFT and RL trainers write them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reclm_jax.errors import UserError
from reclm_jax.eval.compare import comparison_table, main, parse_columns, task_key


def _val(results: dict, **means) -> dict:
    return {"results": results, **means}


def _run(path, before, after=None):
    path.mkdir(parents=True)
    m = {"before": before} if before is not None else {}
    if after is not None:
        m["after"] = after
    (path / "metrics.json").write_text(json.dumps(m))
    return path


@pytest.fixture
def runs(tmp_path):
    sft = _run(tmp_path / "sft",
               _val({"SFTTestSeqRec": {"NDCG": 0.01, "NonExistRate": 4.0},
                     "SFT-TestPersonalControlRec": {"NDCG": 0.02, "TargetCategoryRate": 3.0}}, mean_NDCG=0.015),
               _val({"SFTTestSeqRec": {"NDCG": 0.11, "NonExistRate": 1.0},
                     "SFT-TestPersonalControlRec": {"NDCG": 0.12, "TargetCategoryRate": 2.0}}, mean_NDCG=0.115))
    rl = _run(tmp_path / "rl",
              _val({"RLSeqRec": {"NDCG": 0.105, "RewardSum": 1.5, "reward_last": 1.5},
                    "RL-PersonalControlRec": {"NDCG": 0.125, "RewardSum": 2.5}}, mean_NDCG=0.115, mean_reward=2.0),
              _val({"RLSeqRec": {"NDCG": 0.2, "RewardSum": 3.0},
                    "RL-PersonalControlRec": {"NDCG": 0.3, "RewardSum": 4.0}}, mean_NDCG=0.25, mean_reward=3.5))
    return sft, rl


def _row(table: str, task: str, metric: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(task) and ln.split()[len(task.split())] == metric)
    return line.split()[len(task.split()) + 1:]


def test_tasks_of_both_stages_pair_by_what_they_ask():
    assert task_key("SFTTestSeqRec") == task_key("RLSeqRec") == "SeqRec"
    assert task_key("SFT+TestPersonalControlRec") == task_key("RL+PersonalControlRec") == "+PersonalControlRec"
    assert task_key("SFT-TestPersonalControlRec") == task_key("RL-PersonalControlRec") != "+PersonalControlRec"
    assert task_key("SFTTestPersonalCategoryRateEP_50") == task_key("RLPersonalCategoryRateEP_50")
    assert task_key("SFTTestItemCount") == task_key("RLItemCount")
    assert task_key("SFTTestPersonalCategoryRateEP_50") != task_key("RLPersonalCategoryRateMP_30")


def test_three_columns_with_rewards_from_the_second_source(runs):
    sft, rl = runs
    table = comparison_table(parse_columns([f"base={sft}:before", f"SFT={sft}:after+{rl}:before",
                                            f"RL={rl}:after"]))
    head = table.splitlines()[0].split()
    assert head[-3:] == ["base", "SFT", "RL"]
    assert _row(table, "SFTTestSeqRec", "NDCG") == ["0.0100", "0.1100", "0.2000"]  # the RL task under its SFT twin
    assert _row(table, "SFTTestSeqRec", "NonExistRate") == ["4.0000", "1.0000", "-"]
    # The SFT model's reward comes from the RL run's validation before training; its NDCG stays the SFT run's.
    assert _row(table, "SFTTestSeqRec", "RewardSum") == ["-", "1.5000", "3.0000"]
    assert _row(table, "mean over tasks", "NDCG") == ["0.0150", "0.1150", "0.2500"]
    assert _row(table, "mean over tasks", "reward") == ["-", "2.0000", "3.5000"]
    assert not any(ln.startswith("RLSeqRec") for ln in table.splitlines())  # paired, not listed twice


def test_one_run_gives_before_and_after(runs, capsys):
    sft, _ = runs
    assert main([str(sft)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-2:] == ["before", "after"]
    assert _row(out, "SFT-TestPersonalControlRec", "TargetCategoryRate") == ["3.0000", "2.0000"]


def test_mistakes_name_the_run_or_the_column(runs, tmp_path):
    sft, _ = runs
    with pytest.raises(UserError, match="nope/metrics.json: not found"):
        parse_columns([f"x={tmp_path / 'nope'}"])
    only_before = _run(tmp_path / "fresh", _val({"RLSeqRec": {"NDCG": 0.1}}))
    with pytest.raises(UserError, match="no validation after training yet"):
        parse_columns([f"x={only_before}:after"])
    with pytest.raises(UserError, match="expected LABEL=RUN"):
        parse_columns([f"{sft}", "=x"])
    r = subprocess.run([sys.executable, "-m", "reclm_jax.sft.report", str(tmp_path / "nope")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
