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
