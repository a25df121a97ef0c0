"""Report tables: every number of the runs lands in the CSV once and reads back exactly; cells, arrows and the
best-model marks follow each metric's direction."""

from __future__ import annotations

import json

from reclm_jax.eval.report_data import COUNTINGS, compare
from reclm_jax.eval.report_metrics import HIGHER, LOWER
from reclm_jax.eval.report_tables import best_positions, csv_text, fmt, metric_label, read_csv, task_rows
from reclm_jax.testing.eval_runs import TEST_TASKS, write_synthetic_run


def test_csv_round_trip_holds_every_score_and_count(tmp_path):
    runs = [write_synthetic_run(tmp_path, "sft", "model", 1, outputs=False),
            write_synthetic_run(tmp_path, "teacher", "teacher", 2, tasks=TEST_TASKS[:4], outputs=False)]
    comparison = compare(runs)
    back = read_csv(csv_text(comparison))
    assert set(back) == {*COUNTINGS, "counts"} and list(back["reclm"]) == list(TEST_TASKS[:4])
    n_values = 0
    for run, label in zip(runs, ["sft", "teacher"]):
        scores = json.loads((run / "scores.json").read_text())
        for counting in COUNTINGS:
            for task in TEST_TASKS[:4]:
                for metric, v in scores[counting][task].items():
                    assert back[counting][task][metric][label] == v  # exact: repr round-trips floats
                    n_values += 1
        for task in TEST_TASKS[:4]:
            assert {k: back["counts"][task][k][label] for k in scores["counts"][task]} == scores["counts"][task]
    assert len(csv_text(comparison).splitlines()) == 1 + n_values + 2 * 4 * 3


def test_cells_and_arrows(tmp_path):
    assert fmt("Count", 12.0) == "12" and fmt("NDCG", 0.123456) == "0.1235" and fmt("Recall", None) == "-"
    assert metric_label("SFT+TestPersonalControlRec", "TargetCategoryRate") == "TargetCategoryRate ↑"
    assert metric_label("SFT-TestPersonalControlRec", "TargetCategoryRate") == "TargetCategoryRate ↓"
    assert metric_label("SFTTestSeqRec", "TargetCategoryRate") == "TargetCategoryRate"
    run = write_synthetic_run(tmp_path, "sft", "model", 3, tasks=("SFTTestSeqRec",), outputs=False)
    header, rows = task_rows(compare([run]), "original", "SFTTestSeqRec")
    assert header == ["metric", "sft"] and [r[0] for r in rows][:3] == ["NonExistRate ↓", "RepeatRate ↓",
                                                                      "InHistoryRate ↓"]


def test_best_positions_follow_direction_and_skip_baselines():
    values = [0.2, 0.5, 0.9, None]
    models = [True, True, False, True]  # index 2 is a baseline: never marked
    assert best_positions("SFTTestSeqRec", "NDCG", values, models) == {1}
    assert best_positions("SFTTestSeqRec", "NonExistRate", values, models) == {0}
    assert best_positions("SFT-TestPersonalControlRec", "TargetCategoryRate", values, models) == {0}
    assert best_positions("SFT+TestPersonalControlRec", "TargetCategoryRate", values, models) == {1}
    assert best_positions("SFTTestSeqRec", "SRTargetCategoryRate", values, models) == set()  # no direction
    assert best_positions("SFTTestSeqRec", "NDCG", [0.3, 0.3], [True, True]) == {0, 1}
    assert best_positions("SFTTestSeqRec", "NDCG", [0.3, 0.9], [True, False]) == set()  # one model: no ranking
    assert HIGHER == -LOWER
