"""Static batching (``batching="static"``): concurrent requests that can compile together share one decode call
and each gets what it gets alone; other sampling settings form their own batch; a full queue is 503; a failed
decode fails only its batch; a client that leaves withdraws its rows not yet decoded. The apps here share the
session's engine (and its compiled programs) with their own batcher settings. Continuous batching:
test_continuous.py."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from reclm_jax.serve.app import create_app
from reclm_jax.service.server import BackgroundServer

PROMPTS = ["The quick brown fox", "Recommend a movie like 'Heat (1995)'", "1. Fargo (1996)\n 2.", "Sure! What"]


class Wrapped:
    """The real engine with its batch runner wrapped (held at a gate, or failing once); all else delegated."""

    def __init__(self, engine, before=None):
        self._engine, self._before = engine, before

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run_batch(self, jobs):
        if self._before is not None:
            self._before(jobs)
        return self._engine.run_batch(jobs)


async def _gather(url, bodies, path="/v1/completions"):
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def test_concurrent_requests_share_one_decode_and_each_gets_its_own_answer(server, engine, serve_config):
    greedy = [{"prompt": p, "max_tokens": 6 + 2 * i, "temperature": 0} for i, p in enumerate(PROMPTS)]
    sampled = {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 1.0, "seed": 7}
    alone = [httpx.post(server.url + "/v1/completions", json=b, timeout=600).json() for b in greedy + [sampled]]
    # Long waits, 4 rows per batch: the four greedy requests fill one batch; the sampled one (another program)
    # waits for company of its own kind and runs in a second decode call.
    with BackgroundServer(create_app(engine, serve_config(max_batch=4, max_wait_ms=3000, batching="static"))) as s:
        calls = engine.decode_calls
        together = asyncio.run(_gather(s.url, greedy + [sampled]))
        assert engine.decode_calls - calls == 2
        health = httpx.get(s.url + "/health").json()
        assert health["batches"] == 2 and health["requests"] == 5 and health["rows"] == 5
    for a, t in zip(alone, together):
        assert t.status_code == 200
        assert [c["text"] for c in t.json()["choices"]] == [c["text"] for c in a["choices"]]
        assert t.json()["usage"] == a["usage"]


def test_n_rows_of_one_request_and_several_prompts_fill_one_batch(engine, serve_config):
    with BackgroundServer(create_app(engine, serve_config(batching="static"))) as server:
        _n_rows(server, engine)


def _n_rows(server, engine):
    calls = engine.decode_calls
    r = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPTS[:2], "n": 2, "max_tokens": 5,
                                                         "temperature": 1.0, "seed": 1}, timeout=600)
    assert r.status_code == 200 and len(r.json()["choices"]) == 4 and engine.decode_calls - calls == 1
    # more rows than max_batch (4) are decoded max_batch at a time
    calls = engine.decode_calls
    r = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPTS[:3], "n": 2, "max_tokens": 5,
                                                         "temperature": 1.0, "seed": 1}, timeout=600)
    assert r.status_code == 200 and len(r.json()["choices"]) == 6 and engine.decode_calls - calls == 2
    first = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPTS[:2], "n": 2, "max_tokens": 5,
                                                             "temperature": 1.0, "seed": 1}, timeout=600)
    assert [c["text"] for c in r.json()["choices"][:4]] == [c["text"] for c in first.json()["choices"]]


def test_a_full_queue_gets_503_and_the_server_recovers(engine, serve_config):
    gate, entered = threading.Event(), threading.Event()

    def hold(jobs):
        entered.set()
        gate.wait(60)

    app = create_app(Wrapped(engine, before=hold), serve_config(max_queue=1, max_batch=1, batching="static"))
    body = {"prompt": "hi", "max_tokens": 2, "temperature": 0}
    with BackgroundServer(app) as s:
        async def wait_for(cond, what):
            for _ in range(600):
                if cond():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"timed out waiting for {what}")

        async def go():
            async with httpx.AsyncClient(base_url=s.url, timeout=600) as client:
                running = asyncio.create_task(client.post("/v1/completions", json=body))
                await wait_for(entered.is_set, "the first request to start decoding")
                queued = asyncio.create_task(client.post("/v1/completions", json=body))
                await wait_for(lambda: httpx.get(s.url + "/health").json()["queued"] == 1, "a queued request")
                refused = await client.post("/v1/completions", json=body)  # the queue holds max_queue = 1
                gate.set()
                return refused, await running, await queued

        refused, running, queued = asyncio.run(go())
        assert refused.status_code == 503 and running.status_code == 200 and queued.status_code == 200
        err = refused.json()["error"]
        assert err["type"] == "server_error" and err["code"] == "overloaded" and "full" in err["message"]
        assert refused.headers["retry-after"] == "1"
        assert httpx.post(s.url + "/v1/completions", json=body, timeout=600).status_code == 200


def test_a_failed_decode_fails_only_its_batch(engine, serve_config):
    failures = iter([RuntimeError("device lost")])

    def fail_once(jobs):
        err = next(failures, None)
        if err is not None:
            raise err

    app = create_app(Wrapped(engine, before=fail_once), serve_config(batching="static"))
    body = {"prompt": "hi", "max_tokens": 2, "temperature": 0}
    with BackgroundServer(app) as s:
        r = httpx.post(s.url + "/v1/completions", json=body, timeout=600)
        assert r.status_code == 500 and "device lost" in r.json()["error"]["message"]
        assert httpx.post(s.url + "/v1/completions", json=body, timeout=600).status_code == 200


def test_clients_that_leave_withdraw_their_rows_not_yet_decoded(engine, serve_config, monkeypatch):
    """Static batching (also the path of constrained and logprobs requests): client A (6 rows, so 2 decode
    calls of max_batch 4) gives up while its first call runs, client B while queued behind it. A's second call
    and B are never decoded; the server then serves on."""
    reached, gate, real = threading.Event(), threading.Event(), engine.sampler

    class Held:  # the engine's Sampler, its first call held at the gate
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, *args, **kw):
            reached.set()
            gate.wait(60)
            return real(*args, **kw)

    monkeypatch.setattr(engine, "sampler", Held())
    body = {"prompt": PROMPTS[:3], "n": 2, "max_tokens": 5, "temperature": 1.0, "seed": 1}

    def gives_up(b):
        try:
            httpx.post(s.url + "/v1/completions", json=b, timeout=httpx.Timeout(60, read=1.0))
            raise AssertionError("an answer came while the decode was held")
        except httpx.ReadTimeout:
            pass

    def health():
        return httpx.get(s.url + "/health", timeout=60).json()

    def wait_for(cond, what):
        deadline = time.monotonic() + 60
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    with BackgroundServer(create_app(engine, serve_config(batching="static"))) as s:
        before, calls = health(), engine.decode_calls
        a = threading.Thread(target=gives_up, args=(body,))
        a.start()
        wait_for(reached.is_set, "A's first decode call")
        gives_up({**body, "n": 1})  # B: queued, 3 rows
        a.join()
        wait_for(lambda: health()["cancelled_requests"] == before["cancelled_requests"] + 2, "both to be cancelled")
        gate.set()
        wait_for(lambda: health()["requests"] == before["requests"] + 1, "A's batch to end")
        now = health()
        assert engine.decode_calls - calls == 1  # A's first 4 rows only
        assert now["cancelled_rows"] - before["cancelled_rows"] == 2 + 3 and now["queued"] == 0
        ok = httpx.post(s.url + "/v1/completions", json={**body, "n": 1, "max_tokens": 2}, timeout=600)
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 3 and engine.decode_calls - calls == 2


def test_a_client_that_leaves_stops_its_rows_inside_the_running_decode(engine, serve_config, monkeypatch,
                                                                       client_leaves):
    """Static path, one Sampler call under way: the decoding loop asks every ``POLL_STEPS`` steps which rows are
    still wanted. The call's first question is held until the client has given up; its row then stops there,
    far before its ``max_tokens``, and the server serves on."""
    from reclm_jax.models.cancellation import POLL_STEPS

    real, calls = engine.sampler, []

    class Polled:  # the engine's Sampler, its poll held until the request is cancelled
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, *args, cancelled=None, **kw):
            def poll():
                deadline = time.monotonic() + 60
                while not any(flags := cancelled()) and time.monotonic() < deadline:
                    time.sleep(0.02)
                return flags

            calls.append(real(*args, cancelled=poll, **kw))
            return calls[-1]

    monkeypatch.setattr(engine, "sampler", Polled())
    body = {"prompt": PROMPTS[1], "max_tokens": 6 * POLL_STEPS, "temperature": 0, "ignore_eos": True}
    with BackgroundServer(create_app(engine, serve_config(batching="static"))) as s:
        before, now = client_leaves(s.url, body, 1.0)
        assert now["cancelled_rows"] == before["cancelled_rows"] + 1
        assert calls[0].lengths.tolist() == [POLL_STEPS] and not calls[0].stopped.any()
        monkeypatch.setattr(engine, "sampler", real)
        ok = httpx.post(s.url + "/v1/completions", json={**body, "max_tokens": 3}, timeout=600)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
