"""Recommendation tasks by their original names: which data they enumerate and how each sample is built.

``datum_list`` reproduces the original's ``compute_datum_info`` (task order, user order, validation slices,
ShareChatGPT appended last as a ratio of everything before it); ``builder_for`` gives the builder generator.
"""

from __future__ import annotations

from typing import Callable, Sequence

from reclm_jax.data.splits import MIN_TRAIN_SEQUENCE_LENGTH, rl_val_slice, validation_users
from reclm_jax.data.tasks.context import Datum, TaskContext, TaskSettings, TopK
from reclm_jax.data.tasks.rl_tasks import rl_builder
from reclm_jax.data.tasks.sft_tasks import SFT_TRAIN_BUILDERS
from reclm_jax.data.tasks.share_chat_gpt import share_chat_gpt
from reclm_jax.data.tasks.test_tasks import sft_eval_builder
from reclm_jax.errors import UserError

__all__ = ["Datum", "TaskContext", "TaskSettings", "TopK", "builder_for", "datum_list", "SFT_TRAIN_TASKS",
           "SFT_EVAL_TASKS", "RL_TASKS"]

SFT_TRAIN_TASKS = tuple(SFT_TRAIN_BUILDERS) + ("ShareChatGPT",)
SFT_EVAL_TASKS = ("SFTTestSeqRec", "SFTTestItemCount", "SFTTestSeqRanking", "SFT+TestPersonalControlRec",
                  "SFT-TestPersonalControlRec", "SFTTestPersonalCategoryRate{LP,LP1,MP,EP}_<p>")
RL_TASKS = ("RLSeqRec", "RL+PersonalControlRec", "RL-PersonalControlRec",
            "RLPersonalCategoryRate[LP|MP|EP][_<p>]", "RLSeqRanking", "RLItemCount (val/test)")
_USER_TASKS = ("SFTSeqRec", "SFTPersonalControlRec", "SFTPersonalCategoryRate", "SFTSeqRecPALR")
_ITEM_TASKS = ("SFTControlRec", "SFTControlRec_re")
_CATEGORY_RATE_TEMPLATES = ("CategoryRate-LP", "CategoryRate-MP", "CategoryRate-LC", "CategoryRate-MC")


def builder_for(task: str, mode: str) -> Callable:
    """The builder generator of ``task`` in ``mode`` (train | val | test); UserError for unknown names."""
    if mode == "train" and task in SFT_TRAIN_BUILDERS:
        return SFT_TRAIN_BUILDERS[task]
    if mode == "train" and task == "ShareChatGPT":
        return share_chat_gpt
    if task.startswith("RL"):
        if task == "RLItemCount" and mode == "train":
            raise UserError("task RLItemCount is a val/test task (the original has no train version)")
        b = rl_builder(task)
        if b is not None:
            return b
    elif mode != "train":
        b = sft_eval_builder(task)
        if b is not None:
            return b
    known = SFT_TRAIN_TASKS if mode == "train" else SFT_EVAL_TASKS
    raise UserError(f"unknown {mode} task {task!r}; SFT {mode} tasks: {', '.join(known)}; "
                    f"RL tasks: {', '.join(RL_TASKS)}")


def _train_users(ctx: TaskContext) -> list[str]:
    return [u for u, s in ctx.sequential.items() if len(s) >= MIN_TRAIN_SEQUENCE_LENGTH]


def datum_list(ctx: TaskContext, tasks: Sequence[str], mode: str) -> list[Datum]:
    """Every sample of one epoch, in the original's order; ``Datum.index`` is the position in this list."""
    if mode not in ("train", "val", "test"):
        raise ValueError(f"mode must be train, val or test, got {mode!r}")
    keys: list[tuple[str, object]] = []
    users = ctx.users
    sft_val_position = 0
    for task in tasks:
        builder_for(task, mode)  # validates the name early
        if task == "ShareChatGPT":
            if ctx.share_chat is None:
                raise UserError("task ShareChatGPT needs a ShareGPT file: give --share_chat_gpt_path "
                                "(ShareGPT JSON or the original pickle)")
            keys += [(task, None)] * int(ctx.s.share_chat_gpt_ratio * len(keys))
        elif mode == "train" and task in _USER_TASKS or task.startswith("RL") and mode == "train":
            keys += [(task, u) for u in _train_users(ctx)]
        elif mode == "train" and task in _ITEM_TASKS:
            keys += [(task, i) for i in ctx.items_with_category]
        elif mode == "train" and task == "SFTCategoryRate":
            keys += [(task, (c, t)) for t in _CATEGORY_RATE_TEMPLATES for c in ctx.categories]
        elif mode == "test":
            keys += [(task, u) for u in users]
        elif task.startswith("RL"):
            keys += [(task, u) for u in validation_users(users, rl_val_slice(task), ctx.s.val_num_per_task)]
        else:
            keys += [(task, u) for u in validation_users(users, sft_val_position, ctx.s.val_num_per_task)]
            sft_val_position += 1
    return [Datum(task, key, mode, i) for i, (task, key) in enumerate(keys)]
