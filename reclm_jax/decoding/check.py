"""Checks a parsed list against its ``ListConstraint`` on the host, with plain set logic independent of the
JAX processor: what tests, the benchmark and users run to confirm that a constrained output obeys its rule."""

from __future__ import annotations

from typing import Sequence

from reclm_jax.decoding.catalogue import ConstrainedCatalogue, ListConstraint


def violations(titles: Sequence[str], constraint: ListConstraint, catalogue: ConstrainedCatalogue,
               item2category) -> list[str]:
    """Every way ``titles`` (as ``eval.parsing.parse_list`` returns them) breaks ``constraint``; [] when none.

    ``item2category``: item id -> category names, the dataset's. The count bounds are the ones the catalogue
    can meet (``row_data`` lowers them to the items a row may write).
    """
    c = constraint
    by_title = dict(zip(catalogue.titles, catalogue.items))
    out = [f"not a catalogue title: {t!r}" for t in titles if t not in by_title]
    items = [by_title[t] for t in titles if t in by_title]
    if len(set(titles)) != len(titles):
        out.append("a title repeats")
    rows = catalogue.row_data([c])["rows"]
    k_min, k_max, c_min, c_max = (int(rows[f][0]) for f in ("k_min", "k_max", "c_min", "c_max"))
    if not k_min <= len(titles) <= k_max:
        out.append(f"{len(titles)} items, not in [{k_min}, {k_max}]")
    out += [f"{i} is in the history" for i in items if i in set(c.exclude)]
    if c.candidates is not None:
        out += [f"{i} is not a candidate" for i in items if i not in set(c.candidates)]
    if c.category is not None:
        inside = [i for i in items if c.category in (item2category.get(i) or ())]
        if c.category_mode == "only" and len(inside) != len(items):
            out.append(f"items outside {c.category}")
        if c.category_mode == "exclude" and inside:
            out.append(f"items of {c.category}")
        if not c_min <= len(inside) <= c_max:
            out.append(f"{len(inside)} items of {c.category}, not in [{c_min}, {c_max}]")
    return out
