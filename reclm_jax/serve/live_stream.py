"""Live streaming: a continuously batched request's text sent as it is decoded, not when it is done.

The decode thread hands each row's tokens so far to ``LiveStream.progress`` after every admission and chunk
(``Job.progress``); the app's event loop turns them into OpenAI chunks. What a chunk may send is the part of
the text that no later token can change (``sendable``): the decoded text up to the earliest stop string, less a
tail that may still become a stop string, less a trailing incomplete character (U+FFFD), and, for tokenizers
that clean up spaces before punctuation, less the text from the last space on. So every chunk extends the text
sent so far, and when the row is done (``Job.row_done``: as soon as that row ends, not when the request's last
row does, for ``n`` > 1 or several prompts) its last chunk carries the rest of the non-streamed answer
(``outputs.make_choice``), with the finish reason: the streamed text is the non-streamed text.

Requests with ``logprobs`` stream from the finished rows (``sse.py``): their chunks carry per-token entries.
A client that disconnects mid-stream cancels its job: its rows leave their slots at the next round
(``continuous.ContinuousScheduler.cancel``), so nobody decodes for a reader that is gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from starlette.responses import StreamingResponse

from reclm_jax.serve.detok import REPLACEMENT
from reclm_jax.serve.engine import Row
from reclm_jax.serve.outputs import Choice, make_choice, usage
from reclm_jax.serve.protocol import ParsedRequest
from reclm_jax.serve.sse import DONE, chunk_head, event, role_event
from reclm_jax.service.http import error_of

log = logging.getLogger(__name__)
_END = object()  # the job is done (its result, or its exception, is the task's)


def sendable(text: str, stops: Sequence[str], cleanup_spaces: bool = False) -> str:
    """The prefix of ``text`` (the decoded tokens so far) that stays a prefix of the final answer whatever
    tokens follow (see the module docstring)."""
    hits = [text.find(s) for s in stops if s in text]
    if hits:
        text = text[:min(hits)]
    else:
        hold = 0  # the longest tail that is the start of a stop string
        for s in stops:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        text = text[:len(text) - hold]
    text = text.rstrip(REPLACEMENT)
    if cleanup_spaces:  # " ." -> "." and the like: a space may still lose itself to what follows
        text = text[:max(text.rfind(" "), 0)]
    return text


class LiveStream:
    """One streamed request: ``progress`` (any thread) queues token updates; ``respond(result)`` awaits the
    job's first update (or its end: an early failure is then an ordinary HTTP error) and returns the SSE
    response. ``result``: the awaitable of the job's choices (``outputs.make_choices`` of its rows).
    ``error_body``: (status, message, HTTPError | None) -> the error object sent when the job fails mid-stream."""

    def __init__(self, req: ParsedRequest, tokenizer: Any, rid: str, created: int, model: str,
                 error_body: Callable[[int, str, Any], dict]):
        self.req, self.tokenizer, self.error_body = req, tokenizer, error_body
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.chat = req.kind == "chat"
        self.head = chunk_head(req, rid, created, model)
        self.rows = len(req.prompts) * req.params.n
        self.sent = [""] * self.rows
        self.closed: dict[int, Choice] = {}  # rows whose last chunk was sent -> their choice
        self.cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
        self._task: asyncio.Future | None = None
        self._first: list = []

    def progress(self, row: int, tokens: list[int]) -> None:
        """On the decode thread: row ``row`` has generated ``tokens`` so far."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (row, tokens))
        except RuntimeError:  # the app's loop is closed: nobody reads this stream any more
            pass

    def row_done(self, row: int, result: Row) -> None:
        """On the decode thread: row ``row`` has finished (``Job.row_done``)."""
        self.progress(row, result)  # type: ignore[arg-type]  # a Row, not tokens: the stream tells them apart

    async def respond(self, result: Awaitable[list[Choice]]) -> StreamingResponse:
        self._task = asyncio.ensure_future(result)
        self._task.add_done_callback(self._ended)
        first = await self.queue.get()
        if first is _END and self._task.exception() is not None:
            raise self._task.exception()  # refused or failed before any token: an HTTP error, not a stream
        self._first = [first]
        return StreamingResponse(self._events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    def _ended(self, task: asyncio.Future) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here, so a stream its client left does not log "never retrieved"
        self.queue.put_nowait(_END)

    def _chunk(self, row: int, text: str, finish: Choice | None = None) -> dict:
        if self.chat:
            delta = {"content": text} if finish is None else {}
            c = {"index": row, "delta": delta, "logprobs": None, "finish_reason": None}
        else:
            c = {"index": row, "text": text, "logprobs": None, "finish_reason": None, "stop_reason": None}
        if finish is not None:
            c.update(finish_reason=finish.finish_reason, stop_reason=finish.stop_reason)
        return {**self.head, "choices": [c]}

    def _close(self, c: Choice) -> list[str]:
        """The events that end choice ``c``'s row: the rest of its text and its finish reason; the request's last
        row to end also carries the usage (unless a usage chunk of its own follows)."""
        self.closed[c.index] = c
        rest = c.text[len(self.sent[c.index]):]
        if not c.text.startswith(self.sent[c.index]):  # would be a bug in ``sendable``: say so, never hide it
            log.error("streamed text %r is not a prefix of the answer %r", self.sent[c.index], c.text)
            rest = ""
        out = []
        if self.chat and rest:
            out.append(event(self._chunk(c.index, rest)))
        final = self._chunk(c.index, "" if self.chat else rest, finish=c)
        if len(self.closed) == self.rows and not self.req.params.include_usage:
            final["usage"] = usage(self.req, [self.closed[r] for r in sorted(self.closed)])
        out.append(event(final))
        return out

    async def _events(self) -> AsyncIterator[str]:
        try:
            async for e in self._stream():
                yield e
        finally:  # the client left before the end (Starlette cancels the stream): the job's rows stop decoding
            if self._task is not None and not self._task.done():
                self._task.cancel()

    async def _stream(self) -> AsyncIterator[str]:
        if self.chat:
            for r in range(self.rows):
                yield role_event(self.head, r)
        params, n = self.req.params, self.req.params.n
        pending, done = self._first, False
        while not done:
            items = pending or [await self.queue.get()]
            while not self.queue.empty():  # send only the newest tokens of each row
                items.append(self.queue.get_nowait())
            pending, latest, ended = [], {}, {}
            for item in items:
                if item is _END:
                    done = True
                elif isinstance(item[1], Row):
                    ended[item[0]] = item[1]
                else:
                    latest[item[0]] = item[1]
            for r, tokens in latest.items():
                if r in ended or r in self.closed:
                    continue  # its last chunk carries the rest
                text = sendable(self.tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens),
                                params.stop, self.cleanup)
                if len(text) > len(self.sent[r]) and text.startswith(self.sent[r]):
                    yield event(self._chunk(r, text[len(self.sent[r]):]))
                    self.sent[r] = text
            for r, row in ended.items():
                for e in self._close(make_choice(r, self.req.prompts[r // n], row, params, self.tokenizer)):
                    yield e
        try:
            choices = self._task.result()
        except Exception as e:  # failed mid-stream: OpenAI's error object as the last event (as vLLM)
            status, message, err = error_of(e)
            yield event(self.error_body(status, message, err))
            yield DONE
            return
        for c in choices:
            if c.index not in self.closed:
                for e in self._close(c):
                    yield e
        if params.include_usage:
            yield event({**self.head, "choices": [], "usage": usage(self.req, choices)})
        yield DONE
