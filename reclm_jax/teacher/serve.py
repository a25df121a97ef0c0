"""HTTP teacher service compatible with the original's ``/inference`` and ``/ranking`` JSON.

    python -m reclm_jax.teacher.serve --checkpoint RUN_DIR --port 12621 --workers 1 [--data_path DIR]

Differences from the original (whose handlers read only element 0 of every list): every element of the
lists is answered, concurrent requests are micro-batched into one model call, bad input gets HTTP 400 with
``{"error": "..."}`` (never a crash), a full queue gets 503, unknown candidates are an error rather than
silently dropped, ``users`` is optional (checked when given) and ``GET /health`` reports the state.

Request (``/inference``): ``{"users": [u...], "item_lengths": [n...], "item_lists": [[item...]...], "k": 10,
"immediately": 0|1, "candidate_item_lists": [[item...] | null ...], "target_category": ["+C" | "-C" | null
...]}`` -> ``{"inference": [[item x k] ...]}``. ``/ranking`` takes ``candidate_item_lists`` (required) and
returns ``{"ranking": [[rank...] ...]}`` (0-based ranks among all items).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from reclm_jax.errors import UserError
from reclm_jax.service.http import BadRequest, guarded, json_response, read_json
from reclm_jax.service.server import BackgroundServer, check_port, free_port, run_server  # noqa: F401
from reclm_jax.teacher.batcher import Job, teacher_batcher
from reclm_jax.teacher.connect import DEFAULT_PORT
from reclm_jax.teacher.teacher import Teacher

ENV_ARGS = "RECLM_TEACHER_SERVE_ARGS"  # how worker processes (--workers > 1) receive the settings


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 1024  # users per model call
    max_wait_ms: float = 2.0  # how long a non-immediate request waits for company
    max_queue: int = 4096  # queued requests before 503
    max_history: int = 1024  # longest accepted history (the model uses its last `window` items)
    max_users: int = 4096  # users per request
    max_k: int = 1000


def _list(body: dict, key: str, n: int | None = None, required: bool = True) -> list | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"missing field '{key}'")
        return None
    if not isinstance(value, list):
        raise BadRequest(f"field '{key}' must be a list, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise BadRequest(f"field '{key}' has {len(value)} entries but 'item_lists' has {n}")
    return value


def _ids(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a list of item ids, got {type(value).__name__}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise BadRequest(f"{where} holds {v!r}, which is not an item id (string or integer)")
        out.append(str(v))
    return out


def parse_request(body: Any, kind: str, teacher: Teacher, cfg: ServeConfig) -> Job:
    """Checks a decoded JSON body and turns it into a ``Job``; raises ``BadRequest`` with a message."""
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    lists = _list(body, "item_lists")
    n = len(lists)
    if n == 0:
        raise BadRequest("'item_lists' is empty: send at least one history")
    if n > cfg.max_users:
        raise BadRequest(f"too many histories in one request ({n} > {cfg.max_users})")
    histories = [_ids(h, f"item_lists[{b}]") for b, h in enumerate(lists)]
    for b, h in enumerate(histories):
        if len(h) > cfg.max_history:
            raise BadRequest(f"item_lists[{b}] has {len(h)} items; at most {cfg.max_history} are accepted")
    lengths = _list(body, "item_lengths", n, required=False)
    for b, (m, h) in enumerate(zip(lengths or (), histories)):
        if m != len(h):
            raise BadRequest(f"item_lengths[{b}] is {m!r} but item_lists[{b}] has {len(h)} items")
    users = _list(body, "users", n, required=False)
    for b, u in enumerate(users or ()):
        if isinstance(u, bool) or not isinstance(u, (str, int)) or (teacher.users and str(u) not in teacher.users):
            raise BadRequest(f"unknown user {u!r} (users[{b}])")
    immediately = body.get("immediately", 1)
    if immediately not in (0, 1):  # also accepts true/false
        raise BadRequest(f"field 'immediately' must be 0 or 1, got {immediately!r}")
    cand_raw = _list(body, "candidate_item_lists", n, required=(kind == "ranking"))
    candidates = None
    if cand_raw is not None:
        candidates = []
        for b, c in enumerate(cand_raw):
            if c is None and kind == "ranking":
                raise BadRequest(f"candidate_item_lists[{b}] is null; /ranking needs a list for every history")
            candidates.append(None if c is None else _ids(c, f"candidate_item_lists[{b}]"))
    targets = None
    k = 0
    if kind == "topk":
        k = body.get("k")
        # k = 0 is valid: the original's SFTPersonalCategoryRate sends it and gets [[]] (torch.topk(score, 0)).
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= cfg.max_k:
            raise BadRequest(f"field 'k' must be an integer from 0 to {cfg.max_k}, got {k!r}")
        targets = _list(body, "target_category", n, required=False)
        for b, t in enumerate(targets or ()):
            if t is not None and not isinstance(t, str):
                raise BadRequest(f"target_category[{b}] must be a string like '+Comedy' or null, got {t!r}")
    try:
        teacher.validate(histories, targets, candidates)
    except UserError as e:
        raise BadRequest(str(e)) from None
    return Job(kind=kind, histories=histories, k=k, target_categories=targets, candidates=candidates,
               immediately=bool(immediately))


def create_app(teacher: Teacher, cfg: ServeConfig = ServeConfig()):
    """The FastAPI app; its micro-batcher starts with the app's lifespan."""
    batcher = teacher_batcher(teacher, cfg.max_batch, cfg.max_wait_ms / 1000.0, cfg.max_queue)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="reclm-jax teacher", lifespan=lifespan)
    app.state.batcher = batcher

    async def handle(request: Request, kind: str, key: str):
        async def answer():
            job = parse_request(await read_json(request), kind, teacher, cfg)
            return json_response({key: await batcher.submit(job)})

        return await guarded(answer)  # {"error": "..."}: 400 bad input, 503 full queue, 500 a bug

    @app.post("/inference")
    async def inference(request: Request):
        return await handle(request, "topk", "inference")

    @app.post("/ranking")
    async def ranking(request: Request):
        return await handle(request, "ranking", "ranking")

    @app.get("/health")
    async def health():
        return json_response({"status": "ok", "pid": os.getpid(), "items": len(teacher.items),
                              "users": len(teacher.users), "categories": len(teacher.categories),
                              "window": teacher.window, "queued": batcher.queued, "batches": batcher.batches,
                              "requests": batcher.jobs_done, **dataclasses.asdict(cfg)})

    return app


def _load(args: dict) -> tuple[Teacher, ServeConfig]:
    teacher = Teacher.from_checkpoint(args["checkpoint"], args.get("data_path"))
    cfg = ServeConfig(**args["serve"])
    teacher.warmup(cfg.max_batch)
    # The catalogue tables and JAX's objects are millions of long-lived Python objects; every full garbage
    # collection would walk them all (~100 ms pauses that set the p99 under load). Freezing moves them out of
    # the collector's reach; only objects made while serving are scanned.
    gc.collect()
    gc.freeze()
    return teacher, cfg


def app_from_env():
    """uvicorn factory for worker processes: settings come from the ``RECLM_TEACHER_SERVE_ARGS`` variable."""
    return create_app(*_load(json.loads(os.environ[ENV_ARGS])))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.teacher.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="teacher run folder (training output_dir)")
    p.add_argument("--data_path", default=None, help="raw dataset folder (default: the run's config)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own copy of the model")
    p.add_argument("--http", default="auto", choices=("auto", "h11", "httptools"),
                   help="uvicorn HTTP parser (auto: httptools when installed)")
    defaults = ServeConfig()
    for f in dataclasses.fields(ServeConfig):
        p.add_argument(f"--{f.name}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    a = p.parse_args(argv)
    serve = {f.name: getattr(a, f.name) for f in dataclasses.fields(ServeConfig)}
    for name, v in serve.items():
        if v <= 0:
            raise UserError(f"--{name} must be positive, got {v}")
    if a.workers < 1:
        raise UserError(f"--workers must be at least 1, got {a.workers}")
    if not Path(a.checkpoint).is_dir():
        raise UserError(f"--checkpoint {a.checkpoint}: no such folder")
    args = {"checkpoint": a.checkpoint, "data_path": a.data_path, "serve": serve}
    check_port(a.host, a.port)

    if a.workers == 1:
        teacher, cfg = _load(args)
        print(f"teacher service: {len(teacher.items):,} items, http://{a.host}:{a.port}", flush=True)
        run_server(create_app(teacher, cfg), a.host, a.port, http=a.http)
    else:
        Teacher.from_checkpoint(a.checkpoint, a.data_path)  # fail here, once, on a bad checkpoint or dataset
        os.environ[ENV_ARGS] = json.dumps(args)
        print(f"teacher service: {a.workers} workers on http://{a.host}:{a.port}", flush=True)
        run_server("reclm_jax.teacher.serve:app_from_env", a.host, a.port, http=a.http, factory=True,
                   workers=a.workers)
    return 0


if __name__ == "__main__":
    from reclm_jax.cli import run_main

    run_main(main)
