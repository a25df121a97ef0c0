"""NR-20.1's rewards placed on response tokens, for any tokenizer (SentencePiece, byte-level BPE, ...).

Each listed title's item reward goes on the token that ends its line: the token holding the newline after the
title, or, for a last line with no newline after it, the token holding the line's last character
(``eval.parsing.parse_list_lines``). The list reward (x10 included) goes on the last token, normally the EOS.
Rewards that fall on one token add up.

The original added the item rewards wherever the sequence held token id 13 (Llama-2's ``<0x0A>``), after four
zeros for the prompt's four newlines: right only for Llama-2's tokenizer, its exact prompt, and titles without
newlines. Here positions come from character offsets, so the prompt never matters and a newline merged into a
larger token (SmolLM2's ``"\\n "`` is one token) still carries its line's reward.

Offsets: ``tokenize_response`` uses the tokenizer's ``return_offsets_mapping`` where it has one (fast
tokenizers) and otherwise decodes prefixes; ``decode_response`` (tokens the policy sampled) always decodes
prefixes: token j ends where the decoded text of tokens 0..j stops agreeing with the whole text, so a token
holding half a UTF-8 character ends before that character.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from reclm_jax.eval.parsing import parse_list_lines


@dataclasses.dataclass(frozen=True)
class TokenizedResponse:
    """A response's token ids, the text they stand for and, per token, where in that text it ends.

    ``char_ends``: int64 [T], non-decreasing; token j covers ``text[char_ends[j-1]:char_ends[j]]`` (tokens with
    no text of their own, such as EOS, end where the previous one did)."""

    ids: list[int]
    text: str
    char_ends: np.ndarray


def char_ends_from_offsets(offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """int64 [T] ends from a tokenizer's ``offset_mapping`` ((start, end) per token; (0, 0) for specials).

    Made to agree with ``decode_response``: a token whose last character the next token shares (the bytes of one
    character split over several tokens, or the lone SentencePiece "▁" that opens a text) ends where that next
    token starts, since it does not complete the character; a token without text ends where the previous one did."""
    spans = [(int(s), int(e)) for s, e in offsets]
    ends = np.zeros(len(spans), np.int64)
    next_start = None  # start of the next token that has text
    for j in range(len(spans) - 1, -1, -1):
        s, e = spans[j]
        if e <= s:
            continue
        ends[j] = next_start if next_start is not None and s <= next_start < e else e
        next_start = s
    return np.maximum.accumulate(ends) if len(ends) else ends


def decode_response(tokenizer: Any, ids: Sequence[int]) -> TokenizedResponse:
    """The text of ``ids`` (special tokens skipped, as rollouts decode) and each token's end, by decoding prefixes."""
    ids = [int(i) for i in ids]
    kw = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
    text = tokenizer.decode(ids, **kw)
    prefixes = tokenizer.batch_decode([ids[:j + 1] for j in range(len(ids))], **kw) if ids else []
    ends = np.zeros(len(ids), np.int64)
    for j, p in enumerate(prefixes):
        # A prefix can end in half a character (byte-level BPE decodes it as U+FFFD): it ends where it agrees.
        ends[j] = len(p) if text.startswith(p) else len(os.path.commonprefix([p, text]))
    if len(ends):
        ends = np.maximum.accumulate(ends)
    return TokenizedResponse(ids, text, ends)


def tokenize_response(tokenizer: Any, text: str) -> TokenizedResponse:
    """Tokenizes a response text (no special tokens added) with each token's end in ``text``: from the
    tokenizer's offsets when it has them, else by decoding prefixes (then ``text`` is the decoded one)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return TokenizedResponse(list(enc["input_ids"]), text, char_ends_from_offsets(enc["offset_mapping"]))
    return decode_response(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])


def place_rewards(char_ends: np.ndarray, line_ends: Sequence[int], item_rewards: Sequence[float],
                  list_reward: float, length: int | None = None) -> np.ndarray:
    """float32 [length] rewards of one response.

    ``char_ends``: int64 [T] (``TokenizedResponse.char_ends``); ``line_ends[i]``: the character ending line i,
    which receives ``item_rewards[i]`` on the first token ending after it; ``list_reward`` goes on the last
    position. ``length`` (default T) may exceed T for tokens after the text, e.g. an EOS appended to it.
    """
    char_ends = np.asarray(char_ends, np.int64)
    n = len(char_ends) if length is None else int(length)
    if n < len(char_ends) or n == 0:
        raise ValueError(f"length {n} must be >= 1 and cover the {len(char_ends)} tokens")
    if len(line_ends) != len(item_rewards):
        raise ValueError(f"{len(item_rewards)} item rewards for {len(line_ends)} lines")
    out = np.zeros(n, np.float32)
    for c, r in zip(line_ends, item_rewards):
        j = int(np.searchsorted(char_ends, c, side="right"))  # first token with end > c: the one holding c
        if j >= len(char_ends):
            raise ValueError(f"character {c} lies beyond the tokens' text (which ends at {char_ends[-1:]})")
        out[j] += r
    out[n - 1] += list_reward
    return out


def token_rewards(response: TokenizedResponse, item_rewards: Sequence[float], list_reward: float,
                  idx: bool = True, length: int | None = None) -> np.ndarray:
    """float32 [length (default T)]: ``item_rewards`` (one per title ``parse_list`` finds in ``response.text``,
    in order, as ``Reward.item_rewards``) on the tokens ending their lines, ``list_reward`` on the last."""
    lines = parse_list_lines(response.text, idx)
    if len(lines) != len(item_rewards):
        raise ValueError(f"the response has {len(lines)} listed titles but {len(item_rewards)} item rewards: "
                         "were they computed from this text?")
    return place_rewards(response.char_ends, [end for _, end in lines], item_rewards, list_reward, length)
