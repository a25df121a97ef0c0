"""A task sample -> its ``ListConstraint``, from the same ``input_field_data`` fields the metrics read
(``eval/metrics.py``), so a constrained list is checked by exactly the rules it was decoded under:

- every task: distinct catalogue items, none of the history ``sub_sequential`` (InHistoryRate), exactly
  ``item_count`` of them (CorrectCount) when the sample has one;
- ranking tasks (``candidate_items``): only candidates (NotInCandidateRate);
- ``SFT+TestPersonalControlRec`` / ``RL-PersonalControlRec`` and the like (SFT test and RL): only / no items of ``target_category``
  (TargetCategoryRate);
- CategoryRate tasks (``data.task_names.rate_variant``: LP, MP, EP; LP1 and LC as LP, MC as MP), with
  c = ``category_count``: LP at most c items of the category, MP at least c, EP between c - 1 and c + 1
  (CategoryRateCorrect's rules with no non-existent items).

SFT training tasks whose sign or variant is not in their name (``SFTPersonalControlRec``,
``SFTPersonalCategoryRate``) get only the general rules.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from reclm_jax.decoding.catalogue import ListConstraint
from reclm_jax.data.task_names import rate_variant

_CONTROL = re.compile(r"([+-])(?:Test)?PersonalControlRec")


def constraint_for_sample(task: str, input_field_data: Mapping[str, Any]) -> ListConstraint:
    """The constraint of one sample (``task`` name and its ``input_field_data``)."""
    f = input_field_data
    k = f.get("item_count")
    k_min, k_max = (int(k), int(k)) if k is not None else (1, None)
    history = tuple(str(i) for i in f.get("sub_sequential") or ())
    candidates = f.get("candidate_items")
    candidates = tuple(str(i) for i in candidates) if candidates is not None else None
    category = f.get("target_category")
    mode, c_min, c_max = "none", 0, None
    sign = _CONTROL.search(task)
    if category is not None and sign:
        mode = "only" if sign.group(1) == "+" else "exclude"
    variant = rate_variant(task)
    if variant and category is not None and f.get("category_count") is not None:
        c = int(f["category_count"])
        c_min, c_max = {"LP": (0, c), "MP": (c, None), "EP": (max(c - 1, 0), c + 1)}[variant]
    if mode == "none" and not variant:
        category = None
    return ListConstraint(k_min=k_min, k_max=k_max, category=category, category_mode=mode, c_min=c_min, c_max=c_max,
                          exclude=history, candidates=candidates)


def constraints_for_samples(samples) -> list[ListConstraint]:
    """One constraint per sample dict (``task``, ``input_field_data``)."""
    return [constraint_for_sample(s["task"], s["input_field_data"]) for s in samples]
