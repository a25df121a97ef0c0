"""Generated token ids -> the text piece each token adds, so streamed chunks and the whole text agree.

Decoding token by token is wrong for byte-level BPE (a character split over tokens) and SentencePiece (a
window's first token loses its leading space), so pieces come from vLLM's incremental scheme: the text of a
short window of tokens before the new one, and a piece is held back while it ends in an incomplete character
(U+FFFD). The pieces are then reconciled with one decode of the whole sequence: ``"".join(pieces)`` is always
exactly ``tokenizer.decode(ids)``, which is the non-streamed text.
"""

from __future__ import annotations

from typing import Any, Sequence

REPLACEMENT = "\ufffd"


def incremental_pieces(tokenizer: Any, ids: Sequence[int], skip_special_tokens: bool = True) -> list[str]:
    """vLLM's incremental pieces, one per id: a token's piece is empty while the text so far ends in an
    incomplete character. Their concatenation is vLLM's text, which drops a tail still held back when the ids
    end (``token_pieces`` puts it on the last token instead)."""
    ids = list(ids)
    pieces, prefix, read = [], 0, 0
    for i in range(len(ids)):
        before = _decode(tokenizer, ids[prefix:read], skip_special_tokens)
        now = _decode(tokenizer, ids[prefix:i + 1], skip_special_tokens)
        if len(now) > len(before) and not now.endswith(REPLACEMENT) and now.startswith(before):
            pieces.append(now[len(before):])
            prefix, read = read, i + 1
        else:
            pieces.append("")
    return pieces


def _decode(tokenizer: Any, part: Sequence[int], skip_special_tokens: bool) -> str:
    return tokenizer.decode(list(part), skip_special_tokens=skip_special_tokens) if part else ""


def token_pieces(tokenizer: Any, ids: Sequence[int], skip_special_tokens: bool = True) -> list[str]:
    """One string per id (possibly empty: a special token, or a piece held for the next token) whose
    concatenation is ``tokenizer.decode(ids, skip_special_tokens=...)``."""
    ids = list(ids)
    pieces = incremental_pieces(tokenizer, ids, skip_special_tokens)
    full = _decode(tokenizer, ids, skip_special_tokens)
    # Keep the pieces while they spell a prefix of the whole text; whatever remains goes on the last token.
    done, keep = 0, 0
    for p in pieces:
        if not full.startswith(p, done):
            break
        done += len(p)
        keep += 1
    if keep < len(pieces) or done < len(full):
        pieces = pieces[:keep] + [""] * (len(pieces) - keep)
        if pieces:
            pieces[-1] += full[done:]
    return pieces


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token's own text, for logprobs entries (special tokens included, as OpenAI lists them)."""
    return tokenizer.decode([int(token_id)], skip_special_tokens=False)
