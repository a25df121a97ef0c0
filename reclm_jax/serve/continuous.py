"""Continuous batching for the server: one decode-loop thread per engine runs its ``SlotDecoder``s, and each
app submits jobs to it through a ``ContinuousQueue`` (503 on a full queue, results back on the app's loop).

The loop (``ContinuousScheduler``): jobs arrive on a thread-safe queue and their rows wait, per key (sampling
settings, adapter), first come first served. Each round visits every key with waiting or live rows: admits
what fits into that key's SlotDecoder (created lazily; at most ``max_decoders`` hold a slot cache at a time, an
idle one giving its cache up for another key), runs one chunk of decoding steps, and hands finished rows to their jobs. A job's ``finish`` builds its
response on this thread once its last row is done; its result reaches the app's event loop through
``loop.call_soon_threadsafe``. A job with a ``progress`` callback (a live stream) also gets each of its rows'
new tokens after every admission and chunk, and with a ``row_done`` callback each row as it finishes. A job
whose caller stops waiting (``ContinuousQueue.submit`` cancelled: a streaming client disconnected) is cancelled
between rounds: its waiting rows leave the queue and its live rows free their slots at once
(``SlotDecoder.cancel``). A failing chunk or admission fails the jobs with rows in that decoder only (the
decoder starts empty again); a failing ``finish`` its own job. Decodes hold the engine's lock, so the static
path (``Engine.run_batch``) and this loop never run the model at once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import queue
import threading
from typing import Any, Callable

from reclm_jax.errors import UserError
from reclm_jax.service.batcher import QueueFullError


log = logging.getLogger(__name__)
MAX_KEPT = 8  # decoders (compiled programs) kept per engine, of which ``max_decoders`` hold a slot cache


@dataclasses.dataclass(eq=False)
class _Ticket:
    job: Any
    done: Callable[[Any], None]  # result (or exception) -> the app; called once, on the loop thread
    admitted: Callable[[], None]  # called once, when the job's last row has a slot
    rows: list = dataclasses.field(default_factory=list)
    waiting: int = 0  # rows not yet admitted
    remaining: int = 0  # rows not yet finished
    failed: bool = False
    reported: dict = dataclasses.field(default_factory=dict)  # row -> tokens passed to ``job.progress``


@dataclasses.dataclass(frozen=True)
class _Cancel:
    ticket: _Ticket


class ContinuousScheduler:
    """The decode loop of one engine (see the module docstring); the thread starts with the first job."""

    def __init__(self, engine, max_decoders: int = 2):
        self.engine, self.max_decoders = engine, max_decoders
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._decoders: collections.OrderedDict = collections.OrderedDict()  # key -> SlotDecoder, oldest first
        self._dlock = threading.Lock()  # the decoder table changes on the loop thread, stats read it elsewhere
        self._waiting: dict[Any, collections.deque] = {}  # key -> (ticket, row index), in arrival order
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.jobs_done = self.rows_done = 0
        self.jobs_cancelled = self.rows_cancelled = 0  # rows_cancelled: live rows whose slots were freed
        self.retired = {"steps": 0, "slot_steps": 0, "chunks": 0, "traces": 0}  # of decoders dropped

    # -- the app side (any thread) -------------------------------------------------------------------------
    def submit(self, job, done: Callable[[Any], None], admitted: Callable[[], None]) -> _Ticket:
        """Queues ``job``; returns its ticket (for ``cancel``)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="continuous-decode", daemon=True)
                self._thread.start()
        ticket = _Ticket(job, done, admitted, [None] * job.size, job.size, job.size)
        self._inbox.put(ticket)
        return ticket

    def cancel(self, ticket: _Ticket) -> None:
        """Drops a submitted job that nobody waits for any more (done on the loop thread, between rounds)."""
        self._inbox.put(_Cancel(ticket))

    def _all(self) -> list:
        with self._dlock:
            return list(self._decoders.values())

    def stats(self) -> dict:
        decs = self._all()
        steps = self.retired["steps"] + sum(d.steps for d in decs)
        slot_steps = self.retired["slot_steps"] + sum(d.slot_steps for d in decs)
        return {"decode_steps": steps, "slot_steps": slot_steps,
                "mean_active_slots": round(slot_steps / steps, 3) if steps else None,
                "decode_chunks": self.retired["chunks"] + sum(d.chunks for d in decs),
                "continuous_requests": self.jobs_done, "continuous_rows": self.rows_done,
                "cancelled_requests": self.jobs_cancelled, "cancelled_rows": self.rows_cancelled}

    @property
    def traces(self) -> int:
        with self._dlock:
            return self.retired["traces"] + sum(d.traces for d in self._decoders.values())

    # -- the loop ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                self._rounds()
            except Exception as e:  # a bug in the loop itself: fail what it holds, keep serving
                log.exception("continuous batching loop")
                tickets = {t for rows in self._waiting.values() for t, _ in rows}
                for dec in self._all():
                    tickets |= {tag[0] for tag in dec.reset()}
                for t in tickets:
                    self._fail(t, e)
                self._waiting.clear()

    def _rounds(self) -> None:
        while True:
            busy = any(self._waiting.values()) or any(d.live for d in self._decoders.values())
            self._take(self._inbox.get() if not busy else None)
            keys = dict.fromkeys([k for k, rows in self._waiting.items() if rows] + list(self._decoders))
            for key in keys:
                if not self._waiting.get(key) and not (key in self._decoders and self._decoders[key].live):
                    continue  # nothing to do for it (listed twice, or emptied this round)
                dec = self._decoder(key)
                if dec is not None:
                    self._round(key, dec)
                self._take(None)

    def _take(self, first) -> None:
        items = [first] if first is not None else []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for t in items:
            if isinstance(t, _Cancel):
                self._cancel(t.ticket)
                continue
            rows = self._waiting.setdefault(t.job.key, collections.deque())
            rows.extend((t, r) for r in range(t.job.size))

    def _cancel(self, t: _Ticket) -> None:
        if t.failed or t.remaining == 0:
            return  # already over: nothing holds a slot
        self._drop_waiting(t)
        t.failed = True  # its rows' tokens are no longer reported or handed back
        if t.waiting:
            t.admitted()
        for dec in self._all():
            if dec.holds_cache:
                with self.engine._lock:
                    self.rows_cancelled += dec.cancel(lambda tag: tag[0] is t)
        self.jobs_cancelled += 1

    def _decoder(self, key):
        """The key's decoder, holding a slot cache, or None while ``max_decoders`` busy ones hold theirs. Idle
        decoders give their cache up for another key but keep their compiled programs (at most
        ``MAX_KEPT`` decoders are kept, the least recently used idle one dropped beyond that)."""
        dec = self._decoders.get(key)
        if dec is None or not dec.holds_cache:
            holding = [k for k, d in self._decoders.items() if d.holds_cache]
            if len(holding) >= self.max_decoders:
                if not any(self._decoders[k].release() for k in holding):
                    return None  # every cache is busy: this key waits for one to empty
        if dec is None:
            with self.engine._lock:
                dec = self.engine.slot_decoder(key)
            with self._dlock:
                self._decoders[key] = dec
                idle = [k for k, d in self._decoders.items() if not d.holds_cache]
                if len(self._decoders) > MAX_KEPT and idle:
                    old = self._decoders.pop(idle[0])
                    for f in self.retired:
                        self.retired[f] += getattr(old, f)
        with self._dlock:
            self._decoders.move_to_end(key)
        return dec

    def _round(self, key, dec) -> None:
        from reclm_jax.models.slot_decoder import SlotRequest

        waiting = self._waiting.setdefault(key, collections.deque())
        admitting = bool(waiting)
        try:
            with self.engine._lock:
                if waiting:
                    heads = list(itertools.islice(waiting, dec.free))  # not a copy of the whole queue per chunk
                    reqs = [SlotRequest(t.job.prompts[r], t.job.limits[r], t.job.seeds[r], t.job.stop_ids[r], (t, r))
                            for t, r in heads]
                    try:
                        taken = dec.admit(reqs)
                    except UserError as e:  # a row the decoder refuses (checked before any decoding): its job only
                        self._fail(waiting[0][0], e)
                        return
                    admitting = False
                    for _ in range(taken):
                        t, _r = waiting.popleft()
                        t.waiting -= 1
                        if t.waiting == 0:
                            t.admitted()
                    if taken:
                        self._report(dec)  # the admitted rows' first tokens, a chunk before the step's
                finished = dec.step(waiting=bool(waiting))
                self._report(dec)
        except Exception as e:  # this decoder's rows fail (its state is gone); the loop and other decoders go on
            tickets = {tag[0] for tag in dec.reset()}
            if admitting:
                tickets.add(waiting[0][0])  # the admission failed: the head job's (retrying would fail again)
            for t in tickets:
                self._fail(t, e)
            return
        self._hand_back(finished)

    def _report(self, dec) -> None:
        """Passes the live rows' new tokens to the jobs that stream them (``Job.progress``); only those rows'
        tokens are copied (this runs after every chunk)."""
        for (t, r), tokens in dec.progress():
            if t.job.progress is not None and not t.failed and len(tokens) > t.reported.get(r, 0):
                t.reported[r] = len(tokens)
                try:
                    t.job.progress(r, list(tokens))
                except Exception:  # a streaming bug must not stop the loop; the job still gets its result
                    log.exception("continuous batching: a job's progress callback failed")

    def _hand_back(self, finished) -> None:
        from reclm_jax.serve.engine import Row

        for f in finished:
            t, r = f.tag
            if t.failed:
                continue
            t.rows[r] = Row(tokens=f.tokens, logprobs=f.logprobs, stopped=f.stopped)
            t.remaining -= 1
            if t.job.row_done is not None:
                try:
                    t.job.row_done(r, t.rows[r])
                except Exception:  # as a progress callback's: the job still gets its result
                    log.exception("continuous batching: a job's row_done callback failed")
            if t.remaining == 0:
                try:
                    result = t.job.finish(t.rows)
                except Exception as e:  # this job's response failed; the others still get theirs
                    result = e
                self.jobs_done += 1
                self.rows_done += t.job.size
                t.done(result)

    def _fail(self, t: _Ticket, e: Exception) -> None:
        if not t.failed:
            t.failed = True
            self._drop_waiting(t)
            if t.waiting:
                t.admitted()
            t.done(e)

    def _drop_waiting(self, t: _Ticket) -> None:
        rows = self._waiting.get(t.job.key)
        if rows:
            self._waiting[t.job.key] = collections.deque(x for x in rows if x[0] is not t)


class ContinuousQueue:
    """An app's door to the engine's scheduler: ``await submit(job)`` as ``MicroBatcher.submit``.

    ``queued``: this app's jobs not yet wholly admitted to slots; with ``others()`` (the app's other queue)
    at ``max_queue``, a job is refused with ``QueueFullError`` (503)."""

    def __init__(self, scheduler: ContinuousScheduler, max_queue: int, others: Callable[[], int] = lambda: 0):
        self.scheduler, self.max_queue, self.others = scheduler, max_queue, others
        self.queued = 0

    async def submit(self, job) -> Any:
        if self.queued + self.others() >= self.max_queue:
            raise QueueFullError(f"the request queue is full ({self.max_queue} requests)")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.queued += 1

        def admitted():  # on the decode thread
            _call(loop, self._admitted)

        def done(result):
            _call(loop, lambda: fut.done() or fut.set_result(result))

        ticket = self.scheduler.submit(job, done, admitted)
        try:
            result = await fut
        except asyncio.CancelledError:  # the caller left (a live stream's client disconnected): free its slots
            self.scheduler.cancel(ticket)
            raise
        if isinstance(result, Exception):
            raise result
        return result

    def _admitted(self) -> None:
        self.queued -= 1


def _call(loop, fn) -> None:
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the app's loop is closed: nobody waits for this any more
        pass
