"""Stopping rows of a running decode from the host: a Sampler call's rows polled every few steps.

A Sampler call is one compiled program (the prefill and a ``while_loop`` to the last row's end), so nothing on
the host can reach into it once it has started. A server whose client disconnected wants that client's rows to
stop now, not when the longest row of its batch ends. ``cancelled_rows`` is a traced host callback that the
decode loop calls every ``POLL_STEPS`` steps: it asks the host function registered for the call (``registered``)
which rows to stop, and the loop marks them done. The call then ends as soon as every row is done.

Why a registry and an id: the program is compiled once and reused by every call, but each call has its own host
function, so the call's id is a traced operand and the callback looks the function up. Why every few steps: a
host callback costs a round trip (on CPU a few microseconds against a step's tens of milliseconds, but on a GPU
a synchronisation), so the loop asks only every ``POLL_STEPS`` steps.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

POLL_STEPS = 8  # decoding steps between two questions to the host

_LOCK = threading.Lock()
_POLLS: dict[int, tuple[Callable[[], Sequence[bool]], int]] = {}
_IDS = itertools.count()  # ids > 0; 0: a call with nothing registered


@contextlib.contextmanager
def registered(poll: Callable[[], Sequence[bool]], rows: int) -> Iterator[int]:
    """Registers ``poll`` (no arguments -> one bool per row of the call's ``rows`` rows: True = stop that row)
    for one call; yields the call's id (an int > 0) for ``cancelled_rows``, and forgets it on exit."""
    with _LOCK:
        call_id = next(_IDS) % (2**31 - 1) + 1  # an int32 operand in 1 .. 2**31 - 1
        _POLLS[call_id] = (poll, rows)
    try:
        yield call_id
    finally:
        with _LOCK:
            _POLLS.pop(call_id, None)


def _host_poll(call_id: np.ndarray, *, batch: int) -> np.ndarray:
    """bool [batch]: the rows to stop, per the call's registered function (padding rows and unknown ids: False).
    A function that raises stops nothing: a failing check must not fail the decode of every row beside it."""
    out = np.zeros(batch, np.bool_)
    with _LOCK:
        entry = _POLLS.get(int(call_id))
    if entry is None:
        return out
    poll, rows = entry
    try:
        flags = np.asarray(poll(), np.bool_).reshape(-1)[: min(rows, batch)]
    except Exception:  # noqa: BLE001 -- see the docstring
        return out
    out[: flags.size] = flags
    return out


def cancelled_rows(call_id: jax.Array, step: jax.Array, batch: int) -> jax.Array:
    """Traced: bool [batch], the rows the host asked to stop; asked only when ``step`` (int32 scalar) is a multiple
    of ``POLL_STEPS`` (all False in between). call_id: int32 scalar from ``registered``."""
    def ask():
        return io_callback(functools.partial(_host_poll, batch=batch), jax.ShapeDtypeStruct((batch,), jnp.bool_),
                           call_id, ordered=False)

    return jax.lax.cond(step % POLL_STEPS == 0, ask, lambda: jnp.zeros((batch,), jnp.bool_))
