"""``python -m reclm_jax.data.process``: materialise SFT or RL datasets to pickles (the original's
``data_process.py``), with the original's flags plus ``--chat_template``, ``--tokenizer`` and
``--teacher_checkpoint``.

    python -m reclm_jax.data.process --data_path data/ml-1m --train_stage SFT --epoch 10 --idx \\
        --llama2_chat_template --tokenizer models/llama2 --teacher_checkpoint runs/teacher_ml1m

Writes ``SFT_dataset_train.pickle`` (``--epoch`` epochs) and ``SFT_dataset_val.pickle`` (one), or
``RL_dataset_train.pickle`` (``--num_episodes`` episodes) and ``RL_dataset_val.pickle``, each a
``List[List[Dict]]`` of ``{input_text, output_text, task, input_field_data}``, into ``--output_dir`` (default:
the data folder). Labels come from the in-process teacher (``--teacher_checkpoint``) or the HTTP service
(``--teacher_port``/``--backup_ip``), in batches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from reclm_jax.atomic import write_pickle_atomic
from reclm_jax.cli import run_main
from reclm_jax.data.chat import CHAT_FORMATS
from reclm_jax.data.samples import SampleBuilder
from reclm_jax.data.task_setup import build_task_context
from reclm_jax.data.tasks import TaskContext, TaskSettings
from reclm_jax.data.teacher_protocol import TeacherLike
from reclm_jax.errors import UserError
from reclm_jax.models.tokenizer import load_tokenizer
from reclm_jax.teacher.connect import DEFAULT_PORT, connect_teacher

SFT_TRAIN_DEFAULT = "SFTSeqRec,SFTPersonalControlRec,SFTControlRec_re,SFTPersonalCategoryRate"
SFT_VAL_DEFAULT = ("SFTTestSeqRec,SFT+TestPersonalControlRec,SFT-TestPersonalControlRec,"
                   "SFTTestPersonalCategoryRateEP_50")
RL_TRAIN_DEFAULT = ("RLSeqRec,RL+PersonalControlRec,RL-PersonalControlRec,RLPersonalCategoryRateLP,"
                    "RLPersonalCategoryRateMP,RLPersonalCategoryRateEP")
RL_VAL_DEFAULT = ("RLSeqRec,RL+PersonalControlRec,RL-PersonalControlRec,RLPersonalCategoryRateLP_20,"
                  "RLPersonalCategoryRateMP_30,RLPersonalCategoryRateEP_50,RLItemCount")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.data.process", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_path", required=True, help="raw dataset folder (the four pickles)")
    p.add_argument("--output_dir", default=None, help="where the pickles go (default: --data_path)")
    p.add_argument("--item_index", default="title", help="id | title | title64 | title_t | title64_t | a meta field")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--candidate_num", type=int, default=10)
    p.add_argument("--max_item_length", type=int, default=10)
    p.add_argument("--max_token_length", type=int, default=512)
    p.add_argument("--epoch", type=int, default=10, help="SFT: epochs to materialise")
    p.add_argument("--num_episodes", type=int, default=2, help="RL: episodes to materialise")
    p.add_argument("--train_stage", choices=("SFT", "RL"), default="SFT")
    p.add_argument("--SFT_train_tasks", default=SFT_TRAIN_DEFAULT)
    p.add_argument("--SFT_val_tasks", default=SFT_VAL_DEFAULT)
    p.add_argument("--RL_train_tasks", default=RL_TRAIN_DEFAULT)
    p.add_argument("--RL_val_tasks", default=RL_VAL_DEFAULT)
    p.add_argument("--val_num_per_task", type=int, default=320)
    p.add_argument("--share_chat_gpt_ratio", type=float, default=0.0)
    p.add_argument("--share_chat_gpt_path", default=None, help="ShareGPT JSON or the original pickle")
    p.add_argument("--llama2_chat_template", action="store_true", help="same as --chat_template llama-2")
    p.add_argument("--chat_template", choices=CHAT_FORMATS, default=None,
                   help="llama-2 | hf (the tokenizer's own) | none; default llama-2 with --llama2_chat_template")
    p.add_argument("--idx", action="store_true", help="number the output lines (every published script sets it)")
    p.add_argument("--tokenizer", default=None, help="HF tokenizer folder: EOS, hf chat template, *_t item indexes")
    p.add_argument("--teacher_checkpoint", default=None, help="teacher run folder: label in-process")
    p.add_argument("--teacher_port", type=int, default=None,
                   help=f"teacher service port (default {DEFAULT_PORT} without --teacher_checkpoint)")
    p.add_argument("--backup_ip", default="127.0.0.1", help="teacher service host(s), comma-separated")
    p.add_argument("--keep_held_out", action="store_true",
                   help="allow users' val/test targets in train labels (the original's behaviour)")
    p.add_argument("--chunk", type=int, default=1024, help="samples per teacher call")
    return p


def _tasks(text: str, flag: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise UserError(f"{flag} is empty")
    return tasks


def build_context(args: argparse.Namespace, tokenizer: Any) -> TaskContext:
    """The task context of the parsed flags (dataset warnings printed to stderr)."""
    chat_name = args.chat_template or ("llama-2" if args.llama2_chat_template else "none")
    settings = TaskSettings(topk=args.topk, candidate_num=args.candidate_num, max_item_length=args.max_item_length,
                            idx=args.idx, val_num_per_task=args.val_num_per_task,
                            share_chat_gpt_ratio=args.share_chat_gpt_ratio, max_prompt_length=args.max_token_length,
                            keep_held_out=args.keep_held_out)
    ctx, _ = build_task_context(args.data_path, args.item_index, tokenizer, chat_name, settings,
                                args.share_chat_gpt_path)
    for w in ctx.raw.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return ctx


def make_teacher(args: argparse.Namespace, ctx: TaskContext) -> TeacherLike | None:
    """The in-process teacher (``--teacher_checkpoint``) or the service's client (``--teacher_port``, default
    12621, at ``--backup_ip``)."""
    port = args.teacher_port if args.teacher_port is not None else 0 if args.teacher_checkpoint else DEFAULT_PORT
    return connect_teacher(args.teacher_checkpoint or "", port, args.backup_ip, data_path=args.data_path,
                           dataset=ctx.raw, keys=("--teacher_checkpoint", "--teacher_port", "--backup_ip"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.topk < 1 or args.candidate_num < args.topk:
        raise UserError("--topk must be >= 1 and --candidate_num >= --topk")
    tokenizer = load_tokenizer(args.tokenizer, key="--tokenizer") if args.tokenizer else None
    ctx = build_context(args, tokenizer)
    out = Path(args.output_dir or args.data_path)
    out.mkdir(parents=True, exist_ok=True)
    stage = args.train_stage
    if stage == "SFT":
        train_tasks = _tasks(args.SFT_train_tasks, "--SFT_train_tasks")
        if args.share_chat_gpt_ratio > 0 and "ShareChatGPT" not in train_tasks:
            train_tasks.append("ShareChatGPT")  # as the original's data_process.py
        val_tasks, n_train = _tasks(args.SFT_val_tasks, "--SFT_val_tasks"), args.epoch
    else:
        train_tasks = _tasks(args.RL_train_tasks, "--RL_train_tasks")
        val_tasks, n_train = _tasks(args.RL_val_tasks, "--RL_val_tasks"), args.num_episodes
    teacher = make_teacher(args, ctx)
    train = SampleBuilder(ctx, train_tasks, "train", teacher, args.seed)
    val = SampleBuilder(ctx, val_tasks, "val", teacher, args.seed)
    if n_train > 0:
        epochs = [list(train.iter_epoch(e, args.chunk, progress=True, desc=f"{stage} train {e + 1}/{n_train}"))
                  for e in range(n_train)]
        write_pickle_atomic(out / f"{stage}_dataset_train.pickle", epochs)
        print(f"wrote {out / f'{stage}_dataset_train.pickle'}: {n_train} x {len(train)} samples")
    val_epoch = list(val.iter_epoch(0, args.chunk, progress=True, desc=f"{stage} val"))
    write_pickle_atomic(out / f"{stage}_dataset_val.pickle", [val_epoch])
    print(f"wrote {out / f'{stage}_dataset_val.pickle'}: {len(val_epoch)} samples")
    return 0


if __name__ == "__main__":
    run_main(main)
