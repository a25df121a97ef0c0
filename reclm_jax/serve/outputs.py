"""Decoded rows -> OpenAI choices and response objects (the non-streamed form; ``sse.py`` streams the same
``Choice`` objects, so both forms carry the same text, tokens and finish reasons by construction).

Stop strings: the text is cut before the earliest occurrence of any of them (kept with
``include_stop_str_in_output``), ``finish_reason`` is "stop" and vLLM's ``stop_reason`` the string; the
completion's tokens are those up to the one that completed the string. A row that ended on a stop id is
"stop" too (``stop_reason``: the id when it came from the request's ``stop_token_ids``, else null: the model's
EOS / end of turn); one that hit max_tokens is "length". Log-probabilities are the model's own (before
temperature and top-k/top-p, as vLLM's default), clamped at -9999 (JSON has no -inf).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from reclm_jax.serve.detok import token_pieces, token_text
from reclm_jax.serve.engine import Row
from reclm_jax.serve.protocol import Params, ParsedRequest

MIN_LOGPROB = -9999.0


@dataclasses.dataclass
class Choice:
    index: int
    prompt: tuple[int, ...]
    token_ids: list[int]  # the completion's tokens (the stop token included)
    pieces: list[str]  # the text each token adds; "".join(pieces) == text
    text: str
    finish_reason: str  # "stop" | "length"
    stop_reason: str | int | None
    logprobs: list[float] | None = None  # the chosen tokens' model log-probs
    top: list[list[tuple[int, float]]] | None = None  # per token: the k most likely (id, logprob)


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    hits = [(text.find(s), s) for s in stops if s in text]
    return min(hits, key=lambda h: (h[0], -len(h[1]))) if hits else None


def _keep_chars(pieces: list[str], n: int) -> list[str]:
    out = []
    for p in pieces:
        out.append(p[:max(n, 0)])
        n -= len(out[-1])
    return out


def make_choice(index: int, prompt: tuple[int, ...], row: Row, params: Params, tokenizer: Any) -> Choice:
    tokens = list(row.tokens)
    pieces = token_pieces(tokenizer, tokens, params.skip_special_tokens)
    text = "".join(pieces)
    finish, reason = ("stop" if row.stopped else "length"), None
    if row.stopped and tokens and tokens[-1] in params.stop_token_ids:
        reason = tokens[-1]
    hit = _first_stop(text, params.stop)
    if hit is not None:
        pos, s = hit
        end = pos + len(s)
        count, k = 0, 0
        for k, p in enumerate(pieces, 1):  # the token that completes the stop string is the last one counted
            count += len(p)
            if count >= end:
                break
        cut = end if params.include_stop_str_in_output else pos
        tokens, pieces = tokens[:k], _keep_chars(pieces[:k], cut)
        text, finish, reason = text[:cut], "stop", s
    n = len(tokens)
    choice = Choice(index, prompt, tokens, pieces, text, finish, reason)
    if params.logprobs is not None:
        choice.logprobs = [max(float(x), MIN_LOGPROB) for x in row.logprobs[:n]]
        if params.logprobs > 0 and row.top_ids is not None:
            k = params.logprobs
            choice.top = [[(int(i), max(float(v), MIN_LOGPROB)) for i, v in zip(ids[:k], vals[:k])]
                          for ids, vals in zip(np.asarray(row.top_ids)[:n], np.asarray(row.top_logprobs)[:n])]
        else:
            choice.top = [[] for _ in range(n)]
    return choice


def make_choices(req: ParsedRequest, rows: Sequence[Row], tokenizer: Any) -> list[Choice]:
    """Rows in the engine's order (prompt-major) -> choices with OpenAI's index (prompt i, sample j: i * n + j)."""
    n = req.params.n
    return [make_choice(r, req.prompts[r // n], row, req.params, tokenizer) for r, row in enumerate(rows)]


def usage(req: ParsedRequest, choices: Sequence[Choice]) -> dict:
    """Each prompt counted once (also with n > 1, as vLLM); every choice's completion tokens."""
    prompt = sum(len(p) for p in req.prompts)
    completion = sum(len(c.token_ids) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# -- logprobs objects -----------------------------------------------------------------------------------------
def completion_logprobs(choice: Choice, tokenizer: Any, start: int = 0, stop: int | None = None,
                        offset: int = 0) -> dict:
    """The legacy completions form for tokens ``start:stop``: ``tokens``, ``token_logprobs``, ``top_logprobs``
    (per token a {token: logprob} dict of the k alternatives plus the chosen token, as vLLM) and ``text_offset``
    (each token's start in the completion text; ``offset`` = the text before ``start``)."""
    stop = len(choice.token_ids) if stop is None else stop
    tokens, offsets, top = [], [], []
    pos = offset
    for t in range(start, stop):
        tid = choice.token_ids[t]
        tokens.append(token_text(tokenizer, tid))
        offsets.append(pos)
        pos += len(choice.pieces[t])
        alts = {token_text(tokenizer, i): v for i, v in choice.top[t]}
        alts.setdefault(tokens[-1], choice.logprobs[t])
        top.append(alts)
    return {"tokens": tokens, "token_logprobs": choice.logprobs[start:stop], "top_logprobs": top,
            "text_offset": offsets}


def _entry(tokenizer: Any, token_id: int, logprob: float) -> dict:
    s = token_text(tokenizer, token_id)
    return {"token": s, "logprob": logprob, "bytes": list(s.encode("utf-8"))}


def chat_logprobs(choice: Choice, tokenizer: Any, start: int = 0, stop: int | None = None) -> dict:
    """The chat form: ``{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}``."""
    stop = len(choice.token_ids) if stop is None else stop
    content = []
    for t in range(start, stop):
        e = _entry(tokenizer, choice.token_ids[t], choice.logprobs[t])
        e["top_logprobs"] = [_entry(tokenizer, i, v) for i, v in choice.top[t]]
        content.append(e)
    return {"content": content}


# -- whole responses ------------------------------------------------------------------------------------------
def response(req: ParsedRequest, choices: Sequence[Choice], tokenizer: Any, rid: str, created: int,
             model: str) -> dict:
    """The non-streamed ``text_completion`` (``req.kind`` "completion") or ``chat.completion`` object."""
    chat = req.kind == "chat"
    out = []
    for c in choices:
        item = {"index": c.index, **({"message": {"role": "assistant", "content": c.text}} if chat else
                                     {"text": c.text})}
        logprobs = chat_logprobs if chat else completion_logprobs
        item.update(logprobs=logprobs(c, tokenizer) if c.logprobs is not None else None,
                    finish_reason=c.finish_reason, stop_reason=c.stop_reason)
        if req.params.return_token_ids:
            item.update(token_ids=c.token_ids, prompt_token_ids=list(c.prompt))
        out.append(item)
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model, "choices": out, "usage": usage(req, choices)}
