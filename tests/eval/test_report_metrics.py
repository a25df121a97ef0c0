"""Which metric judges which test task, which way is better, and the control plot's panels."""

from __future__ import annotations

from reclm_jax.eval.metrics import task_metric_names
from reclm_jax.eval.report_metrics import (HIGHER, LOWER, NEUTRAL, control_panels, direction, headline_metrics,
                                           intention, metric_order, summary_metric)
from reclm_jax.testing.eval_runs import TEST_TASKS


def test_intentions_and_headline_metrics_of_the_test_tasks():
    assert [intention(t) for t in TEST_TASKS] == ["I0", "+C", "-C", "LP", "EP", "MP", "ItemCount"]
    assert intention("SFTTestSeqRanking") is None and intention("RL-PersonalControlRec") == "-C"
    for t in TEST_TASKS:
        # every headline and summary metric is one the scorer computes for the task
        assert set(headline_metrics(t)) <= set(task_metric_names(t)), t
        assert set(summary_metric(t)) <= set(headline_metrics(t)), t
    assert summary_metric("SFTTestSeqRec") == ("Recall", "NDCG")
    assert summary_metric("SFTTestPersonalCategoryRateEP_30") == ("CategoryRateCorrect",)


def test_directions():
    assert direction("SFTTestSeqRec", "NDCG") == HIGHER and direction("SFTTestItemCount", "CorrectCount") == HIGHER
    assert direction("SFTTestSeqRec", "NonExistRate") == LOWER and direction("SFTTestSeqRec", "EmptyRate") == LOWER
    assert direction("SFT+TestPersonalControlRec", "TargetCategoryRate") == HIGHER
    assert direction("SFT-TestPersonalControlRec", "TargetCategoryRate") == LOWER
    assert direction("SFTTestPersonalCategoryRateMP_30", "TargetCategoryRate") == NEUTRAL
    assert direction("SFT+TestPersonalControlRec", "SRTargetCategoryRate") == NEUTRAL
    assert direction("SFTTestPersonalCategoryRateLP1_20", "CategoryRateCorrect") == HIGHER


def test_control_panels_group_the_intentions_present():
    panels = control_panels(TEST_TASKS)
    assert [(p.metric, p.reference) for p in panels] == [
        ("TargetCategoryRate", "SRTargetCategoryRate"), ("TargetCategoryRate", "SRTargetCategoryRate"),
        ("CategoryRateCorrect", "SRCategoryRateCorrect"), ("CorrectCount", None)]
    assert panels[2].tasks == TEST_TASKS[3:6] and panels[0].tasks == ("SFT+TestPersonalControlRec",)
    assert [p.tasks for p in control_panels(["SFTTestSeqRec", "SFTTestPersonalCategoryRateMP_30"])] == [
        ("SFTTestPersonalCategoryRateMP_30",)]
    assert control_panels(["SFTTestSeqRec"]) == []


def test_metric_order_is_the_scorers_then_extras():
    assert metric_order({"NDCG", "Count", "ZRatio", "NonExistRate", "ARatio"}) == [
        "NonExistRate", "Count", "NDCG", "ARatio", "ZRatio"]
