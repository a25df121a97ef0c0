"""The teacher service's jobs and how one batch of them becomes few ``Teacher`` calls.

The queueing itself is the shared ``reclm_jax.service.batcher.MicroBatcher``; ``teacher_batcher`` builds one
that runs ``run_jobs`` on the teacher. Top-k and ranking jobs share a batch (no ``key``): ``run_jobs`` makes one
Teacher call per job kind.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from reclm_jax.service.batcher import MicroBatcher, QueueFullError  # noqa: F401  (QueueFullError: re-exported)
from reclm_jax.teacher.teacher import Teacher


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


def run_jobs(teacher: Teacher, jobs: Sequence[Job]) -> list[Any]:
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


def teacher_batcher(teacher: Teacher, max_batch: int = 1024, max_wait_s: float = 0.002,
                    max_queue: int = 4096) -> MicroBatcher:
    """A ``MicroBatcher`` whose batches of ``Job``s run on ``teacher`` (at most ``max_batch`` users a batch,
    except a single larger request)."""
    return MicroBatcher(functools.partial(run_jobs, teacher), max_batch, max_wait_s, max_queue,
                        thread_name="teacher")
