"""Task metrics of section 11 (the original's ``Metrics.add_sample``), reported two ways.

Per sample, with k = ``item_count``: ``CorrectCount`` (exactly k lines), then the titles cut to k and (with
``vague_mapping``) fuzzily mapped, and:

- counts per list, as the original (its "*Rate" names are average counts, not ratios): ``NonExistRate``
  (titles not in the index), ``RepeatRate`` (titles equal to an earlier one), ``InHistoryRate`` (items in the
  history; -1 without one), ``TargetCategoryRate`` (items in the target category), ``SRTargetCategoryRate``
  (the same over ``SeqRec_Result[:k]``), ``NotInCandidateRate`` (ranking tasks);
- ``Recall`` (= HR@k), ``MRR``, ``NDCG`` of the target title; ``CategoryRateCorrect`` (MP: count >= c,
  EP: |count - c| <= 1, LP: count + NonExist <= c) and ``SRCategoryRateCorrect`` (the same rules on the SR
  count; LP adds the *output's* NonExist, as the original does); ``RewardSum`` (RL: the list reward passed in).

``results()`` gives each sum / Count (the original's table); ``ratios()`` gives the count metrics as the mean
of count / k (a proportion of the list). An empty output counts as a failure (in Count, every hit metric 0,
CategoryRateCorrect 0) and in ``EmptyRate``; ``skip_empty=True`` reproduces the original test client, which
dropped such samples from every average. ``candidate_substring=True`` reproduces the original's substring
test for NotInCandidate (default: exact membership among the candidate titles).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from reclm_jax.data.fuzzy import FuzzyMatcher
from reclm_jax.data.item_index import ItemIndex
from reclm_jax.data.task_names import rate_variant  # noqa: F401  (re-exported: report_metrics imports it here)

COUNT_METRICS = ("NonExistRate", "RepeatRate", "InHistoryRate", "TargetCategoryRate", "SRTargetCategoryRate",
                 "NotInCandidateRate")
TABLE_ORDER = ("NonExistRate", "RepeatRate", "InHistoryRate", "CorrectCount", "Count", "Recall", "MRR", "NDCG",
               "TargetCategoryRate", "SRTargetCategoryRate", "RewardSum", "CategoryRateCorrect",
               "NotInCandidateRate", "SRCategoryRateCorrect", "EmptyRate")
_CONTROL = ("SFT+TestPersonalControlRec", "SFT-TestPersonalControlRec", "RL+PersonalControlRec",
            "RL-PersonalControlRec")
_RL = ("RLSeqRec", "RL+PersonalControlRec", "RL-PersonalControlRec", "RLSeqRanking", "RLItemCount", "RLTotal")


def task_metric_names(task: str) -> list[str]:
    names = ["NonExistRate", "RepeatRate", "CorrectCount", "Count", "Recall", "MRR", "NDCG", "TargetCategoryRate",
             "InHistoryRate", "EmptyRate"]
    rate = rate_variant(task)
    if task in _CONTROL or rate:
        names.append("SRTargetCategoryRate")
    if task in _RL or task.startswith("RLPersonalCategoryRate"):
        names.append("RewardSum")
    if rate:
        names += ["CategoryRateCorrect", "SRCategoryRateCorrect"]
    if task in ("SFTTestSeqRanking", "RLSeqRanking"):
        names.append("NotInCandidateRate")
    return names


def _rate_correct(variant: str, in_category: int, non_exist: int, count: int) -> int:
    if variant == "MP":
        return int(in_category >= count)
    if variant == "EP":
        return int(abs(in_category - count) <= 1)
    return int(in_category + non_exist <= count)


class Metrics:
    """Accumulates per-task sums; ``add_sample`` scores one generated list."""

    def __init__(self, tasks: Sequence[str], index: ItemIndex, category2item: Mapping[str, Sequence[str]],
                 matcher: FuzzyMatcher | None = None, skip_empty: bool = False, candidate_substring: bool = False):
        self.index = index
        self.cat_set = {c: frozenset(v) for c, v in category2item.items()}
        self.matcher = matcher or FuzzyMatcher(index.titles)
        self.skip_empty = skip_empty
        self.candidate_substring = candidate_substring
        self.sums: dict[str, dict[str, float]] = {}
        self.ratio_sums: dict[str, dict[str, float]] = {}
        for t in tasks:
            self._register(t)

    def _register(self, task: str) -> None:
        if task not in self.sums:
            self.sums[task] = {m: 0.0 for m in task_metric_names(task)}
            self.ratio_sums[task] = {m: 0.0 for m in COUNT_METRICS if m in self.sums[task]}

    def add_sample(self, task: str, input_field_data: Mapping[str, Any], output_titles: Sequence[str],
                   target_title: str, list_reward: float = 0.0, vague_mapping: bool = True) -> dict | None:
        """Scores one parsed list; returns its per-sample values (None when skipped)."""
        self._register(task)
        if not output_titles and self.skip_empty:
            return None
        k = int(input_field_data["item_count"])
        titles = list(output_titles[:k])
        if vague_mapping:
            titles = self.matcher.map(titles)
        items = [self.index.item_of(t) or "None" for t in titles]
        row: dict[str, float] = {"Count": 1, "CorrectCount": int(len(output_titles) == k),
                                 "EmptyRate": int(not output_titles)}
        row["NonExistRate"] = sum(self.index.item_of(t) is None for t in titles)
        row["RepeatRate"] = sum(t in titles[:j] for j, t in enumerate(titles))
        history = input_field_data.get("sub_sequential")
        row["InHistoryRate"] = sum(i in history for i in items) if history is not None else -1
        if target_title in titles:
            pos = titles.index(target_title)
            row.update(Recall=1, MRR=1 / (pos + 1), NDCG=1 / math.log2(pos + 2))
        members = self.cat_set.get(input_field_data.get("target_category"), frozenset())
        row["TargetCategoryRate"] = sum(i in members for i in items)
        names = self.sums[task]
        variant = rate_variant(task)
        if "SRTargetCategoryRate" in names and "SeqRec_Result" in input_field_data:
            sr = list(input_field_data["SeqRec_Result"])[:k]
            row["SRTargetCategoryRate"] = sum(i in members for i in sr)
            if variant:
                row["SRCategoryRateCorrect"] = _rate_correct(variant, row["SRTargetCategoryRate"],
                                                             row["NonExistRate"], input_field_data["category_count"])
        if variant:
            row["CategoryRateCorrect"] = 0 if not output_titles else _rate_correct(
                variant, row["TargetCategoryRate"], row["NonExistRate"], input_field_data["category_count"])
        if "NotInCandidateRate" in names and "candidate_items" in input_field_data:
            if self.candidate_substring:
                joined = input_field_data.get("candidate_titles", "")
                row["NotInCandidateRate"] = sum(t not in joined for t in titles)
            else:
                allowed = {self.index.text.get(i, i) for i in input_field_data["candidate_items"]}
                row["NotInCandidateRate"] = sum(t not in allowed for t in titles)
        if "RewardSum" in names:
            row["RewardSum"] = list_reward
        for m, v in row.items():
            if m in names:
                names[m] += v
        for m in self.ratio_sums[task]:
            if m == "InHistoryRate" and history is None:
                continue
            self.ratio_sums[task][m] += row.get(m, 0) / k if k else 0.0
        return row

    def results(self) -> dict[str, dict[str, float]]:
        """The original's table: every metric as sum / Count (Count itself as the number of samples)."""
        out = {}
        for task, s in self.sums.items():
            n = s["Count"]
            out[task] = {m: (v if m == "Count" else (v / n if n else 0.0)) for m, v in s.items()}
        return out

    def ratios(self) -> dict[str, dict[str, float]]:
        """Count metrics as the mean fraction of the list (count / item_count)."""
        out = {}
        for task, s in self.ratio_sums.items():
            n = self.sums[task]["Count"]
            out[task] = {m.replace("Rate", "Ratio"): (v / n if n else 0.0) for m, v in s.items()}
        return out

    def table(self) -> str:
        """A plain-text table, tasks as columns, in the original's metric order."""
        res, rat = self.results(), self.ratios()
        tasks = list(res)
        rows = [m for m in TABLE_ORDER if any(m in res[t] for t in tasks)]
        rows += sorted({m for t in tasks for m in rat[t]})
        width = max(24, *(len(r) for r in rows))
        head = "metric".ljust(width) + "".join(t.rjust(max(12, len(t) + 2)) for t in tasks)
        lines = [head]
        for m in rows:
            cells = []
            for t in tasks:
                v = res[t].get(m, rat[t].get(m))
                w = max(12, len(t) + 2)
                cells.append(("/" if v is None else (f"{int(v)}" if m == "Count" else f"{v:.4f}")).rjust(w))
            lines.append(m.ljust(width) + "".join(cells))
        return "\n".join(lines)
