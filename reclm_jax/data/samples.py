"""Builds samples in batches: per-sample randomness first, then one teacher ``topk`` call per round.

Each sample's builder generator runs until it asks for teacher lists; the queries of every sample in the batch
are sent as one ``teacher.topk`` call (k = the largest request, answers cut per row: a top-k list is a prefix
of any longer one), and the answers are sent back. A builder that needs a second round (SFT '-C' control:
the category comes from a first top-k) gets it in the next call. Samples depend only on (seed, epoch, index),
never on the batch they were built in.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from tqdm import tqdm

from reclm_jax.data.sampling import sample_rng
from reclm_jax.data.tasks import Datum, TaskContext, TopK, builder_for, datum_list
from reclm_jax.data.teacher_protocol import TeacherLike


def answer_queries(teacher: TeacherLike | None, queries: Sequence[TopK]) -> list[list[str]]:
    """One ``teacher.topk`` call for all ``queries``; each answer has ``exclude`` removed and is cut to its k."""
    answers: list[list[str]] = [[] for _ in queries]
    live = [j for j, q in enumerate(queries) if q.k > 0]
    if not live:
        return answers
    if teacher is None:
        raise RuntimeError("these tasks need teacher labels, but no teacher was given")
    k = max(queries[j].k + len(queries[j].exclude) for j in live)
    cats = [queries[j].category for j in live]
    lists = teacher.topk([list(queries[j].history) for j in live], k,
                         target_categories=cats if any(c is not None for c in cats) else None)
    for j, row in zip(live, lists):
        q = queries[j]
        if q.exclude:
            row = [i for i in row if i not in q.exclude]
        answers[j] = list(row[:q.k])
    return answers


class SampleBuilder:
    """All samples of a task list in one mode; ``build(indices, epoch)`` makes any subset, in any order."""

    def __init__(self, ctx: TaskContext, tasks: Sequence[str], mode: str, teacher: TeacherLike | None = None,
                 seed: int = 0):
        self.ctx = ctx
        self.tasks = list(tasks)
        self.mode = mode
        self.teacher = teacher
        self.seed = seed
        self.datums: list[Datum] = datum_list(ctx, tasks, mode)
        self._builders = {t: builder_for(t, mode) for t in dict.fromkeys(d.task for d in self.datums)}
        self.teacher_calls = 0

    def __len__(self) -> int:
        return len(self.datums)

    def build(self, indices: Sequence[int], epoch: int = 0) -> list[dict]:
        """The samples at ``indices`` (positions in ``datums``) for ``epoch``; one teacher call per round."""
        results: list[Any] = [None] * len(indices)
        pending: dict[int, tuple[Any, list[TopK]]] = {}

        def advance(pos: int, gen: Any, answer: Any) -> None:
            try:
                queries = gen.send(answer)
            except StopIteration as stop:
                results[pos] = stop.value
                return
            pending[pos] = (gen, queries)

        for pos, i in enumerate(indices):
            d = self.datums[i]
            gen = self._builders[d.task](self.ctx, d, sample_rng(self.seed, epoch, i))
            advance(pos, gen, None)
        while pending:
            batch = list(pending.items())
            pending.clear()
            flat = [q for _, (_, qs) in batch for q in qs]
            answers = answer_queries(self.teacher, flat)
            self.teacher_calls += 1
            at = 0
            for pos, (gen, qs) in batch:
                advance(pos, gen, answers[at:at + len(qs)])
                at += len(qs)
        return results

    def iter_epoch(self, epoch: int = 0, chunk: int = 1024, progress: bool = False,
                   desc: str | None = None) -> Iterator[dict]:
        """Every sample of ``epoch`` in datum order, built ``chunk`` at a time."""
        n = len(self.datums)
        bar = tqdm(total=n, desc=desc or f"{self.mode} epoch {epoch}", disable=not progress, unit="sample")
        try:
            for start in range(0, n, chunk):
                batch = self.build(range(start, min(n, start + chunk)), epoch)
                bar.update(len(batch))
                yield from batch
        finally:
            bar.close()

    def epoch(self, epoch: int = 0, chunk: int = 1024, progress: bool = False) -> list[dict]:
        return list(self.iter_epoch(epoch, chunk, progress))
