"""ShareChatGPT: general-chat samples mixed into SFT as a regulariser (section 5.6).

Input file (``--share_chat_gpt_path``): either ShareGPT JSON (a list of ``{"conversations": [{"from": "human" |
"gpt", "value": str}, ...]}`` or a list of such turn lists) or the original pickle (a list of conversations,
each a list of ``{"from", "value", "pre_length"}`` turns). ``pre_length`` is read as the cumulative token count
up to and including the turn; when absent it is computed with the tokenizer (characters / 4 without one).

Sampling, as the original: a random conversation, a random human turn that a gpt answer follows (the answer is
the label, plus EOS), then a start turn chosen uniformly among the admissible ones found by walking back two
turns at a time (the first step is effectively four) while the start turn's own length stays under
``max_token_length - 64`` (``TaskSettings.max_prompt_length``).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from reclm_jax.data.sampling import choice
from reclm_jax.data.tasks.context import Builder, Datum, TaskContext
from reclm_jax.data.templates import SYSTEM_CHAT
from reclm_jax.errors import UserError

_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "chatgpt": "gpt", "bard": "gpt"}


class ShareChatData:
    """Validated conversations: lists of turns ``{"from": "human"|"gpt", "value": str, "pre_length": int}``
    that alternate and start with a human turn. ``answerable[c]`` lists the human turns followed by an answer."""

    def __init__(self, conversations: list[list[dict]], path: str = "<memory>", skipped: int = 0):
        self.conversations = conversations
        self.path = path
        self.skipped = skipped
        self.answerable = [[i for i in range(0, len(c) - 1, 2)] for c in conversations]
        keep = [j for j, a in enumerate(self.answerable) if a]
        self.skipped += len(conversations) - len(keep)
        self.conversations = [conversations[j] for j in keep]
        self.answerable = [self.answerable[j] for j in keep]
        if not self.conversations:
            raise UserError(f"{path}: no usable conversation (need a human turn followed by a gpt answer)")

    def __len__(self) -> int:
        return len(self.conversations)


def _normalise(turns: Any, length: Callable[[str], int]) -> list[dict] | None:
    if not isinstance(turns, list):
        return None
    out = []
    for t in turns:
        if not isinstance(t, dict) or not isinstance(t.get("value"), str):
            return None
        role = _ROLES.get(str(t.get("from", "")).lower())
        if role is None:
            if not out and str(t.get("from", "")).lower() == "system":
                continue  # a leading system turn: the ShareChatGPT system prompt replaces it
            return None
        if not out and role != "human":  # leading system/gpt turns cannot start a prompt
            continue
        out.append({"from": role, "value": t["value"], "pre_length": t.get("pre_length")})
    if any(t["from"] != ("human" if i % 2 == 0 else "gpt") for i, t in enumerate(out)):
        return None
    total = 0
    for t in out:
        if not isinstance(t["pre_length"], int):
            total += length(t["value"])
            t["pre_length"] = total
        else:
            total = t["pre_length"]
    return out


def load_share_chat(path: str | Path, tokenizer: Any = None) -> ShareChatData:
    """Reads a ShareGPT JSON or the original pickle; conversations that do not alternate are skipped."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"ShareChatGPT file not found: {p}")
    try:
        if p.suffix in (".pickle", ".pkl"):
            with open(p, "rb") as f:
                obj = pickle.load(f)
        else:
            obj = json.loads(p.read_text())
    except Exception as e:
        raise UserError(f"{p}: cannot be read as ShareGPT JSON or pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, list):
        raise UserError(f"{p}: expected a list of conversations, got {type(obj).__name__}")
    if tokenizer is not None:
        def length(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False))
    else:
        def length(text: str) -> int:
            return (len(text) + 3) // 4
    convs, skipped = [], 0
    for c in obj:
        turns = c.get("conversations") if isinstance(c, dict) else c
        norm = _normalise(turns, length)
        if norm is None:
            skipped += 1
        else:
            convs.append(norm)
    return ShareChatData(convs, str(p), skipped)


def admissible_starts(conv: Sequence[dict], end: int, max_token_length: int) -> list[int]:
    """Start turns the original may pick for a prompt ending at human turn ``end`` (see the module doc)."""
    starts = [end]
    start = end - 2
    while start > 0:
        start -= 2
        previous = conv[start - 1]["pre_length"] if start > 0 else 0
        if conv[start]["pre_length"] - previous < max_token_length - 64:
            starts.append(start)
        else:
            break
    return starts


def share_chat_gpt(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    data: ShareChatData | None = ctx.share_chat
    if data is None:
        raise UserError("task ShareChatGPT needs a ShareGPT file: give --share_chat_gpt_path (JSON or pickle)")
    j = int(rng.integers(len(data)))
    conv = data.conversations[j]
    end = choice(rng, data.answerable[j])
    start = choice(rng, admissible_starts(conv, end, ctx.s.max_prompt_length))
    turns = [t["value"] for t in conv[start:end + 1]]
    prompt = ctx.chat.chat_prompt(SYSTEM_CHAT, turns)
    return {"input_text": prompt, "output_text": conv[end + 1]["value"] + ctx.eos, "task": datum.task,
            "input_field_data": {}}
    yield
