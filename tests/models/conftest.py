"""Model-test fixtures shared across modules here."""

import pytest

from reclm_jax.models.hf_loading import load_llama


@pytest.fixture(scope="module")
def model(tiny_llama_factory):
    """The tiny random llama3-style model (f32), loaded once per test module (modules may override it)."""
    return load_llama(tiny_llama_factory("llama3"), progress=False)
