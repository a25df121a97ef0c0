"""Scores generated outputs of test samples in two countings side by side (the test stage's one scorer).

- ``reclm``: every sample counts (Count = all samples); a failed request (no text) and an answer without
  titles are failures: an empty list, so CorrectCount, Recall, NDCG, CategoryRateCorrect are 0 and EmptyRate 1.
- ``original``: the original test client's counting (``task_test.py``, audit B.4/T2): samples without an
  output (failed requests) are skipped, and so are general-LLM answers whose parsed list is empty; a fine-tuned
  model's empty answer is scored (here as the empty list; the original's ``['']`` quirk, audit M1, is not
  reproduced). NotInCandidate uses the original's substring test.

Parsing is ``eval.parsing`` (``parse_list`` for fine-tuned models, ``parse_general_llm`` with
``general_llm``), titles are mapped with one shared ``FuzzyMatcher`` and scored by ``eval.metrics.Metrics``;
every value is sum / Count, as the original prints it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from reclm_jax.data.fuzzy import FuzzyMatcher
from reclm_jax.data.item_index import ItemIndex
from reclm_jax.eval.metrics import TABLE_ORDER, Metrics
from reclm_jax.eval.parsing import parse_general_llm, parse_list

COUNT_KEYS = ("samples", "failed", "empty", "skipped_original")


def parse_output(text: str, task: str, item_count: int, general_llm: bool = False, idx: bool = True) -> list[str]:
    """Titles of one generated answer, as generated (not yet mapped to the catalogue)."""
    if general_llm:
        return parse_general_llm(text, task, item_count)
    return parse_list(text, idx)


class Scorer:
    """Accumulates scored samples of ``tasks`` (in that order); ``add`` returns the sample's output row."""

    def __init__(self, tasks: Sequence[str], index: ItemIndex, category2item: Mapping[str, Sequence[str]],
                 general_llm: bool = False, idx: bool = True, matcher: FuzzyMatcher | None = None):
        self.tasks = list(dict.fromkeys(tasks))
        self.index = index
        self.general_llm = general_llm
        self.idx = idx
        self.matcher = matcher or FuzzyMatcher(index.titles)
        self.reclm = Metrics(self.tasks, index, category2item, matcher=self.matcher)
        self.original = Metrics(self.tasks, index, category2item, matcher=self.matcher, candidate_substring=True)
        self.counts = {t: dict.fromkeys(COUNT_KEYS, 0) for t in self.tasks}

    def titles(self, text: str | None, task: str, item_count: int) -> list[str]:
        return [] if text is None else parse_output(text, task, item_count, self.general_llm, self.idx)

    def mapped(self, titles: Sequence[str]) -> list[str]:
        """Catalogue titles for generated ones (unchanged when nothing is within the fuzzy distance)."""
        return self.matcher.map(titles)

    def add(self, sample: Mapping[str, Any], output_text: str | None, error: str | None = None,
            index: int | None = None) -> dict:
        """Scores one sample (``output_text`` None = no answer) and returns its output row: the run folder's
        ``index``/``task``/``input_text``/``output_text``/``error``/``items`` plus ``exists`` (per item: a
        catalogue title), ``titles`` (as parsed), ``target``, ``category``, ``item_count``, ``category_count``
        (rate tasks), ``user``, ``metrics`` (this sample's values in the reclm counting) and
        ``skipped_original``."""
        task = sample["task"]
        if task not in self.counts:
            raise ValueError(f"task {task!r} is not one of the scorer's tasks {self.tasks}")
        fields = sample["input_field_data"]
        k = int(fields["item_count"])
        titles = self.titles(output_text, task, k)
        target = fields["target_item_title"]
        values = self.reclm.add_sample(task, fields, titles, target)
        # Every metric of the task (add_sample leaves out the zero hit metrics), for per-sample displays.
        row_metrics = {m: float(values.get(m, 0.0)) for m in self.reclm.sums[task] if m != "Count"}
        skipped = output_text is None or (self.general_llm and not titles)
        if not skipped:
            self.original.add_sample(task, fields, titles, target)
        c = self.counts[task]
        c["samples"] += 1
        c["failed"] += output_text is None
        c["empty"] += output_text is not None and not titles
        c["skipped_original"] += skipped
        items = self.mapped(titles[:k])
        row = {"index": sample.get("index") if index is None else index, "task": task,
               "input_text": sample["input_text"], "output_text": output_text, "error": error, "items": items,
               "exists": [self.index.item_of(t) is not None for t in items], "titles": titles,
               "target": target, "category": fields.get("target_category"), "item_count": k,
               "user": fields.get("user"), "metrics": row_metrics, "skipped_original": skipped}
        if "category_count" in fields:
            row["category_count"] = fields["category_count"]
        return row

    def scores(self) -> dict:
        """``{"reclm": {task: {metric: value}}, "original": {...}, "counts": {task: {...}}}`` (values float:
        sum / Count; Count itself is the number of samples scored)."""
        return {"reclm": _floats(self.reclm.results()), "original": _floats(self.original.results()),
                "counts": {t: dict(c) for t, c in self.counts.items()}}

    def table(self) -> str:
        return format_table(self.scores())


def _floats(results: Mapping[str, Mapping[str, float]]) -> dict:
    return {t: {m: float(v) for m, v in r.items()} for t, r in results.items()}


def format_table(scores: Mapping[str, Any]) -> str:
    """One plain-text table: per task, each metric in the reclm and the original counting side by side, then
    the sample counts."""
    reclm, original, counts = scores["reclm"], scores["original"], scores.get("counts", {})
    tasks = list(reclm)
    tw = max([len("task")] + [len(t) for t in tasks])
    mw = max(len(m) for m in TABLE_ORDER + COUNT_KEYS)
    lines = [f"{'task'.ljust(tw)}  {'metric'.ljust(mw)}  {'reclm':>10}  {'original':>10}"]
    lines.append("-" * len(lines[0]))
    for t in tasks:
        first = True
        for m in TABLE_ORDER:
            if m not in reclm[t]:
                continue
            a, b = reclm[t][m], original.get(t, {}).get(m)
            cells = [_cell(m, a), "/" if b is None else _cell(m, b)]
            lines.append(f"{(t if first else '').ljust(tw)}  {m.ljust(mw)}  {cells[0]:>10}  {cells[1]:>10}")
            first = False
        for key in COUNT_KEYS[1:]:
            if t in counts:
                lines.append(f"{''.ljust(tw)}  {key.ljust(mw)}  {counts[t][key]:>10}  {'':>10}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _cell(metric: str, value: float) -> str:
    return f"{int(value)}" if metric == "Count" else f"{value:.4f}"
