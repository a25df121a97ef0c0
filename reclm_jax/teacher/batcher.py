"""Micro-batching of concurrent service requests into few large ``Teacher`` calls.

Requests are queued; one asyncio task takes the oldest, then keeps taking queued requests until ``max_batch``
users are collected or ``max_wait_s`` has passed (no wait at all for ``immediately`` requests: they only
pick up what is already queued). The combined batch runs on a single worker thread, so the event loop keeps
accepting requests meanwhile, and requests that arrive during a model call form the next batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from reclm_jax.teacher.teacher import Teacher


class QueueFullError(Exception):
    """The request queue is at ``max_queue``; the service answers 503."""


@dataclasses.dataclass
class Job:
    kind: str  # "topk" or "ranking"
    histories: list[list[str]]
    k: int = 0
    target_categories: list[str | None] | None = None
    candidates: list[list[str] | None] | None = None
    immediately: bool = True

    @property
    def size(self) -> int:
        return len(self.histories)


def _run_jobs(teacher: Teacher, jobs: Sequence[Job]) -> list[Any]:
    """One Teacher call per job kind for the whole batch; returns each job's rows (or its exception)."""
    out: list[Any] = [None] * len(jobs)
    for kind in ("topk", "ranking"):
        idx = [n for n, j in enumerate(jobs) if j.kind == kind]
        if not idx:
            continue
        group = [jobs[n] for n in idx]
        try:
            rows = _run_group(teacher, kind, group)
        except Exception:  # one bad job must not fail its neighbours: retry them one by one
            rows = []
            for j in group:
                try:
                    rows.extend(_run_group(teacher, kind, [j]))
                except Exception as e:
                    rows.extend([e] * j.size)
        pos = 0
        for n, j in zip(idx, group):
            part = rows[pos:pos + j.size]
            pos += j.size
            err = next((r for r in part if isinstance(r, Exception)), None)
            out[n] = err if err is not None else part
    return out


def _run_group(teacher: Teacher, kind: str, jobs: Sequence[Job]) -> list[Any]:
    histories = [h for j in jobs for h in j.histories]
    if kind == "ranking":
        return teacher.ranking(histories, [c for j in jobs for c in j.candidates])
    # One call with the largest k: a top-k list's first k' entries are its top-k' list.
    k = max(j.k for j in jobs)
    targets = [t for j in jobs for t in (j.target_categories or [None] * j.size)]
    cands = [c for j in jobs for c in (j.candidates or [None] * j.size)]
    rows = teacher.topk(histories, k, target_categories=targets, candidates=cands)
    out, pos = [], 0
    for j in jobs:
        out.extend(r[: j.k] for r in rows[pos:pos + j.size])
        pos += j.size
    return out


class MicroBatcher:
    def __init__(self, teacher: Teacher, max_batch: int = 1024, max_wait_s: float = 0.002, max_queue: int = 4096):
        self.teacher = teacher
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.batches = 0  # model calls made (for /health and the benchmark)
        self.jobs_done = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher")

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=False)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, job: Job) -> list[Any]:
        """Queues ``job`` and waits for its rows; raises ``QueueFullError`` at once when the queue is full."""
        assert self._queue is not None, "MicroBatcher.start() was not called"
        fut = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((job, fut))
        except asyncio.QueueFull:
            raise QueueFullError(f"the request queue is full ({self.max_queue} requests)") from None
        result = await fut
        if isinstance(result, Exception):
            raise result
        return result

    async def _collect(self) -> list[tuple[Job, asyncio.Future]]:
        q = self._queue
        first = await q.get()
        batch, users = [first], first[0].size
        deadline = None if first[0].immediately else time.monotonic() + self.max_wait_s
        while users < self.max_batch:
            try:
                item = q.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic() if deadline is not None else 0.0
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(q.get(), remaining)
                except asyncio.TimeoutError:
                    break
            batch.append(item)
            users += item[0].size
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            jobs = [j for j, _ in batch]
            try:
                results = await loop.run_in_executor(self._pool, _run_jobs, self.teacher, jobs)
            except Exception as e:  # keep serving whatever happens to one batch
                results = [e] * len(batch)
            self.batches += 1
            self.jobs_done += len(batch)
            for (_, fut), res in zip(batch, results):
                if not fut.done():  # the client may have gone away
                    fut.set_result(res)
