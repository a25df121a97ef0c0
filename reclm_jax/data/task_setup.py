"""One way every stage (``data.process``, SFT, RL) builds its task context from a raw dataset folder.

    settings = TaskSettings(topk=10, max_prompt_length=512)
    ctx, index = build_task_context("data/ml-1m", "title64_t", tokenizer, "hf", settings)
    teacher = connect_teacher(checkpoint="runs/teacher_ml1m", dataset=ctx.raw)   # the pickles are read once
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from reclm_jax.data.chat import ChatFormat
from reclm_jax.data.item_index import ItemIndex, load_dataset
from reclm_jax.data.tasks import TaskContext, TaskSettings
from reclm_jax.data.tasks.share_chat_gpt import load_share_chat

# Llama-2's EOS, the original's default: labels end with it when no tokenizer is given (or it has no EOS).
DEFAULT_EOS = "</s>"


def build_task_context(data_path: str | Path, item_index: str, tokenizer: Any, chat_template: str,
                       settings: TaskSettings, share_chat_gpt_path: str | Path | None = "",
                       seqrec_results: Mapping[str, Sequence[str]] | None = None) -> tuple[TaskContext, ItemIndex]:
    """Loads the dataset (pickles read once) with its item index and returns ``(context, item index)``.

    ``tokenizer`` (an HF tokenizer or None) gives the EOS of labels, the ``hf`` chat template and computed
    item indexes (``title64_t``); ``chat_template`` is ``llama-2`` | ``hf`` | ``none``; a non-empty
    ``share_chat_gpt_path`` loads ShareGPT conversations for the ShareChatGPT task; ``seqrec_results`` are a
    model's own SeqRec lists per user (test mode). ``ctx.raw.warnings`` lists the dataset's warnings.
    """
    raw, index = load_dataset(data_path, item_index, tokenizer)
    share = load_share_chat(share_chat_gpt_path, tokenizer) if share_chat_gpt_path else None
    eos = getattr(tokenizer, "eos_token", None) or DEFAULT_EOS
    ctx = TaskContext(raw, index, settings, ChatFormat(chat_template, tokenizer), eos, share_chat=share,
                      seqrec_results=seqrec_results)
    return ctx, index
