"""What the evaluation report shows of each test task: its headline metrics, which way each one is better, and
which intention (I0 / +C / -C / LP, EP, MP / ItemCount) a task's control metric measures.

Values are the scorer's (``reclm_jax.eval.metrics``): the "*Rate" metrics are average counts per list, Recall /
MRR / NDCG / CorrectCount / CategoryRateCorrect / EmptyRate are fractions of the samples. ``SR*`` metrics are the
same measure on the model's own unconstrained SeqRec list (the baseline the control is compared with), so they
have no "better" direction of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reclm_jax.eval.metrics import TABLE_ORDER, rate_variant

HIGHER = 1
LOWER = -1
NEUTRAL = 0

_ALWAYS = {"Recall": HIGHER, "MRR": HIGHER, "NDCG": HIGHER, "CorrectCount": HIGHER, "CategoryRateCorrect": HIGHER,
           "RewardSum": HIGHER, "NonExistRate": LOWER, "RepeatRate": LOWER, "InHistoryRate": LOWER,
           "EmptyRate": LOWER, "NotInCandidateRate": LOWER}

# Metrics that are fractions of the samples (in [0, 1]); the others are counts per list (0..k).
FRACTION_METRICS = frozenset({"Recall", "MRR", "NDCG", "CorrectCount", "CategoryRateCorrect",
                              "SRCategoryRateCorrect", "EmptyRate"})

# Human names for the axes and headers: what a value of the metric means.
DESCRIPTIONS = {
    "Recall": "HR@k: target in the list",
    "MRR": "MRR@k of the target",
    "NDCG": "NDCG@k of the target",
    "CorrectCount": "lists with exactly k items",
    "CategoryRateCorrect": "lists meeting the proportion",
    "SRCategoryRateCorrect": "own SeqRec lists meeting it",
    "NonExistRate": "non-existent items per list",
    "RepeatRate": "repeated items per list",
    "InHistoryRate": "history items per list",
    "EmptyRate": "empty or failed outputs",
    "TargetCategoryRate": "items of category C per list",
    "SRTargetCategoryRate": "C items in own SeqRec list",
    "NotInCandidateRate": "items not among candidates",
    "RewardSum": "list reward x10",
    "Count": "samples scored",
}

_PLUS, _MINUS, _ITEMCOUNT, _SEQREC = ("SFT+TestPersonalControlRec", "SFT-TestPersonalControlRec", "SFTTestItemCount",
                                      "SFTTestSeqRec")


def direction(task: str, metric: str) -> int:
    """HIGHER (1), LOWER (-1) or NEUTRAL (0) for ``metric`` on ``task``: TargetCategoryRate is higher-better on
    +C (only items of C wanted), lower-better on -C (no items of C), neutral elsewhere (the proportion tasks are
    judged by CategoryRateCorrect)."""
    if metric in _ALWAYS:
        return _ALWAYS[metric]
    if metric == "TargetCategoryRate":
        return {_PLUS: HIGHER, _MINUS: LOWER}.get(task, NEUTRAL)
    return NEUTRAL


def arrow(task: str, metric: str) -> str:
    """" (higher is better)" / " (lower is better)" / "" for labels."""
    return {HIGHER: " (higher is better)", LOWER: " (lower is better)"}.get(direction(task, metric), "")


def intention(task: str) -> str | None:
    """The control intention a task tests: "+C", "-C", "LP" / "EP" / "MP", "ItemCount", "I0" (SeqRec), None."""
    if task == _PLUS or task.startswith("RL+"):
        return "+C"
    if task == _MINUS or task.startswith("RL-"):
        return "-C"
    if task == _ITEMCOUNT or task == "RLItemCount":
        return "ItemCount"
    variant = rate_variant(task)
    if variant:
        return variant
    if task in (_SEQREC, "RLSeqRec"):
        return "I0"
    return None


def headline_metrics(task: str) -> tuple[str, ...]:
    """The metrics plotted for a task, the control metric first (the paper's columns, reference section 12.4)."""
    kind = intention(task)
    if kind in ("+C", "-C"):
        return ("TargetCategoryRate", "SRTargetCategoryRate", "Recall", "NDCG", "NonExistRate", "RepeatRate")
    if kind in ("LP", "EP", "MP"):
        return ("CategoryRateCorrect", "SRCategoryRateCorrect", "TargetCategoryRate", "NonExistRate", "RepeatRate")
    if kind == "ItemCount":
        return ("CorrectCount", "Recall", "NDCG", "NonExistRate", "RepeatRate")
    return ("Recall", "NDCG", "NonExistRate", "RepeatRate", "CorrectCount")


def summary_metric(task: str) -> tuple[str, ...]:
    """The one or two numbers of a task in the summary table (its headline, the paper's main column)."""
    kind = intention(task)
    if kind in ("+C", "-C"):
        return ("TargetCategoryRate",)
    if kind in ("LP", "EP", "MP"):
        return ("CategoryRateCorrect",)
    if kind == "ItemCount":
        return ("CorrectCount",)
    return ("Recall", "NDCG")


def metric_order(names) -> list[str]:
    """The scorer's table order (``metrics.TABLE_ORDER``), unknown names (e.g. ratios) after it, sorted."""
    names = set(names)
    return [m for m in TABLE_ORDER if m in names] + sorted(names - set(TABLE_ORDER))


@dataclass(frozen=True)
class ControlPanel:
    """One panel of the control plot: the tasks of one intention, the metric judged, the SR reference metric."""
    title: str
    tasks: tuple[str, ...]
    metric: str
    reference: str | None


def control_panels(tasks) -> list[ControlPanel]:
    """The control plot's panels over the tasks present: +C, -C, the proportion tasks together, ItemCount."""
    by_kind: dict[str, list[str]] = {}
    for t in tasks:
        by_kind.setdefault(intention(t) or "", []).append(t)
    rate = tuple(t for k in ("LP", "EP", "MP") for t in by_kind.get(k, []))
    panels = []
    if by_kind.get("+C"):
        panels.append(ControlPanel("+C: only items of category C", tuple(by_kind["+C"]), "TargetCategoryRate",
                                   "SRTargetCategoryRate"))
    if by_kind.get("-C"):
        panels.append(ControlPanel("-C: no items of category C", tuple(by_kind["-C"]), "TargetCategoryRate",
                                   "SRTargetCategoryRate"))
    if rate:
        panels.append(ControlPanel("LP / EP / MP: a proportion of C", rate, "CategoryRateCorrect",
                                   "SRCategoryRateCorrect"))
    if by_kind.get("ItemCount"):
        panels.append(ControlPanel("ItemCount: exactly k items", tuple(by_kind["ItemCount"]), "CorrectCount", None))
    return panels


def short_task(task: str) -> str:
    """A compact label for axes: SFTTestPersonalCategoryRateLP1_20 -> LP1_20, SFT+TestPersonalControlRec -> +C,
    RL tasks with an "RL " prefix (RL+PersonalControlRec -> RL +C); other names unchanged."""
    kind = intention(task)
    if kind is None:
        return task
    prefix = "RL " if task.startswith("RL") else ""
    if kind in ("LP", "EP", "MP"):
        return prefix + (task.replace("SFTTestPersonalCategoryRate", "").replace("RLPersonalCategoryRate", "")
                         or kind)
    return prefix + {"I0": "SeqRec"}.get(kind, kind)


def task_slug(task: str) -> str:
    """A file-name and HTML-id safe form of a task name (SFT+Test... -> SFTplusTest..., SFT-Test... ->
    SFTminusTest...)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", task.replace("+", "plus").replace("-", "minus"))
