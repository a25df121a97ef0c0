"""Micro-batching of concurrent service requests into few large model calls, on one worker thread.

Requests (jobs) are queued; one asyncio task takes the oldest, then keeps taking queued jobs until
``max_batch`` rows are collected or ``max_wait_s`` has passed (no wait at all for an ``immediately`` job: it
only picks up what is already queued). A batch holds only jobs of one ``key`` (what must compile together,
e.g. sampling settings): a job of another key is set aside, in arrival order, and heads a later batch. The
batch runs on a single worker thread, so the event loop keeps accepting requests meanwhile, and requests that
arrive during a model call form the next batch.

A job is any object with ``size`` (its rows); ``key`` (hashable, default None) and ``immediately`` (default
False) are optional attributes. ``run(jobs) -> results`` is called on the worker thread with one batch and
returns one result per job, in order; a result that is an ``Exception`` is raised to that job's caller only,
and an exception raised by ``run`` itself fails that batch's jobs and nothing else.

A caller that stops waiting (its ``submit`` is cancelled: a server's client disconnected) withdraws its job: a
job still queued is dropped before any batch takes it; a job in the running batch gets its ``cancel()`` called,
if it has one, so ``run`` can skip the rows it has not started yet.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence


class QueueFullError(Exception):
    """The request queue is at ``max_queue``; services answer 503."""


def _key(job) -> Any:
    return getattr(job, "key", None)


class MicroBatcher:
    def __init__(self, run: Callable[[Sequence[Any]], list[Any]], max_batch: int = 1024, max_wait_s: float = 0.002,
                 max_queue: int = 4096, thread_name: str = "batcher"):
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.batches = 0  # run() calls made (for /health and the benchmarks)
        self.jobs_done = 0
        self.rows_done = 0
        self.cancelled = 0  # jobs whose caller stopped waiting before their batch finished
        self.cancelled_rows = 0  # rows of those jobs dropped from the queue (never given to ``run``)
        self._queue: asyncio.Queue | None = None
        # Jobs of another key than the batch being built, as (arrival number, job, future) in arrival order: all
        # of them arrived before anything still in the queue, so the oldest job always heads the next batch.
        self._aside: list[tuple[int, Any, asyncio.Future]] = []
        self._arrivals = itertools.count()
        self._waiting: set[int] = set()  # arrival numbers of the jobs queued or set aside, still awaited
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)

    def start(self) -> None:
        """Starts the collecting task on the running event loop (an app's lifespan calls it)."""
        self._queue = asyncio.Queue()
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
        """Jobs waiting for a batch (not counting the batch running now)."""
        return len(self._waiting)

    def stats(self) -> dict:
        return {"queued": self.queued, "batches": self.batches, "requests": self.jobs_done, "rows": self.rows_done,
                "cancelled_requests": self.cancelled, "cancelled_rows": self.cancelled_rows}

    async def submit(self, job) -> Any:
        """Queues ``job`` and waits for its result; raises ``QueueFullError`` at once when the queue is full."""
        assert self._queue is not None, "MicroBatcher.start() was not called"
        if self.queued >= self.max_queue:
            raise QueueFullError(f"the request queue is full ({self.max_queue} requests)")
        fut = asyncio.get_running_loop().create_future()
        arrival = next(self._arrivals)
        self._waiting.add(arrival)
        self._queue.put_nowait((arrival, job, fut))
        try:
            result = await fut
        except asyncio.CancelledError:  # the caller left (its future is cancelled with it)
            self.cancelled += 1
            if arrival in self._waiting:  # still queued: no batch will take it
                self._waiting.discard(arrival)
                self.cancelled_rows += job.size
            else:  # in the running batch: told, so its rows not yet decoded are not
                cancel = getattr(job, "cancel", None)
                if cancel is not None:
                    cancel()
            raise
        if isinstance(result, Exception):
            raise result
        return result

    async def _next(self) -> tuple[int, Any, asyncio.Future]:
        """The oldest job still awaited (set aside first: those arrived before anything queued)."""
        while True:
            item = self._aside.pop(0) if self._aside else await self._queue.get()
            if not item[2].done():
                return item

    async def _collect(self) -> list[tuple[int, Any, asyncio.Future]]:
        q = self._queue
        first = await self._next()
        key, batch, rows = _key(first[1]), [first], first[1].size
        kept = []  # jobs set aside earlier with this key join first, in their order, while they fit
        for item in self._aside:
            if item[2].done():  # withdrawn while set aside
                continue
            if _key(item[1]) == key and rows + item[1].size <= self.max_batch:
                batch.append(item)
                rows += item[1].size
            else:
                kept.append(item)
        self._aside = kept
        deadline = None if getattr(first[1], "immediately", False) else time.monotonic() + self.max_wait_s
        while rows < self.max_batch:
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
            if item[2].done():  # withdrawn while queued
                continue
            if _key(item[1]) != key:
                bisect.insort(self._aside, item, key=lambda it: it[0])
            elif rows + item[1].size > self.max_batch:
                bisect.insort(self._aside, item, key=lambda it: it[0])  # the batch is full: it goes next
                break
            else:
                batch.append(item)
                rows += item[1].size
        batch = [item for item in batch if not item[2].done()]  # withdrawn while the batch waited for company
        self._waiting.difference_update(arrival for arrival, _, _ in batch)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            jobs = [j for _, j, _ in batch]
            try:
                results = await loop.run_in_executor(self._pool, self.run, jobs)
                if len(results) != len(jobs):
                    raise RuntimeError(f"batch runner returned {len(results)} results for {len(jobs)} jobs")
            except Exception as e:  # keep serving whatever happens to one batch
                results = [e] * len(batch)
            self.batches += 1
            self.jobs_done += len(batch)
            self.rows_done += sum(j.size for j in jobs)
            for (_, _, fut), res in zip(batch, results):
                if not fut.done():  # the client may have gone away
                    fut.set_result(res)
