"""Validation by generation: greedy-decode val samples with the JAX model, parse the lists, score per task.

``evaluate_generation`` is SFT's validation: the prompts are tokenized exactly as for training
(``tokenize_sample``), batched into fixed buckets and decoded by one ``Sampler`` (one compiled program per prompt
bucket, shared by every batch and, when the caller keeps the Sampler, by every validation), then detokenized with
``skip_special_tokens``. RL's validation decodes with its own Sampler through the same ``greedy_decode`` and scores
with the same ``generation_metrics`` (plus its rewards), so both stages report the same task metrics.

Constrained validation (``train.val_constrained`` of SFT and RL): given a ``decoding.ConstrainedCatalogue``
(``validation_catalogue``, built once per run), each sample decodes under ``constraint_for_sample(task,
input_field_data)``, the rules its metrics check, so NonExist and Repeat are 0, CorrectCount 1, and so on; what
is left to measure is which items the model picks (NDCG, Recall).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from reclm_jax.data.item_index import ItemIndex, longest_list_tokens
from reclm_jax.data.pipeline import PipelineConfig, tokenize_sample
from reclm_jax.decoding import ConstrainedCatalogue, constraints_for_samples
from reclm_jax.eval.metrics import Metrics
from reclm_jax.eval.parsing import parse_list
from reclm_jax.models.generation import SamplingConfig
from reclm_jax.models.sampler import Sampler
from reclm_jax.models.special_tokens import resolve_stop_ids
from reclm_jax.models.tokenizer import pad_token_id

# Prompt-length buckets for validation decoding: steps of about 1.5x, so padding wastes at most a third of the
# prefill while a validation set still compiles only a few programs.
PROMPT_BUCKETS = (64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def validation_sampler(model, tokenizer: Any, *, batch_size: int = 16, runtime=None) -> Sampler:
    """The Sampler validation decodes with: validation's prompt buckets and the shared rules for the pad id
    (``models.tokenizer.pad_token_id``, as training batches and the generate CLI) and the stop ids
    (``special_tokens.resolve_stop_ids``; the model folder is the one the tokenizer was loaded from).

    ``model``: a ``LlamaForCausalLM``, ``(graphdef, state)`` or ``(graphdef, trainable, frozen)``. A trainer
    keeps the returned Sampler and calls ``update_params(trainable)`` before each validation, so every
    validation of a run reuses the programs compiled by the first."""
    return Sampler(model, pad_id=pad_token_id(tokenizer), stop_ids=resolve_stop_ids(tokenizer), runtime=runtime,
                   prompt_buckets=PROMPT_BUCKETS, batch_buckets=(batch_size,))


def validation_length(samples: Sequence[dict], index: ItemIndex, tokenizer: Any, idx: bool = True) -> int:
    """The automatic validation length: tokens of the longest list the index allows for the samples' largest
    ``item_count`` (``longest_list_tokens``, which tokenizes the whole catalogue: a trainer computes it once)."""
    k = max((int(s["input_field_data"].get("item_count", 0)) for s in samples), default=0)
    return longest_list_tokens(index, tokenizer, k, idx)


def validation_catalogue(ctx: Any, tokenizer: Any, *, progress: bool = False) -> ConstrainedCatalogue:
    """The ``decoding.ConstrainedCatalogue`` of a run's task context (``data.tasks.context.TaskContext``): its
    dataset's items under the run's item index, lists ending with the EOS string the labels end with. Building
    it tokenizes the catalogue once; its device arrays and compiled programs then serve every validation."""
    return ConstrainedCatalogue.from_dataset(ctx.raw, ctx.index, tokenizer, ctx.eos, progress=progress)


def greedy_decode(sampler: Sampler, prompts: Sequence[Sequence[int]], *, adapter: str | None, max_new_tokens: int,
                  batch_size: int = 16, progress: bool = True, desc: str = "validate", catalogue: Any = None,
                  constraints: Sequence[Any] | None = None) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token-id lists) -> token lists (the stop token included), in prompt
    order. Batches hold prompts of similar lengths (a batch is padded to its longest prompt's bucket, so batching
    in sample order, tasks interleaved and prompts of 100 to 500 tokens, prefilled mostly padding) and are padded
    to ``batch_size`` rows, so the last, shorter batch compiles nothing. ``adapter`` None = base weights.
    ``catalogue`` (a ``decoding.ConstrainedCatalogue``): prompt i decodes under ``constraints[i]`` (a
    ``ListConstraint``, or None for an unconstrained row)."""
    if catalogue is not None and (constraints is None or len(constraints) != len(prompts)):
        raise ValueError("greedy_decode: a catalogue needs one constraint per prompt")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc=desc, unit="sample", disable=not progress, leave=False)
    for start in range(0, len(prompts), batch_size):
        rows = order[start:start + batch_size]
        extra = catalogue.sampler_kwargs([constraints[i] for i in rows], sampler.runtime, limits=max_new_tokens) \
            if catalogue is not None else {}
        res = sampler([prompts[i] for i in rows], max_new_tokens=max_new_tokens, sampling=SamplingConfig(),
                      adapter=adapter, rows=batch_size, **extra)
        for i, toks in zip(rows, res.token_lists()):
            out[i] = toks
        bar.update(len(rows))
    bar.close()
    return out


def generation_metrics(samples: Sequence[dict], texts: Sequence[str], index: ItemIndex, category2item: dict, *,
                       idx: bool = True, list_rewards: Sequence[float] | None = None) -> Metrics:
    """The task metrics of generated ``texts`` (one per sample): each parsed with ``parse_list`` and scored by
    ``Metrics.add_sample`` against the sample's ``output_text`` (its target title), with the original's vague
    mapping. ``list_rewards`` (RL validation: the NR-20.1 list reward, x10) fill ``RewardSum``."""
    metrics = Metrics(sorted({s["task"] for s in samples}), index, category2item)
    rewards = list(list_rewards) if list_rewards is not None else [0.0] * len(samples)
    for s, text, r in zip(samples, texts, rewards):
        metrics.add_sample(s["task"], s["input_field_data"], parse_list(text, idx), s["output_text"],
                           list_reward=float(r))
    return metrics


def evaluate_generation(sampler_or_model, tokenizer: Any, samples: Sequence[dict], index: ItemIndex,
                        category2item: dict, *, adapter: str | None, batch_size: int = 16,
                        max_new_tokens: int = 0, max_prompt_length: int = 512, idx: bool = True,
                        progress: bool = True, desc: str = "validate",
                        catalogue: Any = None) -> tuple[Metrics, list[str]]:
    """Greedy-generates for every sample and returns (metrics, generated texts in sample order).

    ``sampler_or_model``: a ``Sampler`` (e.g. ``validation_sampler``'s, kept across validations) or a
    ``LlamaForCausalLM`` / its split, for which one Sampler is built for this validation. ``adapter`` None =
    base weights. Every batch is padded to ``batch_size`` rows (``greedy_decode``).
    ``max_new_tokens`` <= 0: the tokens of the longest list the index allows for the samples' largest
    ``item_count`` (``longest_list_tokens``), so no correct list is cut. ``catalogue``: decode each sample
    under its ``constraint_for_sample`` (``validation_catalogue``; numbered lists only, ``idx`` True).
    """
    sampler = sampler_or_model if isinstance(sampler_or_model, Sampler) else \
        validation_sampler(sampler_or_model, tokenizer, batch_size=batch_size)
    if max_new_tokens <= 0:
        max_new_tokens = validation_length(samples, index, tokenizer, idx)
    cfg = PipelineConfig(max_prompt_length=max_prompt_length, with_output=False,
                         prompt_buckets=PROMPT_BUCKETS)
    prompts = [tokenize_sample(s, tokenizer, cfg).prompt for s in samples]
    tokens = greedy_decode(sampler, prompts, adapter=adapter, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           progress=progress, desc=desc, catalogue=catalogue,
                           constraints=constraints_for_samples(samples) if catalogue is not None else None)
    texts = list(tokenizer.batch_decode(tokens, skip_special_tokens=True))
    return generation_metrics(samples, texts, index, category2item, idx=idx), texts


def mean_metric(metrics: Metrics, name: str = "NDCG") -> float:
    """Mean of ``name`` over the tasks that report it (the original's model-selection score)."""
    vals = [r[name] for r in metrics.results().values() if name in r]
    return float(np.mean(vals)) if vals else 0.0
