"""Fixtures for the data tests: the tiny dataset with its item index, a tiny trained SASRec teacher (in-process
and over HTTP), and a tiny ShareGPT file."""

from __future__ import annotations

import json

import pytest

from reclm_jax.data.chat import ChatFormat
from reclm_jax.data.item_index import load_dataset
from reclm_jax.data.tasks import TaskContext, TaskSettings


@pytest.fixture(scope="session")
def tiny_raw(tiny_dataset_dir):
    return load_dataset(tiny_dataset_dir, "title")


@pytest.fixture(scope="session")
def teacher_service(teacher):
    from reclm_jax.service.server import BackgroundServer
    from reclm_jax.teacher.serve import ServeConfig, create_app

    with BackgroundServer(create_app(teacher, ServeConfig(max_batch=256, max_wait_ms=2.0))) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from reclm_jax.models.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def share_gpt_file(tmp_path_factory):
    convs = [
        {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello! How can I help?"},
                           {"from": "human", "value": "Name a film."}, {"from": "gpt", "value": "Heat (1995)."}]},
        {"conversations": [{"from": "system", "value": "ignored"}, {"from": "human", "value": "2+2?"},
                           {"from": "gpt", "value": "4"}]},
        {"conversations": [{"from": "gpt", "value": "only an answer"}]},
    ]
    p = tmp_path_factory.mktemp("sharegpt") / "share.json"
    p.write_text(json.dumps(convs))
    return p


@pytest.fixture(scope="session")
def make_ctx(tiny_raw):
    """``make(chat="llama-2", tokenizer=None, share_chat=None, eos="</s>", **settings) -> TaskContext``."""
    raw, index = tiny_raw

    def make(chat: str = "llama-2", tokenizer=None, share_chat=None, eos: str = "</s>", seqrec_results=None,
             **settings):
        settings.setdefault("idx", True)
        settings.setdefault("val_num_per_task", 5)
        return TaskContext(raw, index, TaskSettings(**settings), ChatFormat(chat, tokenizer), eos,
                           share_chat=share_chat, seqrec_results=seqrec_results)

    return make
