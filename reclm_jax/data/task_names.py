"""What a task's name says about its rule, shared by the metrics (``eval/metrics.py``) and the constraints of
constrained decoding (``decoding/constraints.py``), so both read a name the same way."""

from __future__ import annotations

import re

_RATE_VARIANT = re.compile(r"(?:SFTTest|RL)PersonalCategoryRate(LP1|LP|MP|EP|LC|MC)?")


def rate_variant(task: str) -> str | None:
    """'MP' / 'EP' / 'LP' for a CategoryRate task (LP1 and LC count as LP, MC as MP; the generic RL task is LP)."""
    m = _RATE_VARIANT.match(task)
    if not m:
        return None
    v = m.group(1) or "LP"
    return {"LP1": "LP", "LC": "LP", "MC": "MP"}.get(v, v)
