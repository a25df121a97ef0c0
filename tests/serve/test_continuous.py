"""Continuous batching (the default): many concurrent clients each get what generate() gives their request alone,
/health reports the slots' occupancy, a full queue is 503, a failed chunk fails only its own requests, and
requests the slots do not serve (top logprobs) take the static path."""

from __future__ import annotations

import asyncio
import json

import httpx

from reclm_jax.models.generation import SamplingConfig, generate
from reclm_jax.models.special_tokens import resolve_stop_ids
from reclm_jax.serve.app import create_app
from reclm_jax.serve.engine import row_seed
from reclm_jax.service.server import BackgroundServer

PROMPTS = ["The quick brown fox", "Recommend a movie like 'Heat (1995)'", "1. Fargo (1996)\n 2.", "Sure! What",
           "Action Adventure Animation", "You are an expert recommender engine."]


def _want(engine, model, ids, max_tokens, **kw):
    return generate(model, [ids], max_new_tokens=max_tokens, pad_id=engine.pad_id,
                    stop_ids=resolve_stop_ids(engine.tokenizer), **kw).token_lists()[0]


async def _gather(url, bodies):
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def one(i, b):
            await asyncio.sleep(0.05 * (i % 4))  # arrivals spread over a few chunks
            return await client.post("/v1/completions", json=b)

        return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))


def test_concurrent_clients_get_their_own_answers_and_health_shows_occupancy(server, engine, model):
    tok = engine.tokenizer
    bodies = [{"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 12 + 3 * i, "temperature": 0,
               "return_token_ids": True} for i in range(8)]
    bodies.append({"prompt": PROMPTS[0], "max_tokens": 9, "temperature": 1.0, "seed": 5, "n": 2,
                   "return_token_ids": True})
    before = httpx.get(server.url + "/health").json()
    calls = engine.decode_calls
    got = asyncio.run(_gather(server.url, bodies))
    assert engine.decode_calls == calls  # no static Sampler call: every request went through the slots
    for b, r in zip(bodies, got):
        assert r.status_code == 200, r.text
        ids = tok(b["prompt"])["input_ids"]
        for j, c in enumerate(r.json()["choices"]):
            kw = {}
            if b["temperature"]:
                kw = dict(sampling=SamplingConfig(temperature=1.0), seed=[row_seed(b["seed"], j)])
            assert c["token_ids"] == _want(engine, model, ids, b["max_tokens"], **kw)
    after = httpx.get(server.url + "/health").json()
    assert after["batching"] == "continuous" and after["queued"] == 0
    steps = after["decode_steps"] - before["decode_steps"]
    assert steps > 0 and (after["slot_steps"] - before["slot_steps"]) / steps > 1.5  # several rows per step
    assert after["continuous_requests"] - before["continuous_requests"] == len(bodies)


def test_stream_stop_strings_and_top_logprobs(server, engine, model):
    body = {"prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0}
    plain = httpx.post(server.url + "/v1/completions", json=body, timeout=600).json()["choices"][0]
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=600) as r:
        raw = r.read().decode()
    assert raw.rstrip().endswith("data: [DONE]")
    pieces = [e for e in raw.split("\n\n") if e and e != "data: [DONE]"]
    assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in pieces) == plain["text"]
    if len(plain["text"]) > 3:  # a stop string cuts the text as in the static path
        stop = plain["text"][2:4]
        cut = httpx.post(server.url + "/v1/completions", json={**body, "stop": [stop]}, timeout=600).json()
        assert cut["choices"][0]["text"] == plain["text"][:plain["text"].find(stop)]
    calls = engine.decode_calls
    alts = httpx.post(server.url + "/v1/completions", json={**body, "logprobs": 2}, timeout=600).json()
    assert engine.decode_calls == calls + 1  # alternatives: the static path
    assert alts["choices"][0]["text"] == plain["text"]


def test_a_full_queue_gets_503_and_a_failed_chunk_fails_only_its_requests(engine, serve_config, step_hold,
                                                                          monkeypatch):
    body = {"prompt": "hi", "max_tokens": 3, "temperature": 0}
    gate = step_hold()
    with BackgroundServer(create_app(engine, serve_config(max_queue=1))) as s:
        async def go():
            async with httpx.AsyncClient(base_url=s.url, timeout=600) as client:
                running = asyncio.create_task(client.post("/v1/completions", json=body))
                for _ in range(600):
                    if gate.reached.is_set():
                        break
                    await asyncio.sleep(0.05)
                queued = asyncio.create_task(client.post("/v1/completions", json=body))
                for _ in range(600):
                    if httpx.get(s.url + "/health").json()["queued"] == 1:
                        break
                    await asyncio.sleep(0.05)
                refused = await client.post("/v1/completions", json=body)
                gate.released.set()
                return refused, await running, await queued

        refused, running, queued = asyncio.run(go())
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
        assert running.status_code == 200 and queued.status_code == 200
    monkeypatch.undo()
    step_hold(fail=True)
    with BackgroundServer(create_app(engine, serve_config())) as s:
        r = httpx.post(s.url + "/v1/completions", json=body, timeout=600)
        assert r.status_code == 500 and "device lost" in r.json()["error"]["message"]
        again = httpx.post(s.url + "/v1/completions", json=body, timeout=600)
        assert again.status_code == 200 and again.json()["choices"][0]["text"] == running.json()["choices"][0]["text"]


def test_too_long_for_the_slots_takes_the_static_path(engine, serve_config, monkeypatch):
    job = engine.make_job(_parsed(engine, serve_config, 2), lambda rows: rows)
    assert engine.continuous_ok(job)
    monkeypatch.setattr(engine, "cache_len", 16)  # a 16-token prompt bucket and nothing more: 2 new tokens do not fit
    assert not engine.continuous_ok(job)


def _parsed(engine, serve_config, max_tokens):
    from reclm_jax.serve.protocol import parse_request

    return parse_request({"prompt": "hi", "max_tokens": max_tokens, "temperature": 0}, "completion", engine,
                         serve_config())


def test_alternatives_are_not_continuous(engine, serve_config):
    from reclm_jax.serve.protocol import parse_request

    req = parse_request({"prompt": "hi", "max_tokens": 2, "logprobs": 1}, "completion", engine, serve_config())
    assert not engine.continuous_ok(engine.make_job(req, lambda rows: rows))


def test_a_cancelled_job_leaves_the_queue_and_never_takes_a_slot(engine, serve_config, step_hold):
    """Four rows fill the four slots; a job that waits behind them is cancelled (its caller stopped waiting): it
    leaves the queue, never decodes, and the running job still gets its whole answer."""
    from reclm_jax.serve.continuous import ContinuousQueue
    from reclm_jax.serve.protocol import parse_request

    def job(n, max_tokens):
        req = parse_request({"prompt": "hi", "max_tokens": max_tokens, "temperature": 0.8, "n": n, "seed": 3,
                             "ignore_eos": True},
                            "completion", engine, serve_config())
        return engine.make_job(req, lambda rows: rows)

    sched = engine.scheduler
    gate = step_hold()
    before = sched.stats()

    async def go():
        q = ContinuousQueue(sched, max_queue=4)
        running = asyncio.ensure_future(q.submit(job(4, 20)))
        for _ in range(1200):
            if gate.reached.is_set():
                break
            await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(q.submit(job(2, 20)))
        await asyncio.sleep(0.2)
        assert q.queued == 1  # behind the four live rows
        waiting.cancel()
        await asyncio.sleep(0.2)
        gate.released.set()
        rows = await running
        for _ in range(100):
            if sched.stats()["cancelled_requests"] > before["cancelled_requests"]:
                break
            await asyncio.sleep(0.05)
        return q, rows, waiting

    q, rows, waiting = asyncio.run(go())
    after = sched.stats()
    assert waiting.cancelled() and q.queued == 0
    assert len(rows) == 4 and all(len(r.tokens) == 20 for r in rows)
    assert after["cancelled_requests"] == before["cancelled_requests"] + 1
    assert after["cancelled_rows"] == before["cancelled_rows"]  # it held no slot
    assert after["continuous_rows"] == before["continuous_rows"] + 4
    assert after["slot_steps"] - before["slot_steps"] == 4 * 19  # only the running job's rows decoded


def test_a_client_that_leaves_before_its_answer_frees_its_slot(server, client_leaves):
    """A non-streaming client gives up (its read times out and it closes the connection): the server cancels
    its row instead of decoding its 2000 tokens for nobody, and goes on serving."""
    import time

    def health():
        return httpx.get(server.url + "/health", timeout=60).json()

    body = {"prompt": "The quick brown fox", "max_tokens": 2000, "temperature": 0, "ignore_eos": True}
    before, now = client_leaves(server.url, body, 0.5)
    assert now["cancelled_requests"] == before["cancelled_requests"] + 1
    assert now["slot_steps"] - before["slot_steps"] < 1000
    time.sleep(0.3)
    assert health()["slot_steps"] == now["slot_steps"]
    ok = httpx.post(server.url + "/v1/completions", json={**body, "max_tokens": 4}, timeout=600)
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"
