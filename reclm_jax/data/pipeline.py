"""grain pipelines: datum index -> sample -> tokens -> length-bucketed batches, sharded across JAX processes.

    source = EpochSource(builder, epoch=3, indices=shard_indices(len(builder), seed, 3, jax.process_index(),
                                                                jax.process_count()))
    it = batch_iterator(source, tokenizer, PipelineConfig(batch_size=8))
    batch = next(it); state = it.get_state(); ...; it.set_state(state)    # resumable mid-epoch

Dynamic mode builds samples on the fly (``EpochSource``: ``chunk`` samples per teacher call, cached for the
epoch); static mode reads the pickles written by ``python -m reclm_jax.data.process`` (``StaticSource``; epoch e
uses stored epoch ``e % n``, as the original). Each process takes every ``process_count``-th index of the
epoch's shuffled order, so processes see disjoint samples and the same number of batches.

Batch arrays (B = batch size, P/O = prompt/output bucket lengths, both from the config's bucket lists):
    input_ids      int32 [B, P+O]  prompt left-padded to P (left-truncated if longer), then output right-padded
    attention_mask int32 [B, P+O]  1 on real tokens
    positions      int32 [B, P+O]  0-based position of each real token (0 on padding)
    loss_mask      float32 [B, P+O] 1 on output tokens, EOS included: the token at t is predicted from t-1
    prompt_length  int             P (prompt-only batches have O = 0)
plus ``samples``: the sample dicts (task, texts, input_field_data) for evaluation and rewards.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any, Sequence

import grain
import numpy as np

from reclm_jax.buckets import bucket
from reclm_jax.data.samples import SampleBuilder
from reclm_jax.errors import UserError
from reclm_jax.models.tokenizer import pad_token_id


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int = 8
    max_prompt_length: int = 512  # the original's max_token_length
    max_output_length: int = 512  # the original's gen_max_length
    prompt_buckets: tuple[int, ...] = (64, 128, 256, 512)
    output_buckets: tuple[int, ...] = (32, 64, 128, 256, 512)
    with_output: bool = True  # False: prompt-only batches (RL rollouts, generation)
    drop_remainder: bool = True


def shard_indices(n: int, seed: int, epoch: int, process_index: int = 0, process_count: int = 1,
                  shuffle: bool = True) -> np.ndarray:
    """This process's datum indices for ``epoch``: a (seed, epoch) permutation, then every ``process_count``-th
    entry, cut so every process gets the same count."""
    order = np.arange(n)
    if shuffle:
        order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, 2**31 - 1]))).permutation(n)
    per = n // process_count if process_count > 1 else n
    return order[process_index::process_count][:per]


class EpochSource:
    """Random-access samples of one epoch for grain: position p -> sample of datum ``indices[p]``. Samples are
    built ``chunk`` positions at a time (one batched teacher round trip) and cached for the epoch."""

    def __init__(self, builder: SampleBuilder, epoch: int, indices: Sequence[int] | None = None, chunk: int = 256):
        self.builder = builder
        self.epoch = epoch
        self.indices = np.arange(len(builder)) if indices is None else np.asarray(indices)
        self.chunk = chunk
        self._cache: dict[int, list[dict]] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        c = int(position) // self.chunk
        if c not in self._cache:
            idx = self.indices[c * self.chunk:(c + 1) * self.chunk]
            self._cache[c] = self.builder.build([int(i) for i in idx], self.epoch)
        return self._cache[c][int(position) - c * self.chunk]


class StaticSource:
    """Samples of one stored epoch of a ``*_dataset_{train,val}.pickle`` (``List[List[Dict]]``)."""

    def __init__(self, epochs: list[list[dict]], epoch: int, indices: Sequence[int] | None = None):
        if not epochs:
            raise UserError("the static dataset holds no epochs")
        self.samples = epochs[epoch % len(epochs)]
        self.indices = np.arange(len(self.samples)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        return self.samples[int(self.indices[int(position)])]


def load_static(path: str | Path) -> list[list[dict]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"dataset file not found: {p}")
    with open(p, "rb") as f:
        obj = pickle.load(f)
    if not isinstance(obj, list) or not all(isinstance(e, list) for e in obj):
        raise UserError(f"{p}: expected a list of epochs, each a list of sample dicts")
    return obj


class Tokenized:
    """Token ids of one sample (prompt with its BOS, output without)."""

    __slots__ = ("prompt", "output", "sample")

    def __init__(self, prompt: list[int], output: list[int], sample: dict):
        self.prompt, self.output, self.sample = prompt, output, sample


def _truncate_left_keeping_specials(ids: list[int], text: str, tokenizer: Any, added: bool, cap: int) -> list[int]:
    """The last tokens of the content, with the special tokens around it kept, ``cap`` tokens in all."""
    if added:  # the tokenizer added its specials: find the content inside them
        content = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = len(content)
        start = next((i for i in range(len(ids) - n + 1) if ids[i:i + n] == content), len(ids) - n)
        head, tail = ids[:start], ids[start + n:]
    else:  # the text itself starts with the BOS string
        bos_id = getattr(tokenizer, "bos_token_id", None)
        head, tail = (ids[:1] if ids and ids[0] == bos_id else []), []
        content = ids[len(head):]
    keep = max(cap - len(head) - len(tail), 0)
    return (head + content[len(content) - keep:] + tail)[-cap:]


def tokenize_sample(sample: dict, tokenizer: Any, cfg: PipelineConfig) -> Tokenized:
    """Prompt: the tokenizer's special tokens (BOS) unless the text already starts with BOS (chat templates that
    write it), left-truncated to ``max_prompt_length`` by cutting the content and keeping the leading BOS /
    trailing special tokens (HF's left truncation, which the original used); output: no special tokens added (the
    text carries its EOS), right-truncated to ``max_output_length`` (both also capped at their largest bucket)."""
    text = sample["input_text"]
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and text.startswith(bos))
    # The largest bucket is a hard cap too, so every batch has a bucketed shape.
    cap = min(cfg.max_prompt_length, cfg.prompt_buckets[-1])
    prompt = tokenizer(text, add_special_tokens=add)["input_ids"]
    if len(prompt) > cap:
        prompt = _truncate_left_keeping_specials(prompt, text, tokenizer, add, cap)
    output = []
    if cfg.with_output:
        cap = min(cfg.max_output_length, cfg.output_buckets[-1])
        output = tokenizer(sample["output_text"], add_special_tokens=False)["input_ids"][:cap]
    return Tokenized(list(prompt), list(output), sample)


def collate(items: Sequence[Tokenized], cfg: PipelineConfig, pad_id: int) -> dict:
    """Pads a list of tokenized samples into the arrays described in the module doc."""
    b = len(items)
    p = bucket(max(len(t.prompt) for t in items), cfg.prompt_buckets)
    o = bucket(max(len(t.output) for t in items), cfg.output_buckets) if cfg.with_output else 0
    ids = np.full((b, p + o), pad_id, np.int32)
    mask = np.zeros((b, p + o), np.int32)
    loss = np.zeros((b, p + o), np.float32)
    for r, t in enumerate(items):
        n = len(t.prompt)
        ids[r, p - n:p] = t.prompt
        mask[r, p - n:p] = 1
        m = len(t.output)
        if m:
            ids[r, p:p + m] = t.output
            mask[r, p:p + m] = 1
            loss[r, p:p + m] = 1.0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32) * mask
    return {"input_ids": ids, "attention_mask": mask, "positions": positions, "loss_mask": loss,
            "prompt_length": p, "samples": [t.sample for t in items]}


def batch_dataset(source: Any, tokenizer: Any, cfg: PipelineConfig) -> grain.MapDataset:
    """grain MapDataset of padded batches over ``source`` (already this process's shard, in order)."""
    pad = pad_token_id(tokenizer)
    return (grain.MapDataset.source(source)
            .map(lambda s: tokenize_sample(s, tokenizer, cfg))
            .batch(cfg.batch_size, drop_remainder=cfg.drop_remainder, batch_fn=lambda xs: collate(xs, cfg, pad)))


def batch_iterator(source: Any, tokenizer: Any, cfg: PipelineConfig):
    """A checkpointable iterator (``get_state`` / ``set_state``) over the batches of ``source``."""
    return iter(batch_dataset(source, tokenizer, cfg).to_iter_dataset())


def epoch_iterator(builder: SampleBuilder, tokenizer: Any, cfg: PipelineConfig, epoch: int, seed: int = 0,
                   shuffle: bool = True, process_index: int | None = None, process_count: int | None = None,
                   chunk: int = 256):
    """Dynamic mode, one epoch of this JAX process's batches (process index/count default to JAX's)."""
    if process_index is None or process_count is None:
        import jax
        process_index, process_count = jax.process_index(), jax.process_count()
    idx = shard_indices(len(builder), seed, epoch, process_index, process_count, shuffle)
    return batch_iterator(EpochSource(builder, epoch, idx, chunk), tokenizer, cfg)


def static_epoch_iterator(epochs: list[list[dict]], tokenizer: Any, cfg: PipelineConfig, epoch: int, seed: int = 0,
                          shuffle: bool = True, process_index: int | None = None,
                          process_count: int | None = None):
    """Static mode, one epoch of this process's batches from stored epochs (epoch e uses ``e % len``)."""
    if process_index is None or process_count is None:
        import jax
        process_index, process_count = jax.process_index(), jax.process_count()
    n = len(epochs[epoch % len(epochs)])
    idx = shard_indices(n, seed, epoch, process_index, process_count, shuffle)
    return batch_iterator(StaticSource(epochs, epoch, idx), tokenizer, cfg)
