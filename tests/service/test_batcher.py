"""The shared micro-batcher on its own: batches hold one key, in arrival order, up to max_batch rows; an
immediate job does not wait; results and errors reach their own callers; a full queue refuses at once; a caller
that stops waiting withdraws its job."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from reclm_jax.service.batcher import MicroBatcher, QueueFullError


@dataclasses.dataclass
class J:
    name: str
    key: str = "a"
    size: int = 1
    immediately: bool = False


def run_with(batcher_kw, jobs_at, run):
    """Submits (delay_s, job) pairs; returns each job's result (or exception)."""
    async def go():
        b = MicroBatcher(run, **batcher_kw)
        b.start()

        async def one(delay, job):
            await asyncio.sleep(delay)
            try:
                return await b.submit(job)
            except Exception as e:
                return e

        out = await asyncio.gather(*(one(d, j) for d, j in jobs_at))
        await b.stop()
        return out, b

    return asyncio.run(go())


def test_batches_hold_one_key_in_arrival_order_up_to_max_batch():
    batches = []

    def run(jobs):
        batches.append([j.name for j in jobs])
        return [j.name.upper() for j in jobs]

    jobs = [(0.00, J("a1")), (0.01, J("b1", key="b")), (0.02, J("a2", size=2)), (0.03, J("a3")),
            (0.04, J("b2", key="b")), (0.05, J("a4"))]
    out, b = run_with(dict(max_batch=3, max_wait_s=0.3), jobs, run)
    assert out == ["A1", "B1", "A2", "A3", "B2", "A4"]
    # a1 waits for company until a2 (2 rows) fills it to 3; b1, older than a3, heads the next batch and takes b2
    assert batches == [["a1", "a2"], ["b1", "b2"], ["a3", "a4"]]
    assert b.stats() == {"queued": 0, "batches": 3, "requests": 6, "rows": 7, "cancelled_requests": 0,
                         "cancelled_rows": 0}


def test_an_immediate_job_does_not_wait_and_errors_reach_their_own_caller():
    batches = []

    def run(jobs):
        batches.append([j.name for j in jobs])
        if jobs[0].name == "boom":
            raise RuntimeError("decode failed")
        return [ValueError("bad row") if j.name == "bad" else j.name for j in jobs]

    jobs = [(0.0, J("fast", immediately=True)), (0.1, J("boom", key="x")), (0.3, J("bad")), (0.3, J("ok"))]
    out, _ = run_with(dict(max_batch=8, max_wait_s=0.1), jobs, run)
    assert batches[0] == ["fast"] and out[0] == "fast"
    assert isinstance(out[1], RuntimeError) and str(out[1]) == "decode failed"  # the whole batch of boom
    assert isinstance(out[2], ValueError) and out[3] == "ok"  # a job's own error; its neighbour is fine


def test_a_full_queue_refuses_at_once():
    gate = threading.Event()

    def run(jobs):
        gate.wait(10)
        return [j.name for j in jobs]

    async def go():
        b = MicroBatcher(run, max_batch=1, max_wait_s=0.0, max_queue=2)
        b.start()
        first = asyncio.create_task(b.submit(J("1")))
        await asyncio.sleep(0.05)  # "1" is running: the queue is empty again
        waiting = [asyncio.create_task(b.submit(J(str(i)))) for i in (2, 3)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError, match="full"):
            await b.submit(J("4"))
        gate.set()
        done = await asyncio.gather(first, *waiting)
        await b.stop()
        return done

    assert asyncio.run(go()) == ["1", "2", "3"]


@dataclasses.dataclass
class Cancellable(J):
    told: bool = False

    def cancel(self):
        self.told = True


def test_a_caller_that_stops_waiting_withdraws_its_job():
    """While "run" holds the batch of "1": "2" and "4" (another key), queued, are cancelled and never run, nor
    count as queued; "1" is cancelled in its batch and told (so a server can skip its rows
    not yet decoded); "3" and "5" still run, together and in order."""
    batches, entered, gate = [], threading.Event(), threading.Event()

    def run(jobs):
        batches.append([j.name for j in jobs])
        entered.set()
        gate.wait(10)
        return [j.name for j in jobs]

    async def go():
        b = MicroBatcher(run, max_batch=2, max_wait_s=0.0, max_queue=8)
        b.start()
        first = Cancellable("1", size=2)
        running = asyncio.create_task(b.submit(first))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        tasks = {n: asyncio.create_task(b.submit(J(n, key="b" if n == "4" else "a", size=s)))
                 for n, s in (("2", 2), ("3", 1), ("4", 1), ("5", 1))}
        await asyncio.sleep(0.05)
        assert b.queued == 4
        for t in (running, tasks["2"], tasks["4"]):
            t.cancel()
        await asyncio.sleep(0.05)
        assert b.queued == 2 and first.told
        gate.set()
        out = await asyncio.gather(tasks["3"], tasks["5"])
        stats = b.stats()
        await b.stop()
        return out, stats, [t.cancelled() for t in (running, tasks["2"], tasks["4"])]

    out, stats, cancelled = asyncio.run(go())
    assert out == ["3", "5"] and cancelled == [True, True, True]
    assert batches == [["1"], ["3", "5"]]
    assert stats["cancelled_requests"] == 3 and stats["cancelled_rows"] == 3  # "2" (2 rows) and "4" (1)
    assert stats["requests"] == 3 and stats["queued"] == 0
