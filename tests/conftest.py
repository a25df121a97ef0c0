"""Shared fixtures: tiny random HF Llama folders and a tiny synthetic raw dataset (all offline, no torch)."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from reclm_jax.assets import cache_dir  # noqa: E402
from reclm_jax.compile_cache import ENV as COMPILE_CACHE_ENV, enable_compilation_cache  # noqa: E402

# A second local run of the suite loads the tiny models' compiled programs instead of compiling them again.
# Their own folder (not the stages' one) so that hundreds of test programs never crowd a user's real entries and
# can be deleted on their own; set in os.environ so that the stages the tests start as subprocesses share it.
# Entries are keyed by the program itself, so a test never sees another test's or an older code version's
# executable (only an identical program), and a cold cache (CI) only misses.
os.environ.setdefault(COMPILE_CACHE_ENV, str(cache_dir() / "jax_compilation_cache_tests"))
enable_compilation_cache()  # before any import below can compile

import pytest  # noqa: E402

from reclm_jax.testing.tiny_data import write_tiny_dataset  # noqa: E402
from reclm_jax.testing.tiny_model import build_tokenizer, write_tiny_llama  # noqa: E402
from reclm_jax.testing.tiny_teacher import train_tiny_teacher  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer folder with a ChatML chat template."""
    return build_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_llama_factory(tmp_path_factory, tiny_tokenizer_dir):
    """``make(variant="smollm2", seed=0, num_layers=2, shards=1) -> Path``; folders are cached per argument set."""
    cache = {}

    def make(variant: str = "smollm2", seed: int = 0, num_layers: int = 2, shards: int = 1):
        key = (variant, seed, num_layers, shards)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny_{variant}_s{seed}_l{num_layers}_x{shards}")
            cache[key] = write_tiny_llama(out, variant=variant, seed=seed, num_layers=num_layers,
                                          shards=shards, tokenizer_dir=tiny_tokenizer_dir)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama_factory):
    """The default tiny model: SmolLM2-shaped (tied embeddings, GQA), 2 layers, head_dim 32."""
    return tiny_llama_factory("smollm2")


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory):
    """The tiny synthetic dataset (40 users, 60 items, 4 genres) as raw pickles; treat as read-only."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"), seed=0)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tiny_dataset_dir, tmp_path_factory):
    """A small SASRec trained on the tiny dataset (seconds); a teacher run folder."""
    return train_tiny_teacher(tiny_dataset_dir, tmp_path_factory.mktemp("tiny_teacher"), seed=0)


@pytest.fixture(scope="session")
def teacher(tiny_teacher_dir):
    """The in-process ``Teacher`` of ``tiny_teacher_dir``."""
    from reclm_jax.teacher.teacher import Teacher

    return Teacher.from_checkpoint(tiny_teacher_dir)
