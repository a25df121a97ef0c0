"""What the task layer needs from a teacher, so it never depends on a concrete class.

The in-process ``reclm_jax.teacher.teacher.Teacher`` and the HTTP ``reclm_jax.teacher.client.TeacherClient``
both implement it with the same signatures and results; ``reclm_jax.teacher.connect.connect_teacher`` returns
either.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class TeacherLike(Protocol):
    def topk(self, histories: Sequence[Sequence[str]], k: int,
             target_categories: Sequence[str | None] | None = None,
             candidates: Sequence[Sequence[str] | None] | None = None,
             users: Sequence[str] | None = None) -> list[list[str]]:
        """The k best item ids per history (history excluded): ``"+C"`` / ``"-C"`` restrict a row to items in /
        outside category C, ``candidates`` to those items; ``users`` (optional) are checked, not used."""
        ...

    def ranking(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
                users: Sequence[str] | None = None) -> list[list[int]]:
        """The 0-based rank of each candidate among all catalogue items, per history."""
        ...
