"""The ``reclm_constraint`` request key: which list constraint a request decodes under (docs/serving.md).

Accepted forms (the server must have been started with ``--constrain-data``):

- ``true``: distinct catalogue items in the numbered list format, any count up to the catalogue's longest list;
- ``{"task": NAME, "input_field_data": {...}}``: a task sample's own fields, turned into its rule exactly as
  ``decoding.constraints.constraint_for_sample`` does (what ``python -m reclm_jax.eval --constrained`` sends);
- ``{"item_count": k}`` or ``{"k_min": a, "k_max": b}``, plus any of ``"category"``, ``"category_mode"``
  ("only" | "exclude" | "none"), ``"c_min"``, ``"c_max"``, ``"exclude"`` and ``"candidates"`` (lists of item ids):
  a ``decoding.ListConstraint`` spelled out.

``false`` or ``null``: no constraint.
"""

from __future__ import annotations

from typing import Any

from reclm_jax.errors import UserError
from reclm_jax.service.http import BadRequest

KEY = "reclm_constraint"
_FIELDS = ("item_count", "k_min", "k_max", "category", "category_mode", "c_min", "c_max", "exclude", "candidates")


def _ids(v: Any, field: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
        raise BadRequest(f"'{KEY}.{field}' must be a list of item ids", param=KEY)
    return tuple(str(x) for x in v)


def _count(spec: dict, field: str) -> int | None:
    v = spec.get(field)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise BadRequest(f"'{KEY}.{field}' must be an integer >= 0, got {v!r}", param=KEY)
    return v


def parse_constraint(body: dict, catalogue) -> Any:
    """The request's ``ListConstraint`` or None; ``catalogue``: the server's ``ConstrainedCatalogue`` or None."""
    spec = body.get(KEY)
    if spec is None or spec is False:
        return None
    if catalogue is None:
        raise BadRequest(f"'{KEY}' needs a server started with --constrain-data (this one has no catalogue)",
                         param=KEY)
    from reclm_jax.decoding import ListConstraint, constraint_for_sample

    if spec is True:
        return ListConstraint()
    if not isinstance(spec, dict):
        raise BadRequest(f"'{KEY}' must be true, an object or null, got {type(spec).__name__}", param=KEY)
    try:
        if "task" in spec:
            fields = spec.get("input_field_data")
            if not isinstance(spec["task"], str) or not isinstance(fields, dict):
                raise BadRequest(f"'{KEY}' with 'task' (a string) needs 'input_field_data' (an object)", param=KEY)
            c = constraint_for_sample(spec["task"], fields)
        else:
            unknown = sorted(set(spec) - set(_FIELDS))
            if unknown:
                raise BadRequest(f"'{KEY}' has unknown fields {unknown}; known: task, input_field_data, "
                                 f"{', '.join(_FIELDS)}", param=KEY)
            k = _count(spec, "item_count")
            k_min, k_max = (k, k) if k is not None else (_count(spec, "k_min") or 1, _count(spec, "k_max"))
            category = spec.get("category")
            if category is not None and not isinstance(category, str):
                raise BadRequest(f"'{KEY}.category' must be a string", param=KEY)
            c = ListConstraint(k_min=k_min, k_max=k_max, category=category,
                               category_mode=spec.get("category_mode") or "none", c_min=_count(spec, "c_min") or 0,
                               c_max=_count(spec, "c_max"), exclude=_ids(spec.get("exclude", []), "exclude"),
                               candidates=_ids(spec["candidates"], "candidates") if spec.get("candidates")
                               is not None else None)
        catalogue.row_data([c])  # unknown categories and the like fail here, not in the decode
    except UserError as e:
        raise BadRequest(f"'{KEY}': {e}", param=KEY) from None
    except (TypeError, ValueError) as e:
        raise BadRequest(f"'{KEY}': {e}", param=KEY) from None
    return c
