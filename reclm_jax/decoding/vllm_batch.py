"""The vLLM plugin's host side, without vLLM: its catalogue from the environment (``settings``,
``load_catalogue``) and its batch bookkeeping: which persistent-batch slot holds which constrained
request (``update``, from vLLM V1's ``BatchUpdate``: removed, then added, then moved), and the mask of every
constrained slot (``apply``), each from its own ``host_state.HostRow``.

A row's state is advanced in ``apply`` from the request's output token list (vLLM hands the plugin a reference
to it when the request is added): ``update_state`` runs before the step's tokens are final (with async
scheduling the last one is still a -1 placeholder then), the logits are not. A request re-added after
preemption replays its output from the start. Rows without the ``reclm_constraint`` extra argument are left
alone. A row's token budget is its request's ``SamplingParams.max_tokens`` (None: unlimited), so its list ends on
a whole item within it, as in ``reclm_jax.serve``.

``request_spec(extra_args)`` reads the argument: an object (``SamplingParams(extra_args=...)`` in Python), a JSON
string (the OpenAI server's ``vllm_xargs`` takes only strings, numbers and lists), or ``true`` / 1.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import numpy as np

from reclm_jax.decoding.catalogue import ListConstraint
from reclm_jax.decoding.host_state import HostRow, HostTables
from reclm_jax.decoding.spec import KEY, SpecError, constraint_from_spec
from reclm_jax.errors import UserError

log = logging.getLogger("vllm.reclm_jax")  # under vLLM's logger, whose handler prints to its log
DATA_ENV, INDEX_ENV, MAX_ITEMS_ENV = "RECLM_JAX_CONSTRAIN_DATA", "RECLM_JAX_ITEM_INDEX", "RECLM_JAX_MAX_ITEMS"


def settings() -> tuple[str | None, str, int]:
    """(dataset folder or None, item index, longest list) from the plugin's environment variables."""
    return os.environ.get(DATA_ENV) or None, os.environ.get(INDEX_ENV) or "title", int(
        os.environ.get(MAX_ITEMS_ENV) or 64)


def load_catalogue(tokenizer_path: str, data: str, item_index: str = "title", max_items: int = 64):
    """The ``ConstrainedCatalogue`` that ``reclm_jax.serve --constrain-data data --item-index item_index`` builds
    for the model whose tokenizer is at ``tokenizer_path``."""
    from reclm_jax.decoding.catalogue import ConstrainedCatalogue
    from reclm_jax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path, key="the served model")
    return ConstrainedCatalogue.from_folder(data, item_index, tok, max_items=max_items)


def request_spec(extra_args: Mapping[str, Any] | None) -> Any:
    """The constraint spec in ``extra_args`` (``SamplingParams.extra_args``), decoded; None when absent."""
    spec = (extra_args or {}).get(KEY)
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise SpecError(f"'{KEY}' is a string but not JSON ({e})") from None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool) and spec in (0, 1):
        spec = bool(spec)  # pydantic may turn the JSON true of vllm_xargs into 1
    return spec


def request_constraint(extra_args: Mapping[str, Any] | None) -> ListConstraint | None:
    """The request's ``ListConstraint`` (``spec.constraint_from_spec`` of its spec), None when unconstrained."""
    return constraint_from_spec(request_spec(extra_args))


class _Slot:
    __slots__ = ("row", "output", "seen")

    def __init__(self, row: HostRow, output: list[int]):
        self.row, self.output, self.seen = row, output, 0

    def catch_up(self) -> None:
        while self.seen < len(self.output):
            tok = self.output[self.seen]
            if tok < 0:  # an async-scheduling placeholder: not sampled yet
                break
            self.row.advance(tok)
            self.seen += 1


class RequestRows:
    """The constrained slots of one vLLM persistent batch over ``catalogue`` (a ``ConstrainedCatalogue``)."""

    def __init__(self, catalogue):
        self.catalogue = catalogue
        self.tables = HostTables(catalogue)
        self.slots: dict[int, _Slot] = {}

    def new_row(self, constraint: ListConstraint, limit: int | None = None) -> HostRow:
        """The row of one request; ``limit``: its ``max_tokens`` (None: unlimited), so its list ends on a whole
        item within it."""
        try:
            rows = self.catalogue.row_data([constraint], [limit])["rows"]
        except UserError as e:  # validate_params checks the spec first; a mistake left ends the list at once
            log.error("%s: %s; the request's list ends at once", KEY, e)
            rows = self.catalogue.row_data([ListConstraint(k_min=0, k_max=0)])["rows"]
        return HostRow(self.tables, rows)

    def update(self, batch_update) -> None:
        """Applies a vLLM V1 ``BatchUpdate`` (``removed`` slots, ``added`` (slot, params, prompt ids, output ids),
        ``moved`` (a, b, direction): a -> b, or a <-> b when the direction's name is SWAP); None: no change."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.slots.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            try:
                c = request_constraint(getattr(params, "extra_args", None))
            except UserError as e:
                log.error("%s", e)
                c = ListConstraint(k_min=0, k_max=0)
            if c is None:
                self.slots.pop(index, None)
            else:
                self.slots[index] = _Slot(self.new_row(c, getattr(params, "max_tokens", None)), output)
        for a, b, direction in batch_update.moved:
            sa, sb = self.slots.pop(a, None), self.slots.pop(b, None)
            if sa is not None:
                self.slots[b] = sa
            if sb is not None and getattr(direction, "name", direction) == "SWAP":
                self.slots[a] = sb

    def allowed(self) -> dict[int, np.ndarray]:
        """Slot -> the tokens its row may write now (int64 [A]), after reading its new output tokens."""
        out = {}
        for index, slot in self.slots.items():
            slot.catch_up()
            out[index] = slot.row.allowed()
        return out

    def apply(self, logits):
        """Sets the logits (torch float [batch, vocab], in place) of every token a constrained slot may not write
        to -inf; other slots keep theirs. Returns ``logits``."""
        import torch

        allowed = {i: a for i, a in self.allowed().items() if i < logits.shape[0]}
        if not allowed:
            return logits
        index = sorted(allowed)
        # Only the allowed (row, token) pairs travel to the logits' device (a few KB), not a [rows, vocab] mask.
        toks = [allowed[i][allowed[i] < logits.shape[1]] for i in index]
        at_row = np.repeat(np.arange(len(index)), [len(t) for t in toks])
        at_tok = np.concatenate(toks) if toks else np.zeros(0, np.int64)
        dev = logits.device
        mask = torch.zeros((len(index), logits.shape[1]), dtype=torch.bool, device=dev)
        mask[torch.from_numpy(at_row).to(dev), torch.from_numpy(at_tok.astype(np.int64)).to(dev)] = True
        rows = torch.tensor(index, dtype=torch.long, device=dev)
        logits[rows] = logits[rows].masked_fill(~mask, float("-inf"))
        return logits
