"""The FastAPI app: OpenAI's ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``, and ``/health``.

Handlers only validate (``protocol.py``) and wait: the request becomes a ``Job`` for the engine's continuous
scheduler (``continuous.py``, with ``batching="continuous"`` and a job it serves) or else the shared
``MicroBatcher``, whose thread decodes (``engine.py``) and builds the response (``outputs.py`` / ``sse.py``), so
the event loop never blocks on JAX. A continuously batched stream sends its text as it is decoded
(``live_stream.py``). Every error is OpenAI's JSON
``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request, 404 for an unknown model or path,
503 when the queue is full, 500 for a bug or a failed decode (only the requests of that batch fail).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Awaitable

import jax
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse

from reclm_jax.service.batcher import MicroBatcher
from reclm_jax.service.http import HTTPError, guarded, json_response, read_json
from reclm_jax.serve.config import ServeConfig
from reclm_jax.serve.continuous import ContinuousQueue
from reclm_jax.serve.engine import Engine, Row
from reclm_jax.serve.live_stream import LiveStream
from reclm_jax.serve.outputs import make_choices, response
from reclm_jax.serve.protocol import parse_request
from reclm_jax.serve.sse import chat_events, completion_events

ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 503: "server_error",
               500: "server_error"}


def openai_error(status: int, message: str, err: HTTPError | None) -> dict:
    code = err.code if err is not None and err.code else (None if status < 500 else
                                                          "overloaded" if status == 503 else "internal_error")
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": err.param if err is not None else None, "code": code}}


class ClientLeft(HTTPError):
    """The client closed its connection before its answer was ready: 499 (nginx's "client closed request"),
    which nobody receives; not a server error."""

    status = 499


async def _unless_client_leaves(request: Request, job: Awaitable[Any]) -> Any:
    """Awaits ``job``; if the client disconnects first, cancels it (a continuous job's rows then leave the queue
    or their slots: ``ContinuousQueue.submit``; a static one leaves the queue or skips its rows not yet decoded:
    ``MicroBatcher.submit``, ``Engine.run_batch``) and raises ``ClientLeft``. The request's body is read already,
    so its next ASGI message is the disconnect."""
    task = asyncio.ensure_future(job)

    async def disconnect():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ClientLeft(f"{request.method} {request.url.path}: the client disconnected", code="client_closed")
    return task.result()


def create_app(engine: Engine, cfg: ServeConfig) -> FastAPI:
    """The app over ``engine``; its micro-batcher starts and stops with the app's lifespan. Several apps may
    share one engine (its decodes are serialised)."""
    batcher = MicroBatcher(engine.run_batch, cfg.max_batch, cfg.max_wait_ms / 1000.0, cfg.max_queue,
                           thread_name="decode")
    continuous = cfg.batching == "continuous"
    slots = ContinuousQueue(engine.scheduler, cfg.max_queue, lambda: batcher.queued) if continuous else None
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="reclm-jax OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.batcher, app.state.engine, app.state.cfg = batcher, engine, cfg

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # unknown paths, wrong methods
        message = f"{request.method} {request.url.path}: {exc.detail}"
        status = exc.status_code
        return json_response(openai_error(status, message, HTTPError(message, status=status)), status)

    async def generate(request: Request, kind: str):
        body = await read_json(request)
        req = parse_request(body, kind, engine, cfg)
        rid = f"{'cmpl' if kind == 'completion' else 'chatcmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        tok = engine.tokenizer

        def finish(rows: list[Row]) -> Any:  # on the worker thread
            choices = make_choices(req, rows, tok)
            if req.params.stream:
                events = completion_events if kind == "completion" else chat_events
                return list(events(req, choices, tok, rid, created, req.model))
            return response(req, choices, tok, rid, created, req.model)

        job = engine.make_job(req, finish)
        if slots is not None and engine.continuous_ok(job):
            if req.params.stream and req.params.logprobs is None:  # text sent as it is decoded
                live = LiveStream(req, tok, rid, created, req.model, openai_error)
                job = dataclasses.replace(job, finish=lambda rows: make_choices(req, rows, tok),
                                          progress=live.progress, row_done=live.row_done)
                return await live.respond(slots.submit(job))
            result = await _unless_client_leaves(request, slots.submit(job))
        else:  # a client that leaves withdraws its job from the queue, or its rows not yet decoded
            result = await _unless_client_leaves(request, batcher.submit(job))
        if req.params.stream:
            return StreamingResponse(iter(result), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return json_response(result)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await guarded(lambda: generate(request, "completion"), openai_error)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await guarded(lambda: generate(request, "chat"), openai_error)

    @app.get("/v1/models")
    async def models():
        return json_response({"object": "list", "data": [{
            "id": cfg.served_model_name, "object": "model", "created": started, "owned_by": "reclm-jax",
            "root": str(engine.model_dir), "parent": None, "max_model_len": engine.max_model_len}]})

    @app.get("/health")
    async def health():
        stats = batcher.stats()
        # Requests whose client left first and their rows not decoded to their end: this app's static ones
        # (dropped from its queue, or skipped or stopped by the engine, which apps share), plus the engine-wide
        # continuous ones (rows freed).
        stats["cancelled_rows"] += engine.skipped_rows
        if slots is not None:  # engine-wide decoding figures; this app's queue
            cont = engine.scheduler.stats()
            stats.update(cont, queued=stats["queued"] + slots.queued,
                         **{k: stats[k] + cont[k] for k in ("cancelled_requests", "cancelled_rows")})
        return json_response({"status": "ok", "pid": os.getpid(), "jax": jax.__version__,
                              "model": cfg.served_model_name,
                              "adapter": engine.adapter, "max_model_len": engine.max_model_len,
                              "decode_calls": engine.decode_calls, "compiles": engine.compiles,
                              **stats, "batching": cfg.batching, "max_batch": cfg.max_batch,
                              "max_wait_ms": cfg.max_wait_ms, "max_queue": cfg.max_queue,
                              "decode_chunk": engine.decode_chunk, "cache_len": engine.cache_len})

    return app

