"""reclm-jax's list constraint as a vLLM V1 logits processor (the batch-level interface of
``vllm.v1.sample.logits_processor``): requests whose ``SamplingParams.extra_args`` hold ``reclm_constraint``
(in the OpenAI server: ``"vllm_xargs": {"reclm_constraint": "<JSON>"}``) decode under the same rule, token by
token, as ``reclm_jax.serve``'s ``reclm_constraint`` key; other requests are untouched. docs/serving.md has the
commands.

    RECLM_JAX_CONSTRAIN_DATA=DIR [RECLM_JAX_ITEM_INDEX=title] [RECLM_JAX_MAX_ITEMS=64] \\
      python -m vllm.entrypoints.openai.api_server --model MODEL \\
        --logits-processors reclm_jax.decoding.vllm_plugin:CatalogueLogitsProcessor

The catalogue (``ConstrainedCatalogue`` of the raw dataset folder's item index, tokenized by the served model's
tokenizer, ending lists with its EOS) is built once per worker when the processor is created, as
``reclm_jax.serve --constrain-data DIR --item-index NAME`` builds it. Without ``RECLM_JAX_CONSTRAIN_DATA`` the
processor does nothing and refuses constrained requests. The V1 model runner only: on a GPU with Triton, vLLM
0.32 picks its V2 runner unless ``VLLM_USE_V2_MODEL_RUNNER=0`` (``scripts/serve_vllm.sh`` sets it).

Imports vLLM, torch and the host-side decoding modules; never JAX.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from vllm import SamplingParams
from vllm.logger import init_logger
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from reclm_jax.decoding.spec import KEY
from reclm_jax.decoding.vllm_batch import (DATA_ENV, RequestRows, load_catalogue, request_constraint, request_spec,
                                           settings)
from reclm_jax.errors import UserError

log = init_logger("vllm.reclm_jax")  # under vLLM's logger, whose handler prints to its log

@lru_cache(maxsize=4)
def _categories(data: str) -> frozenset[str]:
    """The dataset's category names (read once per process), for checking requests in vLLM's frontend."""
    from reclm_jax.datasets.raw import load_raw

    return frozenset(load_raw(data, item_index="title").categories)


class CatalogueLogitsProcessor(LogitsProcessor):
    """Masks, per constrained request, every token that would leave a list of distinct catalogue items obeying
    its constraint (``host_state.HostRow``, the rules of ``CatalogueProcessor``)."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams):
        """Refuses (ValueError: a 400 in the OpenAI server) a malformed ``reclm_constraint``, one sent to a server
        without ``RECLM_JAX_CONSTRAIN_DATA``, and an "only" rule on a category the dataset does not have."""
        try:
            if request_spec(sampling_params.extra_args) in (None, False):
                return
            c = request_constraint(sampling_params.extra_args)
        except UserError as e:
            raise ValueError(str(e)) from None
        data = settings()[0]
        if data is None:
            raise ValueError(f"'{KEY}' needs vLLM started with {DATA_ENV}=DIR (a raw dataset folder) and this "
                             f"logits processor")
        if c.category is not None and c.category_mode == "only" and c.category not in _categories(data):
            raise ValueError(f"'{KEY}': unknown category {c.category!r}")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        data, item_index, max_items = settings()
        self.rows = None
        if data is not None:
            cat = load_catalogue(vllm_config.model_config.tokenizer, data, item_index, max_items)
            self.rows = RequestRows(cat)
            log.info("reclm-jax constrained decoding: %d items of %s (%s index, %d left out), lists of up to %d",
                     len(cat), data, item_index, len(cat.dropped), max_items)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token is the most likely

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.rows is not None:
            self.rows.update(batch_update)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.rows is None else self.rows.apply(logits)
