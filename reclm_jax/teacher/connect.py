"""One way to reach a teacher from any stage: in-process from a checkpoint, or the HTTP service.

    teacher = connect_teacher(checkpoint="runs/teacher_ml1m", dataset=raw)      # in-process Teacher
    teacher = connect_teacher(port=12621, hosts="10.0.0.2,10.0.0.3")           # TeacherClient
    teacher = connect_teacher()                                                # None: no teacher configured

Both answer the same ``topk`` / ``ranking`` calls with the same results (the task layer types them as one
protocol, ``TeacherLike``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from reclm_jax.errors import UserError

if TYPE_CHECKING:  # the Teacher pulls in JAX; a client-only process never needs it
    from reclm_jax.datasets.raw import RawDataset
    from reclm_jax.teacher.client import TeacherClient
    from reclm_jax.teacher.teacher import Teacher

KEYS = ("checkpoint", "port", "hosts")
DEFAULT_PORT = 12621  # the original's --teacher_port, and `python -m reclm_jax.teacher.serve`'s


def split_hosts(hosts: str | Sequence[str]) -> list[str]:
    """``"a, b:8000"`` or ``["a", "b:8000"]`` -> ``["a", "b:8000"]`` (blank entries dropped, order kept)."""
    parts = hosts.split(",") if isinstance(hosts, str) else list(hosts)
    return [h.strip() for h in parts if isinstance(h, str) and h.strip()]


def connect_teacher(checkpoint: str | Path = "", port: int = 0, hosts: str | Sequence[str] = "127.0.0.1",
                    data_path: str | Path | None = None, dataset: RawDataset | None = None,
                    keys: tuple[str, str, str] = KEYS) -> Teacher | TeacherClient | None:
    """The in-process ``Teacher`` of ``checkpoint``, else a ``TeacherClient`` of the service on ``port`` at
    ``hosts`` (primary first; comma-separated string or list), else None when neither is given.

    ``dataset`` (an already loaded ``RawDataset``) spares the in-process teacher a second read of the pickles;
    without it the teacher reads ``data_path`` or the dataset its run was trained on. ``keys`` are the names
    of (checkpoint, port, hosts) in the caller's config or CLI, for the ``UserError`` raised when both a
    checkpoint and a port are given, the port is out of range or ``hosts`` names no host.
    """
    k_ckpt, k_port, k_hosts = keys
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"{k_port} must be a TCP port (1-65535, or 0 for none), got {port!r}")
    if checkpoint and port:
        raise UserError(f"give {k_ckpt} (in-process teacher) or {k_port} (HTTP service), not both")
    if checkpoint:
        from reclm_jax.teacher.teacher import Teacher

        return Teacher.from_checkpoint(checkpoint, data_path, dataset=dataset)
    if not port:
        return None
    host_list = split_hosts(hosts)
    if not host_list:
        raise UserError(f"{k_hosts} names no host; give at least one (comma-separated, primary first)")
    from reclm_jax.teacher.client import TeacherClient

    return TeacherClient(port=port, hosts=host_list)
