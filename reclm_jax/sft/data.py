"""Wires the task layer into the SFT trainer: tokenizer, task context, teacher, train batches, val samples.

Train batches come from the dynamic grain pipeline (samples regenerated every epoch from (seed, epoch, index))
or, with ``data.train_data_file``, from a stored ``SFT_dataset_train.pickle``. A step consumes ``grad_accum``
micro-batches; they are stacked into [A, B, T] arrays, right-padded to their longest bucket (padding is masked,
so the loss does not change).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from reclm_jax.data.item_index import ItemIndex
from reclm_jax.data.pipeline import PipelineConfig, epoch_iterator, load_static, static_epoch_iterator
from reclm_jax.data.samples import SampleBuilder
from reclm_jax.data.task_setup import build_task_context
from reclm_jax.data.tasks import TaskContext, TaskSettings
from reclm_jax.data.teacher_protocol import TeacherLike
from reclm_jax.errors import UserError
from reclm_jax.models.tokenizer import pad_token_id
from reclm_jax.sft.config import SFTConfig
from reclm_jax.teacher.connect import connect_teacher

__all__ = ["SFTData", "build_context", "make_teacher", "stack_micro_batches", "take_step_batches"]


def build_context(cfg: SFTConfig, tokenizer: Any) -> tuple[TaskContext, ItemIndex]:
    """The task context of ``cfg.data`` on ``cfg.data_path`` and its item index."""
    d = cfg.data
    if "ShareChatGPT" in d.train_tasks and not d.share_chat_gpt_path:
        raise UserError("data.train_tasks has ShareChatGPT but data.share_chat_gpt_path is empty")
    settings = TaskSettings(topk=d.topk, candidate_num=d.candidate_num, val_num_per_task=d.val_num_per_task,
                            share_chat_gpt_ratio=d.share_chat_gpt_ratio, max_prompt_length=d.max_prompt_length,
                            keep_held_out=d.keep_held_out)
    return build_task_context(cfg.data_path, d.item_index, tokenizer, d.chat_template, settings,
                              d.share_chat_gpt_path)


def make_teacher(cfg: SFTConfig, ctx: TaskContext) -> TeacherLike | None:
    """The in-process teacher (``teacher.checkpoint``), the HTTP client (``teacher.port`` at ``teacher.hosts``)
    or None (static data needs none); the in-process one reuses ``ctx``'s loaded dataset."""
    t = cfg.teacher
    return connect_teacher(t.checkpoint, t.port, t.hosts, data_path=cfg.data_path, dataset=ctx.raw,
                           keys=("teacher.checkpoint", "teacher.port", "teacher.hosts"))


class SFTData:
    """Train batches and validation samples for one run."""

    def __init__(self, cfg: SFTConfig, tokenizer: Any, local_batch_size: int | None = None):
        """``local_batch_size``: rows of this process's micro-batches (default ``train.batch_size``, which is
        global: with N processes each loads ``batch_size // N``)."""
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.local_batch_size = local_batch_size or cfg.train.batch_size
        d = cfg.data
        self.pipeline = PipelineConfig(batch_size=self.local_batch_size, max_prompt_length=d.max_prompt_length,
                                       max_output_length=d.max_output_length, prompt_buckets=d.prompt_buckets,
                                       output_buckets=d.output_buckets)
        self.ctx, self.index = build_context(cfg, tokenizer)
        self.static = load_static(d.train_data_file) if d.train_data_file else None
        needs_teacher = self.static is None or not d.val_data_file
        self.teacher = make_teacher(cfg, self.ctx) if needs_teacher else None
        if needs_teacher and self.teacher is None:
            raise UserError("dynamic SFT data needs a teacher: set teacher.checkpoint (a teacher run folder) or "
                            "teacher.port, or give data.train_data_file and data.val_data_file")
        self.builder = None if self.static is not None else SampleBuilder(
            self.ctx, list(d.train_tasks), "train", self.teacher, cfg.train.seed)

    def samples_per_epoch(self) -> int:
        """Samples this process sees per epoch."""
        import jax

        n = len(self.static[0]) if self.static is not None else len(self.builder)
        return n // jax.process_count()

    def steps_per_epoch(self) -> int:
        return self.samples_per_epoch() // (self.local_batch_size * self.cfg.train.grad_accum)

    def epoch_batches(self, epoch: int):
        """A checkpointable iterator over this process's micro-batches of ``epoch``."""
        seed = self.cfg.train.seed
        if self.static is not None:
            return static_epoch_iterator(self.static, self.tokenizer, self.pipeline, epoch, seed)
        return epoch_iterator(self.builder, self.tokenizer, self.pipeline, epoch, seed, chunk=self.cfg.data.chunk)

    def val_samples(self) -> list[dict]:
        d = self.cfg.data
        if not d.val_tasks and not d.val_data_file:
            return []  # validation switched off
        if d.val_data_file:
            return load_static(d.val_data_file)[0]
        return SampleBuilder(self.ctx, list(d.val_tasks), "val", self.teacher, self.cfg.train.seed).epoch(0)

    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer)


def stack_micro_batches(batches: list[dict], pad_id: int, width: int = 0) -> dict[str, np.ndarray]:
    """[A] micro-batch dicts -> int32 arrays [A, B, T], right-padded to the longest or to ``width`` if larger
    (processes agree on one width, so their rows form one global array)."""
    width = max(width, *(b["input_ids"].shape[1] for b in batches))

    def pad(x: np.ndarray, value) -> np.ndarray:
        return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)

    return {
        "tokens": np.stack([pad(b["input_ids"], pad_id) for b in batches]).astype(np.int32),
        "attention_mask": np.stack([pad(b["attention_mask"], 0) for b in batches]).astype(np.int32),
        "loss_mask": np.stack([pad(b["loss_mask"], 0) for b in batches]).astype(np.int32),
    }


def take_step_batches(it: Iterator[dict], accum: int) -> list[dict] | None:
    """The next ``accum`` micro-batches, or None when the epoch has fewer left (the remainder is dropped)."""
    out = []
    for _ in range(accum):
        try:
            out.append(next(it))
        except StopIteration:
            return None
    return out
