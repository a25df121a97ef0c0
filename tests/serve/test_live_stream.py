"""Live streaming: a continuously batched stream sends text while its request is still decoding, every chunk
extends the text sent so far (stop strings, incomplete characters, space clean-up), the whole stream equals the
non-streamed answer, and a failure after the first chunk ends the stream with OpenAI's error object."""

from __future__ import annotations

import json
import queue
import random
import threading

import httpx
import pytest

from reclm_jax.models.slot_decoder import SlotDecoder
from reclm_jax.serve.live_stream import sendable
from reclm_jax.serve.outputs import make_choice
from reclm_jax.serve.engine import Row
from reclm_jax.serve.protocol import Params


@pytest.mark.parametrize("text, stops, cleanup, want", [
    ("Heat (1995)\n2.", [], False, "Heat (1995)\n2."),
    ("Heat (1995)\n2.", ["\n"], False, "Heat (1995)"),  # a whole stop string: nothing after its start
    ("Heat (1995)\n2.", ["2.", "\n"], False, "Heat (1995)"),  # the earliest of several
    ("Heat (19", ["(1995)"], False, "Heat "),  # a tail that may become a stop string is held
    ("Heat (19", ["(1995)", "19"], False, "Heat ("),
    ("Heat (19", ["(1996)x"], False, "Heat "),
    ("caf\ufffd", [], False, "caf"),  # an incomplete character
    ("I like it .", [], True, "I like it"),  # clean-up may still eat the last space
    ("nospace", [], True, ""),
])
def test_sendable(text, stops, cleanup, want):
    assert sendable(text, stops, cleanup) == want


@pytest.mark.parametrize("cleanup", [False, True])
def test_every_sendable_prefix_is_a_prefix_of_the_answer(engine, cleanup, monkeypatch):
    """Random token sequences of the real tokenizer, stop strings taken from their own text: what a stream may
    send after k tokens always begins the non-streamed answer of all of them."""
    tok = engine.tokenizer
    monkeypatch.setattr(tok, "clean_up_tokenization_spaces", cleanup, raising=False)
    rng = random.Random(0)
    vocab = len(tok)
    checked = 0
    for trial in range(60):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 24))]
        text = tok.decode(ids, skip_special_tokens=True)
        stops = []
        if trial % 2 and len(text) > 3:  # a stop string out of the text itself, so it is hit
            a = rng.randrange(len(text) - 2)
            stops = [text[a:a + rng.randrange(1, 4)]]
        params = Params(stop=tuple(stops)) if stops else Params()
        answer = make_choice(0, (), Row(tokens=ids, logprobs=[0.0] * len(ids), stopped=False), params, tok).text
        for k in range(1, len(ids) + 1):
            part = sendable(tok.decode(ids[:k], skip_special_tokens=True), stops, cleanup)
            assert answer.startswith(part), (ids, k, stops, part, answer)
            checked += bool(part)
    assert checked > 100  # the check saw real text, not only empty prefixes


def _read(url: str, body: dict, out: queue.Queue) -> None:
    """A client on its own thread: each SSE event (parsed; None after the closing [DONE]) into ``out``."""
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=600) as r:
        out.put(r.status_code)
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.put(None if line == "data: [DONE]" else json.loads(line[6:]))


def _text(e: dict) -> str:
    return "".join(c.get("text") or c.get("delta", {}).get("content") or "" for c in e["choices"])


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "The quick brown fox", "max_tokens": 40, "temperature": 0, "ignore_eos": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Recommend 3 movies."}], "max_tokens": 40,
                              "temperature": 0, "ignore_eos": True}),
], ids=["completions", "chat"])
def test_text_arrives_while_the_request_is_still_decoding(server, engine, step_hold, path, body):
    tok = engine.tokenizer
    whole = httpx.post(server.url + path, json={**body, "return_token_ids": True}, timeout=600).json()["choices"][0]
    ids = whole["token_ids"]
    answer = whole["message"]["content"] if "message" in whole else whole["text"]
    # Held at the second chunk: the client has what admission (1 token) and the first chunk decoded.
    k = 1 + engine.decode_chunk
    early = sendable(tok.decode(ids[:k], skip_special_tokens=True), [], False)
    assert early and len(early) < len(answer)  # the check below means something for this prompt
    hold = step_hold(at=2)
    events: queue.Queue = queue.Queue()
    client = threading.Thread(target=_read, args=(server.url + path, body, events), daemon=True)
    client.start()
    assert events.get(timeout=120) == 200
    got = ""
    while got != early:  # every chunk so far came while the decoder is held
        e = events.get(timeout=120)
        assert e is not None and all(c["finish_reason"] is None for c in e["choices"]), e
        got += _text(e)
        assert early.startswith(got), (got, early)
    assert hold.reached.is_set() and not hold.released.is_set()
    hold.released.set()
    rest = []
    while (e := events.get(timeout=120)) is not None:
        rest.append(e)
    client.join(60)
    assert got + "".join(_text(e) for e in rest) == answer
    finals = [c for e in rest for c in e["choices"] if c["finish_reason"] is not None]
    assert [c["finish_reason"] for c in finals] == ["length"]
    assert rest[-1]["usage"]["completion_tokens"] == len(ids)


def test_a_failure_after_the_first_chunk_ends_the_stream_with_an_error(server, step_hold, monkeypatch):
    body = {"prompt": "The quick brown fox", "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    step_hold(at=2, fail=True)
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=600) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and "device lost" in error["message"]
    monkeypatch.undo()  # the server goes on serving
    ok = httpx.post(server.url + "/v1/completions", json={**body, "max_tokens": 4}, timeout=600)
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


def test_a_failure_before_any_token_is_an_http_error(server, engine, monkeypatch):
    """Admission itself fails: no stream was started, so the client gets the status, not a 200."""
    def admit(dec, requests):
        raise RuntimeError("no memory")

    monkeypatch.setattr(SlotDecoder, "admit", admit)
    body = {"prompt": "hi", "max_tokens": 4, "temperature": 0.7, "top_k": 3, "stream": True}  # a fresh key
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=600)
    assert r.status_code == 500 and "no memory" in r.json()["error"]["message"]


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server, step_hold):
    """The client reads its first chunk and leaves: its row stops decoding at the next round (cancelled, far
    short of its 200 tokens), and the server goes on serving."""
    import time

    def health():
        return httpx.get(server.url + "/health", timeout=60).json()

    body = {"prompt": "The quick brown fox", "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True}
    before = health()
    hold = step_hold(at=2)
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=600) as r:
        assert r.status_code == 200
        assert any(line.startswith("data: ") for line in r.iter_lines())  # the first chunk came
    # The server sees the closed connection while its decoder is held at its second chunk, or before that chunk
    # (then the row is cancelled before it): either way the row cannot finish first.
    time.sleep(0.5)
    hold.released.set()
    deadline = time.monotonic() + 60
    while (now := health())["cancelled_rows"] == before["cancelled_rows"]:
        assert time.monotonic() < deadline, "the disconnected stream's row was never cancelled"
        time.sleep(0.1)
    assert now["cancelled_requests"] == before["cancelled_requests"] + 1
    assert now["cancelled_rows"] == before["cancelled_rows"] + 1
    decoded = now["slot_steps"] - before["slot_steps"]
    assert decoded < 100  # of 200: the row left within a chunk or two of the disconnect
    time.sleep(0.5)
    assert health()["slot_steps"] == now["slot_steps"]  # and nothing decodes for it any more
    ok = httpx.post(server.url + "/v1/completions", json={**body, "stream": False, "max_tokens": 4}, timeout=600)
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


def test_each_row_of_an_n_2_stream_ends_when_it_is_done(server, step_hold):
    """Two samples of one request, the first ending early on a stop token: its last chunk (rest of the text,
    finish reason) arrives while the other row is still decoding, and each index's streamed text is its
    non-streamed answer."""
    url = server.url + "/v1/completions"
    base = {"prompt": "The quick brown fox", "max_tokens": 40, "temperature": 1.0, "n": 2, "ignore_eos": True}
    for seed in range(50):  # a token among row 0's first few that row 1 never draws
        ids = [c["token_ids"] for c in sorted(httpx.post(url, json={**base, "seed": seed, "return_token_ids": True},
                                                         timeout=600).json()["choices"], key=lambda c: c["index"])]
        stop = next((t for p, t in enumerate(ids[0][1:4], 1) if t not in ids[1] and t not in ids[0][:p]), None)
        if stop is not None:
            break
    assert stop is not None
    body = {**base, "seed": seed, "stop_token_ids": [stop]}
    answer = httpx.post(url, json=body, timeout=600).json()
    whole = sorted(answer["choices"], key=lambda c: c["index"])
    assert [c["finish_reason"] for c in whole] == ["stop", "length"]
    hold = step_hold(at=2)  # row 0 ends within the first chunk; row 1 is held at the second
    events: queue.Queue = queue.Queue()
    client = threading.Thread(target=_read, args=(url, body, events), daemon=True)
    client.start()
    assert events.get(timeout=120) == 200
    texts, finals = {0: "", 1: ""}, {}
    while 0 not in finals:
        e = events.get(timeout=120)
        assert e is not None, "the stream ended before row 0's last chunk"
        for c in e["choices"]:
            texts[c["index"]] += c["text"]
            if c["finish_reason"] is not None:
                finals[c["index"]] = c["finish_reason"]
    assert finals == {0: "stop"}  # row 1 has not finished: it is held at its second chunk
    assert hold.reached.wait(60)
    hold.released.set()
    while (e := events.get(timeout=120)) is not None:
        for c in e["choices"]:
            texts[c["index"]] += c["text"]
            if c["finish_reason"] is not None:
                finals[c["index"]] = c["finish_reason"]
        last = e
    client.join(60)
    assert finals == {0: "stop", 1: "length"}
    assert [texts[0], texts[1]] == [c["text"] for c in whole]
    assert last["usage"] == answer["usage"]
