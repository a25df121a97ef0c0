"""The one rule for a model's stop ids and pad id, shared by the CLI, validation, RL rollouts and the server.

Stop ids are the union of every place a model folder declares an end:

- ``eos_token_id`` of ``generation_config.json`` and ``config.json`` (an int or a list);
- the tokenizer's EOS;
- the special token the chat template writes right after an assistant turn (found by rendering a one-turn
  conversation), since chat models end their turn with it and may never emit EOS (Llama-3 ``<|eot_id|>``,
  ChatML ``<|im_end|>``, Gemma ``<end_of_turn>``);
- the well-known end-of-turn / end-of-text tokens below when they are in the vocabulary and not the unknown
  token (templates that cannot be rendered still get theirs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<|endoftext|>", "<end_of_turn>",
              "<|end|>")
_MARKER = "Zq7MarkerReply"


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _model_dir(tokenizer: Any, model_dir) -> Path | None:
    """``model_dir`` or, when not given, the folder the tokenizer was loaded from (if it is one)."""
    d = model_dir if model_dir is not None else getattr(tokenizer, "name_or_path", None)
    return Path(d) if d and Path(d).is_dir() else None


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` when it is a vocabulary entry other than the unknown token (some tokenizers use an
    end-of-text token as their unknown token, e.g. SmolLM2's ``<|endoftext|>``: it is never generated)."""
    vocab = tokenizer.get_vocab()
    i = vocab.get(token)
    if i is None or i == tokenizer.unk_token_id:
        return None
    return int(i)


def template_end_of_turn(tokenizer: Any) -> int | None:
    """The special token the chat template emits right after an assistant message's content, or None.

    Renders ``user: hi / assistant: MARKER`` as text and takes the first special (added) token that starts
    the text after the marker, whitespace skipped: ``</s>`` for Llama-2's [INST] template, ``<|eot_id|>`` for
    Llama-3's, ``<|im_end|>`` for ChatML. Templates that refuse this conversation give None.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKER}], tokenize=False)
    except Exception:  # jinja raise_exception, missing variables: any template error means "unknown"
        return None
    if not isinstance(text, str) or _MARKER not in text:
        return None
    rest = text.split(_MARKER, 1)[1].lstrip()
    specials = sorted(set(tokenizer.all_special_tokens) | {str(t) for t in tokenizer.added_tokens_decoder.values()
                                                           if getattr(t, "special", False)}, key=len, reverse=True)
    for tok in specials:
        if tok and rest.startswith(tok):
            return _token_id(tokenizer, tok)
    return None


def resolve_stop_ids(tokenizer: Any, model_dir: str | Path | None = None) -> list[int]:
    """Sorted unique stop ids for generation (see the module docstring).

    ``model_dir``: the model folder with ``config.json`` / ``generation_config.json``; default the folder
    the tokenizer was loaded from (``tokenizer.name_or_path``), so callers that only hold the tokenizer
    agree with those that hold the folder.
    """
    ids: list[int] = []
    d = _model_dir(tokenizer, model_dir)
    if d is not None:
        for name in ("generation_config.json", "config.json"):
            f = d / name
            if f.is_file():
                ids += _ids(json.loads(f.read_text()).get("eos_token_id"))
    ids += _ids(tokenizer.eos_token_id)
    turn = template_end_of_turn(tokenizer)
    if turn is not None:
        ids.append(turn)
    for tok in END_TOKENS:
        i = _token_id(tokenizer, tok)
        if i is not None:
            ids.append(i)
    return sorted(set(ids))


def resolve_pad_id(tokenizer: Any) -> int:
    """The pad id: the tokenizer's pad, else its EOS, else 0. From the tokenizer only (a model config's
    ``pad_token_id`` is ignored), so training batches, validation and the generate CLI, which all hold the
    tokenizer, pad with the same id; use it through ``models.tokenizer.pad_token_id``."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0
