"""Constrained decoding: lists of distinct catalogue items that obey the task's instruction, enforced inside the
compiled decode loop (``CatalogueProcessor``) from a token trie over the item index (``ConstrainedCatalogue``).

Sits on ``models/`` (the ``LogitsProcessor`` hook) and ``data/`` (list format, task names); stages and the
evaluation layer import it.
"""

from reclm_jax.decoding.catalogue import ConstrainedCatalogue, ListConstraint
from reclm_jax.decoding.constraints import constraint_for_sample, constraints_for_samples
from reclm_jax.decoding.processor import CatalogueProcessor

__all__ = ["CatalogueProcessor", "ConstrainedCatalogue", "ListConstraint", "constraint_for_sample",
           "constraints_for_samples"]
