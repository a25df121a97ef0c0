"""Run logging for every trainer: JSON lines (one record per event, appended and flushed), TensorBoard scalars and
the tqdm progress bar. Only the primary process writes or draws; on the others every method is a no-op, so a
trainer calls them unconditionally.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class RunLog:
    def __init__(self, out_dir: str | Path, *, primary: bool = True, tensorboard: bool = True,
                 progress: bool = True):
        self.primary = primary
        self.progress = progress and primary
        self._jsonl = None
        self._tb = None
        if not primary:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(out / "log.jsonl", "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One record ``{"time", "kind", "step", **values}``; numeric values also go to TensorBoard as
        ``kind/name``."""
        if self._jsonl is None:
            return
        record = {"time": round(time.time(), 3), "kind": kind, "step": step, **values}
        self._jsonl.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def bar(self, total: int, initial: int = 0, desc: str = "", unit: str = "step") -> tqdm:
        """A progress bar, shown on the primary process only (and not when progress is off)."""
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not self.progress)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Throughput:
    """Tokens per second of the steps themselves, over a window that restarts at every report: the first window
    (which includes compilation) is not reported, and ``restart()`` after a checkpoint or a validation keeps
    their time out of the next figure.

    ``add(tokens)`` after each step, with a host number or a device scalar (read only at report time, so
    adding does not wait for the step); ``rate()`` once the caller has synchronised with the device (e.g. read
    the loss).
    """

    def __init__(self):
        self._start = time.perf_counter()
        self._pending: list = []
        self._warm = False

    def add(self, tokens) -> None:
        self._pending.append(tokens)

    def restart(self) -> None:
        """Begins a new window now (the steps added so far are dropped from the figure)."""
        self._start, self._pending = time.perf_counter(), []

    def rate(self) -> float | None:
        """Tokens/s since the window began, then a new window; None for the compile-bearing first window or
        a window without steps."""
        now = time.perf_counter()
        rate = None
        if self._warm and self._pending:
            rate = sum(float(t) for t in self._pending) / max(now - self._start, 1e-9)
        self._start, self._pending, self._warm = now, [], True
        return rate
