"""A request's constraint spec -> its ``ListConstraint``: the forms of ``reclm_jax.serve``'s ``reclm_constraint``
body key and of the vLLM plugin's ``extra_args`` (docs/serving.md), read by one function so both servers decode
a request under the same rule.

- ``true``: distinct catalogue items in the numbered list format, any count up to the catalogue's longest list;
- ``{"task": NAME, "input_field_data": {...}}``: a task sample's own fields, turned into its rule exactly as
  ``constraints.constraint_for_sample`` does (what ``python -m reclm_jax.eval --constrained`` sends);
- ``{"item_count": k}`` or ``{"k_min": a, "k_max": b}``, plus any of ``"category"``, ``"category_mode"``
  ("only" | "exclude" | "none"), ``"c_min"``, ``"c_max"``, ``"exclude"`` and ``"candidates"`` (lists of item ids):
  a ``ListConstraint`` spelled out.

``false`` or ``null``: no constraint. Mistakes raise ``SpecError`` naming the field.
"""

from __future__ import annotations

from typing import Any

from reclm_jax.decoding.catalogue import ListConstraint
from reclm_jax.decoding.constraints import constraint_for_sample
from reclm_jax.errors import UserError

KEY = "reclm_constraint"
FIELDS = ("item_count", "k_min", "k_max", "category", "category_mode", "c_min", "c_max", "exclude", "candidates")


class SpecError(UserError):
    """A constraint spec the servers refuse (a 400 naming ``KEY``)."""


def _ids(v: Any, field: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
        raise SpecError(f"'{KEY}.{field}' must be a list of item ids")
    return tuple(str(x) for x in v)


def _count(spec: dict, field: str) -> int | None:
    v = spec.get(field)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise SpecError(f"'{KEY}.{field}' must be an integer >= 0, got {v!r}")
    return v


def constraint_from_spec(spec: Any) -> ListConstraint | None:
    """The ``ListConstraint`` of ``spec`` (one of the forms above), None for ``null`` / ``false``."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return ListConstraint()
    if not isinstance(spec, dict):
        raise SpecError(f"'{KEY}' must be true, an object or null, got {type(spec).__name__}")
    try:
        if "task" in spec:
            fields = spec.get("input_field_data")
            if not isinstance(spec["task"], str) or not isinstance(fields, dict):
                raise SpecError(f"'{KEY}' with 'task' (a string) needs 'input_field_data' (an object)")
            return constraint_for_sample(spec["task"], fields)
        unknown = sorted(set(spec) - set(FIELDS))
        if unknown:
            raise SpecError(f"'{KEY}' has unknown fields {unknown}; known: task, input_field_data, {', '.join(FIELDS)}")
        k = _count(spec, "item_count")
        k_min, k_max = (k, k) if k is not None else (_count(spec, "k_min") or 1, _count(spec, "k_max"))
        category = spec.get("category")
        if category is not None and not isinstance(category, str):
            raise SpecError(f"'{KEY}.category' must be a string")
        return ListConstraint(k_min=k_min, k_max=k_max, category=category,
                              category_mode=spec.get("category_mode") or "none", c_min=_count(spec, "c_min") or 0,
                              c_max=_count(spec, "c_max"), exclude=_ids(spec.get("exclude", []), "exclude"),
                              candidates=_ids(spec["candidates"], "candidates") if spec.get("candidates")
                              is not None else None)
    except SpecError:
        raise
    except (UserError, TypeError, ValueError) as e:
        raise SpecError(f"'{KEY}': {e}") from None
