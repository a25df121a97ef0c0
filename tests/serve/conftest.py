"""Serve fixtures: one engine over the tiny SmolLM2-shaped model (ChatML template) and one live server on a
loopback port, shared by every test here so the decode programs compile once."""

from __future__ import annotations

import pytest

MODEL = "tiny"


@pytest.fixture(scope="session")
def engine(tiny_llama_dir):
    from reclm_jax.serve.engine import load_engine

    # max_batch 4: batch buckets 1, 2, 4 keep the number of programs the tests compile small.
    return load_engine(tiny_llama_dir, max_batch=4)


@pytest.fixture(scope="session")
def serve_config():
    """``make(**fields) -> ServeConfig`` for the tiny model: max_batch 4, 5 ms waits unless given."""
    from reclm_jax.serve.config import ServeConfig

    def make(**kw):
        return ServeConfig(**{"served_model_name": MODEL, "max_batch": 4, "max_wait_ms": 5.0, **kw})

    return make


@pytest.fixture(scope="session")
def server(engine, serve_config):
    """A live server on a free loopback port (uvicorn on a thread, a real socket)."""
    from reclm_jax.serve.app import create_app
    from reclm_jax.service.server import BackgroundServer

    with BackgroundServer(create_app(engine, serve_config())) as s:
        yield s


@pytest.fixture(scope="session")
def model(tiny_llama_dir):
    """The same weights loaded on the test's side, for generate() references."""
    from reclm_jax.models.hf_loading import load_llama

    return load_llama(tiny_llama_dir, progress=False)


class StepHold:
    """Holds the ``at``-th ``SlotDecoder.step`` call (1-based, counted from its making) until ``released`` is
    set, or fails it with "device lost"; ``reached`` is set when that call comes."""

    def __init__(self, monkeypatch, at: int = 1, fail: bool = False):
        import threading

        from reclm_jax.models.slot_decoder import SlotDecoder

        self.calls, self.at, self.fail = 0, at, fail
        self.reached, self.released = threading.Event(), threading.Event()
        real, hold = SlotDecoder.step, self

        def step(dec, waiting=False):
            hold.calls += 1
            if hold.calls == hold.at:
                hold.reached.set()
                if hold.fail:
                    raise RuntimeError("device lost")
                hold.released.wait(120)
            return real(dec, waiting)

        monkeypatch.setattr(SlotDecoder, "step", step)


@pytest.fixture
def step_hold(monkeypatch):
    """``make(at=1, fail=False) -> StepHold`` (undone with the test's ``monkeypatch``)."""
    return lambda at=1, fail=False: StepHold(monkeypatch, at, fail)


def _client_leaves(url: str, body: dict, read_s: float) -> tuple[dict, dict]:
    """POSTs ``body`` to ``url``'s /v1/completions as a client that gives up after ``read_s`` s without an answer,
    then waits until /health counts a cancelled row; returns (/health before, /health then)."""
    import time

    import httpx

    def health():
        return httpx.get(url + "/health", timeout=60).json()

    before = health()
    try:
        httpx.post(url + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=read_s))
        raise AssertionError("the answer came before the client gave up: the test needs a slower decode")
    except httpx.ReadTimeout:
        pass
    deadline = time.monotonic() + 60
    while (now := health())["cancelled_rows"] == before["cancelled_rows"]:
        assert time.monotonic() < deadline, "the row of the client that left was never cancelled"
        time.sleep(0.05)
    return before, now


@pytest.fixture(scope="session")
def client_leaves():
    """``leave(url, body, read_s) -> (health before, health after)``: a client that gives up (``_client_leaves``)."""
    return _client_leaves
