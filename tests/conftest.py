"""Shared fixtures: tiny random HF Llama folders and a tiny synthetic raw dataset (all offline, no torch)."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from reclm_jax.testing.tiny_data import write_tiny_dataset
from reclm_jax.testing.tiny_model import build_tokenizer, write_tiny_llama
from reclm_jax.testing.tiny_teacher import train_tiny_teacher


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
