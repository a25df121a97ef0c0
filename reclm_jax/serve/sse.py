"""Server-sent events: the same ``Choice`` objects as the non-streamed response, as OpenAI's chunk objects.

Each choice streams one chunk per token (tokens that add no text are skipped unless logprobs are asked for),
choice after choice, its finish reason on its last chunk (completions) or on a closing chunk with an empty
delta (chat, as OpenAI). The usage goes on a last chunk with no choices when ``stream_options.include_usage``
is set (OpenAI), and otherwise on the last choice chunk. Then ``data: [DONE]``.

These are the streams of requests that are not continuously batched (``logprobs``, a constraint, ``--batching
static``): the Sampler decodes a whole batch in one compiled loop, so such a response starts when its batch is
done and its chunks arrive together (docs/differences.md). Continuously batched streams send their text as it is
decoded (``live_stream.py``).
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

from reclm_jax.serve.outputs import Choice, chat_logprobs, completion_logprobs, usage
from reclm_jax.serve.protocol import ParsedRequest

DONE = "data: [DONE]\n\n"


def event(obj: Any) -> str:
    return "data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n\n"


def chunk_head(req: ParsedRequest, rid: str, created: int, model: str) -> dict:
    """The fields every chunk of a stream repeats."""
    return {"id": rid, "object": "chat.completion.chunk" if req.kind == "chat" else "text_completion",
            "created": created, "model": model}


def role_event(head: dict, index: int) -> str:
    """A chat choice's opening chunk (OpenAI's: the role, empty content)."""
    return event({**head, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                       "logprobs": None, "finish_reason": None}]})


def _token_steps(c: Choice, with_logprobs: bool) -> list[int]:
    """The tokens that get a chunk; at least one step (-1: an empty chunk) so the finish reason is sent."""
    steps = [t for t, p in enumerate(c.pieces) if p or with_logprobs]
    return steps or [-1]


def completion_events(req: ParsedRequest, choices: Sequence[Choice], tokenizer: Any, rid: str, created: int,
                      model: str) -> Iterator[str]:
    head = chunk_head(req, rid, created, model)
    with_lp = req.params.logprobs is not None
    for ci, c in enumerate(choices):
        steps = _token_steps(c, with_lp)
        offset = 0
        for s, t in enumerate(steps):
            last = s == len(steps) - 1
            piece = c.pieces[t] if t >= 0 else ""
            lp = completion_logprobs(c, tokenizer, t, t + 1, offset) if with_lp and t >= 0 else None
            offset += len(piece)
            chunk = {**head, "choices": [{"index": c.index, "text": piece, "logprobs": lp,
                                          "finish_reason": c.finish_reason if last else None,
                                          "stop_reason": c.stop_reason if last else None}]}
            if last and ci == len(choices) - 1 and not req.params.include_usage:
                chunk["usage"] = usage(req, choices)
            yield event(chunk)
    if req.params.include_usage:
        yield event({**head, "choices": [], "usage": usage(req, choices)})
    yield DONE


def chat_events(req: ParsedRequest, choices: Sequence[Choice], tokenizer: Any, rid: str, created: int,
                model: str) -> Iterator[str]:
    head = chunk_head(req, rid, created, model)
    with_lp = req.params.logprobs is not None
    for ci, c in enumerate(choices):
        yield role_event(head, c.index)
        for t in _token_steps(c, with_lp):
            if t < 0:
                continue
            lp = chat_logprobs(c, tokenizer, t, t + 1) if with_lp else None
            yield event({**head, "choices": [{"index": c.index, "delta": {"content": c.pieces[t]}, "logprobs": lp,
                                              "finish_reason": None}]})
        final = {**head, "choices": [{"index": c.index, "delta": {}, "logprobs": None,
                                      "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}]}
        if ci == len(choices) - 1 and not req.params.include_usage:
            final["usage"] = usage(req, choices)
        yield event(final)
    if req.params.include_usage:
        yield event({**head, "choices": [], "usage": usage(req, choices)})
    yield DONE
