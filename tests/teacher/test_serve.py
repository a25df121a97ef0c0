"""The HTTP service: same answers as the in-process teacher under concurrency, 400s for bad input, 503s."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from reclm_jax.datasets.raw import load_raw

REPO = Path(__file__).resolve().parents[2]


def _requests(raw, n: int, seed: int = 0):
    """n mixed requests (inference plain / +C / -C / candidates, ranking, and multi-user ones)."""
    rng = np.random.default_rng(seed)
    users = list(raw.sequential)
    cats = list(raw.category2item)
    out = []
    for j in range(n):
        u = users[int(rng.integers(len(users)))]
        h = raw.sequential[u][:-1][-10:]
        kind = j % 6
        if kind == 5:
            cands = raw.ranking_candidate[u][:20]
            out.append(("/ranking", {"users": [u], "item_lengths": [len(h)], "item_lists": [h],
                                     "candidate_item_lists": [cands], "immediately": int(j % 2)}))
            continue
        body = {"users": [u], "item_lengths": [len(h)], "item_lists": [h], "k": int(rng.integers(1, 21)),
                "immediately": int(j % 2)}
        if kind == 1:
            body["target_category"] = ["+" + cats[j % len(cats)]]
        elif kind == 2:
            body["target_category"] = ["-" + cats[j % len(cats)]]
        elif kind == 3:
            body["candidate_item_lists"] = [raw.ranking_candidate[u][: int(rng.integers(3, 20))]]
        elif kind == 4:  # several users in one request, with a null target for one of them
            u2 = users[(users.index(u) + 1) % len(users)]
            h2 = raw.sequential[u2][:-2][-10:]
            body.update(users=[u, u2], item_lengths=[len(h), len(h2)], item_lists=[h, h2],
                        target_category=[None, "+" + cats[0]])
        out.append(("/inference", body))
    return out


def _expected(teacher, path, body):
    if path == "/ranking":
        return {"ranking": teacher.ranking(body["item_lists"], body["candidate_item_lists"])}
    return {"inference": teacher.topk(body["item_lists"], body["k"], body.get("target_category"),
                                      body.get("candidate_item_lists"))}


def test_200_concurrent_requests_match_the_in_process_teacher(teacher, service, tiny_dataset_dir):
    raw = load_raw(tiny_dataset_dir, item_index="id")
    reqs = _requests(raw, 200)
    expected = [_expected(teacher, p, b) for p, b in reqs]
    before = httpx.get(service.url + "/health").json()

    async def go():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(client.post(p, json=b) for p, b in reqs))

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * 200
    assert [r.json() for r in responses] == expected
    after = httpx.get(service.url + "/health").json()
    assert after["requests"] - before["requests"] == 200
    assert after["batches"] - before["batches"] < 200  # concurrent requests were merged into shared model calls


BAD = [
    ("/inference", b"{not json", "malformed JSON"),
    ("/inference", b"[1, 2]", "JSON object"),
    ("/inference", {"users": ["u1"], "k": 5}, "item_lists"),
    ("/inference", {"users": ["nobody"], "item_lists": [["1"]], "k": 5}, "unknown user 'nobody'"),
    ("/inference", {"item_lists": [["1", "9999"]], "k": 5}, "unknown item '9999'"),
    ("/inference", {"item_lists": [["1"]], "k": 5, "target_category": ["+Western"]}, "unknown category 'Western'"),
    ("/inference", {"item_lists": [["1"]], "k": 5, "target_category": ["Drama"]}, "'+<category>'"),
    ("/inference", {"item_lists": [["1"] * 2000], "k": 5}, "at most 1024"),
    ("/inference", {"item_lists": [["1"]], "k": -1}, "'k'"),
    ("/inference", {"item_lists": [["1"]], "k": "ten"}, "'k'"),
    ("/inference", {"item_lists": [["1", "2"]], "item_lengths": [3], "k": 5}, "item_lengths[0]"),
    ("/inference", {"item_lists": [["1"], ["2"]], "users": ["u1"], "k": 5}, "'users' has 1 entries"),
    ("/inference", {"item_lists": [], "k": 5}, "empty"),
    ("/inference", {"item_lists": [[{"id": 1}]], "k": 5}, "not an item id"),
    ("/inference", {"item_lists": [["1"]], "k": 5, "candidate_item_lists": [["1", "nope"]]}, "unknown item 'nope'"),
    ("/ranking", {"item_lists": [["1"]]}, "candidate_item_lists"),
    ("/ranking", {"item_lists": [["1"]], "candidate_item_lists": [["2", "x9"]]}, "unknown item 'x9'"),
    ("/inference", {"item_lists": [["1"]], "k": 5, "immediately": "soon"}, "immediately"),
]


@pytest.mark.parametrize("path, body, needle", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_requests_get_400_with_a_message_and_the_server_keeps_serving(service, path, body, needle):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(service.url + path, **kw)
    assert r.status_code == 400
    assert needle in r.json()["error"]
    ok = httpx.post(service.url + "/inference", json={"item_lists": [["1", "2"]], "k": 3})
    assert ok.status_code == 200 and len(ok.json()["inference"][0]) == 3


def test_k_zero_is_answered_with_empty_lists(service):
    """B8: the original protocol sends k = 0 (``ad4d270:sft/dataset.py:163-166``, the in/out-of-category counts of
    SFTPersonalCategoryRate can be 0) and its server answers ``torch.topk(score, batched_data['k'])``
    (``ad4d270:unirec/asyc_server.py:69``), i.e. ``[[]]``; the client asserts ``response.status_code == 200``
    (``ad4d270:utils/tools.py:110``)."""
    body = {"users": ["u1"], "item_lengths": [2], "k": 0, "item_lists": [["1", "2"]], "immediately": 1,
            "target_category": ["+Drama"]}  # what the original's get_item_list sends
    r = httpx.post(service.url + "/inference", json=body)
    assert r.status_code == 200 and r.json() == {"inference": [[]]}
    body = {"item_lists": [["1"], ["2"]], "k": 0, "immediately": 0}  # queued with company
    r = httpx.post(service.url + "/inference", json=body)
    assert r.status_code == 200 and r.json() == {"inference": [[], []]}


def test_full_queue_gets_503(teacher):
    from reclm_jax.service.server import BackgroundServer
    from reclm_jax.teacher.serve import ServeConfig, create_app

    gate = threading.Event()

    class SlowTeacher:  # holds the model thread until released, so requests pile up in the queue
        def __getattr__(self, name):
            return getattr(teacher, name)

        def topk(self, *a, **kw):
            gate.wait(10)
            return teacher.topk(*a, **kw)

    app = create_app(SlowTeacher(), ServeConfig(max_queue=2))
    with BackgroundServer(app) as server:
        async def go():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                tasks = [asyncio.create_task(client.post("/inference", json={"item_lists": [["1"]], "k": 2}))
                         for _ in range(8)]
                await asyncio.sleep(1.0)
                gate.set()
                return await asyncio.gather(*tasks)

        codes = sorted(r.status_code for r in asyncio.run(go()))
        assert 503 in codes and 200 in codes
        assert set(codes) == {200, 503}
        r = httpx.post(server.url + "/inference", json={"item_lists": [["1"]], "k": 2})
        assert r.status_code == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_cli_starts_and_answers(tiny_teacher_dir, teacher, workers):
    from reclm_jax.service.server import free_port

    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "reclm_jax.teacher.serve", "--checkpoint", str(tiny_teacher_dir),
                             "--port", str(port), "--max_batch", "4", "--workers", str(workers)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        pids = set()
        body = {"users": ["u1"], "item_lengths": [2], "item_lists": [["1", "2"]], "k": 5, "immediately": 1}
        # Every worker process must answer, and answer the same as the in-process teacher.
        while len(pids) < workers:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.time() < deadline, "service did not come up"
                time.sleep(0.3)
                continue
            assert health["items"] == len(teacher.items) and health["window"] == teacher.window
            r = httpx.post(f"http://127.0.0.1:{port}/inference", content=json.dumps(body))
            assert r.json() == {"inference": teacher.topk([["1", "2"]], 5)}
            pids.add(health["pid"])
            assert time.time() < deadline, f"only {len(pids)} of {workers} workers answered"
        assert proc.pid not in pids or workers == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_cli_bad_checkpoint_exits_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "reclm_jax.teacher.serve", "--checkpoint", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "none" in res.stderr
