"""Validation by generation: greedy-decode val samples with the JAX model, parse the lists, score per task.

Used by SFT (and RL) validation. The prompts are tokenized exactly as for training (``tokenize_sample``), batched
into fixed buckets so every batch reuses one compiled decoder, and decoded with ``skip_special_tokens``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from reclm_jax.data.item_index import ItemIndex, longest_list_tokens
from reclm_jax.data.pipeline import PipelineConfig, tokenize_sample
from reclm_jax.eval.metrics import Metrics
from reclm_jax.eval.parsing import parse_list
from reclm_jax.models.generation import SamplingConfig, generate

# Prompt-length buckets for validation decoding: steps of about 1.5x, so padding wastes at most a third of the
# prefill while a validation set still compiles only a few programs.
PROMPT_BUCKETS = (64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS plus the chat end-of-turn token when the tokenizer has one (ChatML ``<|im_end|>``, Llama-3
    ``<|eot_id|>``)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
        i = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(i, int) and i != tokenizer.unk_token_id and i not in ids:
            ids.append(i)
    return ids[:8]


def evaluate_generation(model, tokenizer: Any, samples: Sequence[dict], index: ItemIndex,
                        category2item: dict, *, adapter: str | None, batch_size: int = 16,
                        max_new_tokens: int = 0, max_prompt_length: int = 512, idx: bool = True,
                        progress: bool = True, desc: str = "validate") -> tuple[Metrics, list[str]]:
    """Generates for every sample and returns (metrics, generated texts in sample order).

    ``model``: a ``LlamaForCausalLM`` or its ``(graphdef, state)``; ``adapter`` None = base weights.
    ``max_new_tokens`` <= 0: the tokens of the longest list the index allows for the samples' largest
    ``item_count`` (``longest_list_tokens``), so no correct list is cut.
    """
    if max_new_tokens <= 0:
        k = max((int(s["input_field_data"].get("item_count", 0)) for s in samples), default=0)
        max_new_tokens = longest_list_tokens(index, tokenizer, k, idx)
    cfg = PipelineConfig(max_prompt_length=max_prompt_length, with_output=False,
                         prompt_buckets=PROMPT_BUCKETS)
    prompts = [tokenize_sample(s, tokenizer, cfg).prompt for s in samples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    stops = stop_token_ids(tokenizer)
    metrics = Metrics(sorted({s["task"] for s in samples}), index, category2item)
    texts: list[str] = []
    bar = tqdm(total=len(samples), desc=desc, unit="sample", disable=not progress, leave=False)
    for start in range(0, len(samples), batch_size):
        chunk = prompts[start:start + batch_size]
        # A fixed row count (batch_size) keeps one compiled shape for the last, shorter batch too.
        res = generate(model, chunk, max_new_tokens=max_new_tokens, pad_id=pad, stop_ids=stops,
                       sampling=SamplingConfig(), adapter=adapter, batch_buckets=(batch_size,),
                       prompt_buckets=PROMPT_BUCKETS)
        texts += tokenizer.batch_decode(res.token_lists(), skip_special_tokens=True)
        bar.update(len(chunk))
    bar.close()
    for s, text in zip(samples, texts):
        metrics.add_sample(s["task"], s["input_field_data"], parse_list(text, idx), s["output_text"])
    return metrics, texts


def mean_metric(metrics: Metrics, name: str = "NDCG") -> float:
    """Mean of ``name`` over the tasks that report it (the original's model-selection score)."""
    vals = [r[name] for r in metrics.results().values() if name in r]
    return float(np.mean(vals)) if vals else 0.0
