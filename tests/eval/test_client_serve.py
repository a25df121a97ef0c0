"""The evaluation client against the real ``reclm_jax.serve`` on loopback with a tiny random model: the seven
tasks answered without a failure, each answer the model's greedy continuation of the prompt (generate()), a
complete run folder, and a second run answered entirely from the cache."""

from __future__ import annotations

import json

import pytest

from reclm_jax.data.task_setup import build_task_context
from reclm_jax.data.tasks import TaskSettings
from reclm_jax.eval import run_dir as rd
from reclm_jax.eval.test_samples import TEST_TASKS
from reclm_jax.models.generation import generate
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.special_tokens import resolve_stop_ids
from reclm_jax.models.tokenizer import load_tokenizer, pad_token_id
from reclm_jax.testing.eval_servers import reclm_server, run_client

USERS = 3
MAX_TOKENS = 24
CONCURRENCY = 2  # batched decodes without compiling every batch size (a cold CI compiles them all)


@pytest.fixture(scope="module")
def model_dir(tiny_llama_factory):
    # The untied llama3 shape: the tied SmolLM2-shaped random model answers these prompts with newlines only.
    return tiny_llama_factory("llama3")


@pytest.fixture(scope="module")
def ctx(tiny_dataset_dir, model_dir):
    """The test samples as the client builds them for this model: its tokenizer's (ChatML) template."""
    return build_task_context(tiny_dataset_dir, "title", load_tokenizer(model_dir), "hf", TaskSettings())[0]


def test_client_against_reclm_serve_answers_every_task_greedily_and_caches(tmp_path, ctx, model_dir):
    run = tmp_path / "run"
    with reclm_server(model_dir) as url:
        scores, asked = run_client(ctx, url, "tiny", run, TEST_TASKS, USERS, MAX_TOKENS, CONCURRENCY)
        again, asked_again = run_client(ctx, url, "tiny", run, TEST_TASKS, USERS, MAX_TOKENS, CONCURRENCY)
    counts = scores["counts"]
    assert list(counts) == list(TEST_TASKS)
    assert all(c["failed"] == 0 and c["skipped_original"] == 0 for c in counts.values()), counts
    assert counts["SFTTestSeqRec"]["samples"] == USERS and counts["SFTTestItemCount"]["samples"] == USERS
    # tasks 2-6: every user whose SeqRec was answered (all of them) gets a sample
    assert all(c["samples"] == USERS for c in counts.values())
    assert asked == USERS * len(TEST_TASKS)
    # the second run asks nothing and scores the same answers the same way
    assert asked_again == 0 and again == scores

    loaded = rd.load_run(run)
    assert loaded.complete and loaded.tasks == list(TEST_TASKS)
    assert loaded.scores == json.loads(json.dumps(scores))
    rows = {t: loaded.outputs(t) for t in TEST_TASKS}
    assert all([r["index"] for r in rows[t]] == list(range(USERS)) for t in TEST_TASKS)
    texts = [r["output_text"] for t in TEST_TASKS for r in rows[t]]
    assert all(isinstance(x, str) for x in texts) and any(x.strip() for x in texts)
    assert len(set(texts)) > 1  # the prompts differ, so do a random model's continuations

    # Answers are the model's greedy continuations: generate() on the same prompts, as the server tokenizes them.
    tok = load_tokenizer(model_dir)
    model = load_llama(model_dir, progress=False)
    picked = [rows["SFTTestSeqRec"][0], rows["SFT-TestPersonalControlRec"][1], rows["SFTTestItemCount"][2]]
    for row in picked:
        ids = tok(row["input_text"], add_special_tokens=not row["input_text"].startswith(tok.bos_token))
        want = generate(model, [ids["input_ids"]], max_new_tokens=MAX_TOKENS, pad_id=pad_token_id(tok),
                        stop_ids=resolve_stop_ids(tok, model_dir)).token_lists()[0]
        assert row["output_text"] == tok.decode(want, skip_special_tokens=True), row["task"]
