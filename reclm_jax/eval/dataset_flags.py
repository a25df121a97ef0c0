"""The flags that fix the test samples (dataset, tasks, item index, chat format, users, teacher), shared by
``python -m reclm_jax.eval`` and ``python -m reclm_jax.eval.baselines``, and the task context they give."""

from __future__ import annotations

import argparse
import sys

from reclm_jax.data.chat import CHAT_FORMATS
from reclm_jax.data.task_setup import build_task_context
from reclm_jax.data.tasks import TaskContext, TaskSettings
from reclm_jax.errors import UserError


def add_dataset_flags(p: argparse.ArgumentParser) -> None:
    """The flags that fix the samples (shared with ``eval.baselines``)."""
    p.add_argument("--data_path", required=True, help="raw dataset folder (the four pickles)")
    p.add_argument("--tasks", "--SFT_test_task", dest="tasks", default=None,
                   help="comma-separated test tasks (default: the original's seven, SFTTestSeqRec first)")
    p.add_argument("--item_index", default="title64_t", help="id | title | title64 | title64_t | a meta field")
    p.add_argument("--tokenizer", default=None,
                   help="the model's HF tokenizer folder (hf chat template, computed item indexes such as title64_t)")
    p.add_argument("--chat_template", choices=CHAT_FORMATS, default=None,
                   help="the chat format the model was trained with (default: hf with --tokenizer, else llama-2)")
    p.add_argument("--llama2_chat_template", action="store_true", help="same as --chat_template llama-2")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--max_item_length", type=int, default=10, help="history items in a prompt")
    p.add_argument("--no_idx", action="store_true", help="answers are not numbered (the original without --idx)")
    p.add_argument("--idx", action="store_true", help="numbered answers (the default; the original's flag)")
    p.add_argument("--max_users", type=int, default=None, help="test only the first N users")
    p.add_argument("--teacher_checkpoint", default=None,
                   help="teacher run folder: SeqRec lists for tasks 2-6 when the model's own are not available")
    p.add_argument("--teacher_port", type=int, default=0, help="teacher service port, instead of a checkpoint")
    p.add_argument("--backup_ip", default="127.0.0.1", help="teacher service host(s), comma-separated")


def build_context(a: argparse.Namespace) -> TaskContext:
    tokenizer = None
    if a.tokenizer:
        from reclm_jax.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(a.tokenizer, key="--tokenizer")
    chat = a.chat_template or ("llama-2" if a.llama2_chat_template or tokenizer is None else "hf")
    if a.topk < 1 or a.max_item_length < 1:
        raise UserError("--topk and --max_item_length must be >= 1")
    if a.max_users is not None and a.max_users < 1:
        raise UserError("--max_users must be >= 1")
    settings = TaskSettings(topk=a.topk, max_item_length=a.max_item_length, idx=not a.no_idx)
    ctx, _ = build_task_context(a.data_path, a.item_index, tokenizer, chat, settings)
    for w in ctx.raw.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return ctx


def make_teacher(a: argparse.Namespace, ctx: TaskContext):
    from reclm_jax.teacher.connect import connect_teacher

    return connect_teacher(a.teacher_checkpoint or "", a.teacher_port, a.backup_ip, data_path=a.data_path,
                           dataset=ctx.raw, keys=("--teacher_checkpoint", "--teacher_port", "--backup_ip"))
