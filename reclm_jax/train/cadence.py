"""When a training loop logs, saves, validates and stops, and the hooks tests use to interrupt it.

``Cadence`` answers "is it time?" for a step number; ``Hooks`` holds callables run after each step, so a
test can pause or fail a run at a known step without the library reading test-only environment variables.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Every-N rules over 1-based optimiser steps; 0 (or less) switches a rule off."""

    log_every: int = 10
    save_every: int = 100
    val_every: int = 0

    def log(self, step: int) -> bool:
        """Log the first step (its loss shows the start) and every ``log_every``-th."""
        return step == 1 or _every(step, self.log_every)

    def save(self, step: int) -> bool:
        return _every(step, self.save_every)

    def validate(self, step: int) -> bool:
        return _every(step, self.val_every)


def _every(step: int, n: int) -> bool:
    return n > 0 and step % n == 0


class Budget:
    """The wall-clock budget of a run, started when the loop starts (loading and the "before" validation are
    not counted)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.time()

    def exhausted(self) -> bool:
        return self.seconds > 0 and time.time() - self.start > self.seconds


@dataclasses.dataclass
class Hooks:
    """Callables a loop runs at fixed points. ``after_step(step)`` runs after the step's checkpoint (if any)
    was written: fault-injection tests pause or kill the process there."""

    after_step: list[Callable[[int], None]] = dataclasses.field(default_factory=list)

    def run_after_step(self, step: int) -> None:
        for fn in self.after_step:
            fn(step)


def pause_at(step: int, seconds: float = 3600.0) -> Callable[[int], None]:
    """An ``after_step`` hook that sleeps at ``step`` (so a test can kill the run at a known point)."""

    def hook(s: int) -> None:
        if s == step:
            time.sleep(seconds)

    return hook
