"""Constrained decoding: lists of distinct catalogue items that obey the task's instruction, enforced inside the
compiled decode loop (``CatalogueProcessor``) from a token trie over the item index (``ConstrainedCatalogue``),
or, in vLLM, by the same rules on the host (``host_state.py``, ``vllm_plugin.py``).

Sits on ``models/`` (the ``LogitsProcessor`` hook) and ``data/`` (list format, task names); stages and the
evaluation layer import it. Importing the package does not import JAX (``CatalogueProcessor`` is loaded on first
use): vLLM's process imports the host-side modules without it.
"""

from reclm_jax.decoding.catalogue import ConstrainedCatalogue, ListConstraint
from reclm_jax.decoding.constraints import constraint_for_sample, constraints_for_samples

__all__ = ["CatalogueProcessor", "ConstrainedCatalogue", "ListConstraint", "constraint_for_sample",
           "constraints_for_samples"]


def __getattr__(name: str):
    if name == "CatalogueProcessor":
        from reclm_jax.decoding.processor import CatalogueProcessor

        return CatalogueProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
