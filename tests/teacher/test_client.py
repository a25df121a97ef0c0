"""TeacherClient: same results as Teacher, primary-then-backup hosts, retries with backoff, 400 -> UserError."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from starlette.responses import JSONResponse

from reclm_jax.errors import UserError
from reclm_jax.teacher.client import TeacherClient, TeacherUnavailableError
from reclm_jax.service.server import BackgroundServer, free_port


def test_client_matches_teacher_in_batches(teacher, service, tiny_dataset_dir):
    from reclm_jax.datasets.raw import load_raw

    raw = load_raw(tiny_dataset_dir, item_index="id")
    users = list(raw.sequential)
    hist = [raw.sequential[u][:-1] for u in users]  # full histories (some longer than the window)
    targets = [None, "+Drama", "-Comedy", None] * 10
    cands = [raw.ranking_candidate[u][:8] if n % 4 == 3 else None for n, u in enumerate(users)]
    client = TeacherClient(port=service.port, batch_size=7)
    assert client.topk(hist, 10, targets, cands, users=users) == teacher.topk(hist, 10, targets, cands, users=users)
    rc = [raw.ranking_candidate[u] for u in users]
    assert client.ranking(hist, rc) == teacher.ranking(hist, rc)
    assert client.health()["items"] == len(teacher.items)


def test_client_k_zero(teacher, service):
    """B8: k = 0 is part of the original protocol (``ad4d270:sft/dataset.py:163-166`` sends it;
    ``ad4d270:unirec/asyc_server.py:69`` answers ``torch.topk(score, 0)``, an empty list)."""
    client = TeacherClient(port=service.port, retries=0)
    assert client.topk([["1", "2"], ["3"]], 0, ["-Drama", None]) == [[], []] == teacher.topk([["1", "2"], ["3"]], 0)


def test_primary_down_falls_back_to_backup(teacher, service):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    client = TeacherClient(port=service.port, hosts=[dead, "127.0.0.1"], retries=0, timeout=5)
    assert client.topk([["1", "2"]], 4) == teacher.topk([["1", "2"]], 4)


def test_all_hosts_down_raises_after_retries_with_backoff():
    client = TeacherClient(port=free_port(), hosts=["127.0.0.1", f"127.0.0.1:{free_port()}"], retries=2,
                           timeout=2, backoff=0.1)
    t0 = time.time()
    with pytest.raises(TeacherUnavailableError, match="3 rounds"):
        client.topk([["1"]], 3)
    assert time.time() - t0 >= 0.1 + 0.2  # two backoff sleeps


def _flaky_app(fail_first: int, status: int = 503):
    app = FastAPI()
    calls = {"n": 0}
    app.state.calls = calls

    @app.post("/inference")
    async def inference():
        calls["n"] += 1
        if calls["n"] <= fail_first:
            return JSONResponse({"error": "busy"}, status_code=status)
        return {"inference": [["7", "8"]]}

    return app


def test_retries_a_busy_server_until_it_answers():
    app = _flaky_app(fail_first=2)
    with BackgroundServer(app) as s:
        client = TeacherClient(port=s.port, retries=3, backoff=0.01)
        assert client.topk([["1"]], 2) == [["7", "8"]]
        assert app.state.calls["n"] == 3


def test_400_raises_user_error_without_retrying():
    app = _flaky_app(fail_first=100, status=400)
    with BackgroundServer(app) as s:
        client = TeacherClient(port=s.port, retries=3, backoff=0.01)
        with pytest.raises(UserError, match="busy"):
            client.topk([["1"]], 2)
        assert app.state.calls["n"] == 1


def test_unknown_item_over_http_is_a_user_error(service):
    client = TeacherClient(port=service.port)
    with pytest.raises(UserError, match="unknown item 'nope'"):
        client.topk([["nope"]], 3)
