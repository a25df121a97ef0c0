"""A small fake OpenAI-compatible server on loopback (``/v1/models``, ``/v1/completions``) whose answers the test
chooses per prompt: texts, garbage bodies, bad JSON, HTTP errors or hangs."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest


class FakeOpenAI:
    """``answer(prompt, attempt) -> reply``; a reply is ``("text", str)``, ``("status", code)``, ``("raw",
    bytes)`` (a 200 with that body), ``("json", obj)`` or ``("hang", seconds)`` (no answer for that long, or until the server stops: a
    hang outlives any client timeout however slow the machine). ``prompts`` lists every
    completion request's prompt in arrival order (retries included)."""

    def __init__(self, answer: Callable, model: str = "fake", delay: float = 0.0):
        self.answer, self.model, self.delay = answer, model, delay
        self.prompts: list[str] = []
        self.payloads: list[dict] = []
        self.attempts: Counter = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": fake.model}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/completions":
                    return self._send(404, b'{"error": "not found"}')
                payload = json.loads(body)
                prompt = payload["prompt"]
                with fake._lock:
                    attempt = fake.attempts[prompt]
                    fake.attempts[prompt] += 1
                    fake.prompts.append(prompt)
                    fake.payloads.append(payload)
                if fake.delay:
                    time.sleep(fake.delay)
                kind, value = fake.answer(prompt, attempt)
                if kind == "text":
                    obj = {"id": "cmpl-1", "object": "text_completion", "model": fake.model,
                           "choices": [{"index": 0, "text": value, "finish_reason": "stop"}]}
                    self._send(200, json.dumps(obj).encode())
                elif kind == "json":
                    self._send(200, json.dumps(value).encode())
                elif kind == "raw":
                    self._send(200, value, "text/plain")
                elif kind == "status":
                    self._send(value, b'{"error": "boom"}')
                elif kind == "hang":
                    fake._stopping.wait(value)
                    self._send(200, b"{}")
                else:
                    raise ValueError(kind)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake_openai():
    """``fake_openai(answer, **kw)`` -> a started ``FakeOpenAI`` (stopped after the test)."""
    servers = []

    def make(answer, **kw) -> FakeOpenAI:
        server = FakeOpenAI(answer, **kw).__enter__()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.__exit__()


@pytest.fixture(scope="session")
def tiny_eval_ctx(tiny_dataset_dir):
    """The task context of the tiny dataset with the ``title`` index and llama-2 prompts (as the client's
    ``--item_index title --chat_template llama-2``)."""
    from reclm_jax.data.task_setup import build_task_context
    from reclm_jax.data.tasks import TaskSettings

    ctx, _ = build_task_context(tiny_dataset_dir, "title", None, "llama-2", TaskSettings())
    return ctx
