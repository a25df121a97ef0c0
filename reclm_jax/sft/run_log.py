"""Run logging: JSON lines (one record per event, appended and flushed) plus TensorBoard scalars."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class RunLog:
    def __init__(self, out_dir: str | Path, tensorboard: bool = True):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(out / "log.jsonl", "a", buffering=1)
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), "kind": kind, "step": step, **values}
        self._jsonl.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
