"""``python -m reclm_jax.serve`` as a user starts it (a subprocess on a real port), its argument errors, and
LoRA adapters applied on top of the backbone or merged at load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jax
import pytest

from reclm_jax.models.adapter_io import save_adapter
from reclm_jax.models.generation import generate
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.lora import LoraConfig, adapter_modules, add_lora
from reclm_jax.service.server import free_port

REPO = Path(__file__).resolve().parents[2]


def serve_cmd(*args):
    return [sys.executable, "-m", "reclm_jax.serve", *map(str, args)]


def test_the_command_serves_on_its_port(tiny_llama_dir, server):
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(serve_cmd("--model", tiny_llama_dir, "--port", port, "--served-model-name", "tiny",
                                      "--max-batch", 4), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                health = httpx.get(url + "/health", timeout=2).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.time() < deadline, "the server did not come up"
                time.sleep(0.3)
        assert health["model"] == "tiny" and health["max_batch"] == 4 and health["batching"] == "continuous"
        body = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}
        r = httpx.post(url + "/v1/completions", json=body, timeout=600)
        assert r.status_code == 200
        assert r.json()["choices"] == httpx.post(server.url + "/v1/completions", json=body,
                                                 timeout=600).json()["choices"]
        # the port is taken now: a second server stops before loading anything
        res = subprocess.run(serve_cmd("--model", tiny_llama_dir, "--port", port), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 2 and res.stderr.startswith("error: --port") and str(port) in res.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("args, needle", [
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
    (["--model", "{model}", "--adapter", "{model}"], "lora_adapter.json"),
    (["--model", "{model}", "--merge-adapter"], "--merge-adapter needs --adapter"),
    (["--model", "{model}", "--max-batch", "0"], "--max-batch"),
    (["--model", "{model}", "--port", "70000"], "--port"),
    (["--model", "{model}", "--decode-chunk", "0"], "--decode-chunk"),
], ids=["no-model", "not-an-adapter", "merge-without-adapter", "max-batch", "port-range", "decode-chunk"])
def test_argument_errors_are_user_errors_naming_the_flag(tiny_llama_dir, args, needle):
    from reclm_jax.errors import UserError
    from reclm_jax.serve.__main__ import main
    from reclm_jax.service.server import free_port

    args = [a.replace("{model}", str(tiny_llama_dir)) for a in args]
    if "--port" not in args:  # the default port may be taken on this machine (a real server): not the subject here
        args += ["--port", str(free_port())]
    with pytest.raises(UserError, match=needle.replace("-", "\\-")):
        main(args)


def test_a_user_error_exits_2_with_one_line(tmp_path):
    res = subprocess.run(serve_cmd("--model", tmp_path / "missing"), cwd=REPO, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)})
    assert res.returncode == 2 and res.stderr.startswith("error: --model") and "missing" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama_dir, tmp_path_factory):
    """A LoRA adapter that changes the answers (random B), saved as SFT saves ``adapter/``."""
    model = load_llama(tiny_llama_dir, progress=False)
    add_lora(model, LoraConfig(rank=4, alpha=8), "default")
    for i, lin in enumerate(adapter_modules(model, "default").values()):
        b = lin.lora["default"]["b"]
        b.set_value(jax.random.normal(jax.random.key(i), b[...].shape) * 0.3)
    return save_adapter(tmp_path_factory.mktemp("run") / "adapter", model, "default")


@pytest.mark.parametrize("merge", [False, True], ids=["on-top", "merged"])
def test_an_adapter_is_served_on_top_or_merged(tiny_llama_dir, adapter_dir, engine, serve_config, merge):
    from reclm_jax.models.adapter_io import load_adapter
    from reclm_jax.serve.app import create_app
    from reclm_jax.serve.engine import load_engine
    from reclm_jax.service.server import BackgroundServer

    served = load_engine(tiny_llama_dir, adapter=adapter_dir, merge_adapter=merge, max_batch=4)
    assert served.adapter == (None if merge else "default")
    ref = load_llama(tiny_llama_dir, progress=False)
    name = load_adapter(adapter_dir, ref)
    tok = engine.tokenizer
    ids = tok("The quick brown fox")["input_ids"]
    want = generate(ref, [ids], max_new_tokens=8, pad_id=engine.pad_id, stop_ids=engine.stop_ids, adapter=name)
    base = generate(ref, [ids], max_new_tokens=8, pad_id=engine.pad_id, stop_ids=engine.stop_ids)
    assert want.token_lists() != base.token_lists()  # the adapter matters for this prompt
    with BackgroundServer(create_app(served, serve_config())) as s:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": ids, "max_tokens": 8, "temperature": 0,
                                                        "return_token_ids": True}, timeout=600)
    assert r.json()["choices"][0]["token_ids"] == want.token_lists()[0]


def test_a_run_folder_as_adapter_names_the_adapter_inside(tiny_llama_dir, adapter_dir):
    from reclm_jax.errors import UserError
    from reclm_jax.serve.engine import load_engine

    with pytest.raises(UserError, match=f"use --adapter {adapter_dir}"):
        load_engine(tiny_llama_dir, adapter=adapter_dir.parent)
