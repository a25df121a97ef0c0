"""The OpenAI-compatible server on a live socket: greedy answers equal generate(), streamed text equals
non-streamed text, stop strings cut, seeded samples reproduce, logprobs are the model's, a warm server does not
recompile, /health and /v1/models."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from reclm_jax.models.generation import SamplingConfig, generate, trace_count
from reclm_jax.models.special_tokens import resolve_stop_ids

PROMPTS = ["Recommend a movie like 'Toy Story (1995)'", "The quick brown fox", "1. Heat (1995)\n 2."]


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=600, **kw)


def stream(server, path, body) -> list[dict]:
    """The SSE events of a streamed request, parsed; checks the framing and the closing [DONE]."""
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=600) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    return [json.loads(e[6:]) for e in events[:-1]]


def reference(engine, model, ids, max_tokens, **kw):
    return generate(model, [ids], max_new_tokens=max_tokens, pad_id=engine.pad_id,
                    stop_ids=resolve_stop_ids(engine.tokenizer), **kw)


def test_greedy_completions_equal_generate(server, engine, model):
    tok = engine.tokenizer
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": PROMPTS, "max_tokens": 12, "temperature": 0,
                                         "return_token_ids": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion" and out["model"] == "tiny" and out["id"].startswith("cmpl-")
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    total = 0
    for text, c in zip(PROMPTS, out["choices"]):
        ids = tok(text)["input_ids"]
        want = reference(engine, model, ids, 12).token_lists()[0]
        assert c["prompt_token_ids"] == ids and c["token_ids"] == want
        assert c["text"] == tok.decode(want, skip_special_tokens=True)
        assert c["finish_reason"] == ("stop" if len(want) < 12 else "length")
        total += len(want)
    assert out["usage"] == {"prompt_tokens": sum(len(tok(p)["input_ids"]) for p in PROMPTS),
                            "completion_tokens": total,
                            "total_tokens": total + sum(len(tok(p)["input_ids"]) for p in PROMPTS)}
    # token ids as the prompt (vLLM's form) give the same answer
    ids = tok(PROMPTS[1])["input_ids"]
    again = post(server, "/v1/completions", {"prompt": ids, "max_tokens": 12, "temperature": 0}).json()
    assert again["choices"][0]["text"] == out["choices"][1]["text"]


def test_chat_renders_the_template_and_equals_generate(server, engine, model):
    tok = engine.tokenizer
    messages = [{"role": "system", "content": "You are an expert recommender engine."},
                {"role": "user", "content": "Recommend 3 movies."}]
    r = post(server, "/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 10,
                                              "temperature": 0.0, "return_token_ids": True})
    assert r.status_code == 200, r.text
    out = r.json()
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))["input_ids"]
    assert out["object"] == "chat.completion" and out["choices"][0]["prompt_token_ids"] == ids
    want = reference(engine, model, ids, 10).token_lists()[0]
    c = out["choices"][0]
    assert c["token_ids"] == want and c["message"] == {"role": "assistant",
                                                      "content": tok.decode(want, skip_special_tokens=True)}
    assert out["usage"]["prompt_tokens"] == len(ids) and out["usage"]["completion_tokens"] == len(want)
    # OpenAI's content parts are the same text
    parts = [messages[0], {"role": "user", "content": [{"type": "text", "text": "Recommend 3 "},
                                                        {"type": "text", "text": "movies."}]}]
    again = post(server, "/v1/chat/completions", {"messages": parts, "max_tokens": 10, "temperature": 0}).json()
    assert again["choices"][0]["message"]["content"] == c["message"]["content"]


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": PROMPTS, "max_tokens": 12, "temperature": 0}),
    ("/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0, "stop": ["e"]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 12,
                              "temperature": 0}),
], ids=["completions", "completions-stop", "chat"])
def test_streaming_returns_the_same_text_and_finish_reason(server, path, body):
    whole = post(server, path, body).json()
    events = stream(server, path, body)
    chat = path.endswith("chat/completions")
    texts, finish = {}, {}
    for e in events:
        assert e["id"] == events[0]["id"] and e["object"] == ("chat.completion.chunk" if chat else "text_completion")
        for c in e["choices"]:
            piece = c["delta"].get("content", "") if chat else c["text"]
            texts[c["index"]] = texts.get(c["index"], "") + piece
            if c["finish_reason"] is not None:
                assert c["index"] not in finish  # one finish reason per choice
                finish[c["index"]] = c["finish_reason"]
    for c in whole["choices"]:
        assert texts[c["index"]] == (c["message"]["content"] if chat else c["text"])
        assert finish[c["index"]] == c["finish_reason"]
    assert events[-1]["usage"] == whole["usage"]  # usage on the last chunk
    assert events[0]["choices"][0].get("delta", {}).get("role", "assistant") == "assistant"
    # include_usage: OpenAI's closing chunk without choices
    events = stream(server, path, {**body, "stream_options": {"include_usage": True}})
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]
    assert all(e.get("usage") is None for e in events[:-1])


def test_stop_strings_cut_the_text_before_the_stop(server):
    body = {"prompt": PROMPTS[2], "max_tokens": 16, "temperature": 0, "return_token_ids": True}
    full = post(server, "/v1/completions", body).json()["choices"][0]
    text = full["text"]
    assert len(text) > 6, text
    stop = text[3:6]
    at = text.find(stop)
    cut = post(server, "/v1/completions", {**body, "stop": [stop, "never-there"]}).json()
    c = cut["choices"][0]
    assert c["text"] == text[:at] and c["finish_reason"] == "stop" and c["stop_reason"] == stop
    # the tokens up to the one that completed the stop string are counted, no more
    k = len(c["token_ids"])
    assert c["token_ids"] == full["token_ids"][:k] and cut["usage"]["completion_tokens"] == k
    kept = post(server, "/v1/completions", {**body, "stop": stop, "include_stop_str_in_output": True}).json()
    assert kept["choices"][0]["text"] == text[:at + len(stop)]


def test_a_single_token_stop_string_stops_early_with_the_same_answer(server, engine):
    body = {"prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0, "return_token_ids": True}
    full = post(server, "/v1/completions", body).json()["choices"][0]
    tok = engine.tokenizer
    # a stop string that is one generated token's whole text
    single = next((t for t in full["token_ids"][1:] if engine.stop_string_token(tok.decode([t])) == t), None)
    if single is None:
        pytest.skip("the greedy text has no token that is a stop string on its own")
    s = tok.decode([single])
    c = post(server, "/v1/completions", {**body, "stop": s}).json()["choices"][0]
    assert c["text"] == full["text"][:full["text"].find(s)] and c["stop_reason"] == s
    assert c["token_ids"][-1] == single or s in tok.decode(c["token_ids"])


def test_n_with_a_seed_is_reproducible_and_rows_differ(server):
    body = {"prompt": PROMPTS[1], "max_tokens": 10, "temperature": 1.0, "n": 3, "seed": 1234}
    a = post(server, "/v1/completions", body).json()
    b = post(server, "/v1/completions", body).json()
    texts = [c["text"] for c in a["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert texts == [c["text"] for c in b["choices"]]  # the same seed: the same samples
    assert len(set(texts)) > 1  # rows draw their own streams
    other = post(server, "/v1/completions", {**body, "seed": 99}).json()
    assert [c["text"] for c in other["choices"]] != texts
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]  # the prompt counted once, not n times


def test_logprobs_are_the_model_logprobs_of_the_chosen_tokens(server, engine, model):
    tok = engine.tokenizer
    ids = tok(PROMPTS[0])["input_ids"]
    ref = reference(engine, model, ids, 8)
    n = int(ref.lengths[0])
    r = post(server, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0,
                                         "logprobs": 2}).json()
    lp = r["choices"][0]["logprobs"]
    np.testing.assert_allclose(lp["token_logprobs"], ref.logprobs[0, :n], atol=1e-5)
    assert lp["tokens"] == [tok.decode([t]) for t in ref.token_lists()[0]]
    assert len(lp["text_offset"]) == n and lp["text_offset"][0] == 0
    for chosen, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert 1 <= len(top) <= 3 and top[chosen] == pytest.approx(value)
        assert max(top.values()) == pytest.approx(value, abs=1e-6)  # greedy: the chosen token is the most likely
    chat = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
                                                 "temperature": 0, "logprobs": True, "top_logprobs": 2}).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == chat["usage"]["completion_tokens"]
    for e in content:
        assert len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["logprob"] >= e["top_logprobs"][1]["logprob"]
        assert e["logprob"] == pytest.approx(e["top_logprobs"][0]["logprob"], abs=1e-6)
        assert e["bytes"] == list(e["token"].encode())
    plain = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 6, "temperature": 0}).json()
    assert plain["choices"][0]["logprobs"] is None


def test_sampling_settings_reach_the_sampler(server, engine, model):
    """top_k = 1 at any temperature is greedy; a seeded sampled request equals generate() with that row seed."""
    from reclm_jax.serve.engine import row_seed

    tok = engine.tokenizer
    greedy = post(server, "/v1/completions", {"prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0}).json()
    top1 = post(server, "/v1/completions", {"prompt": PROMPTS[1], "max_tokens": 8, "temperature": 1.0,
                                            "top_k": 1, "seed": 5}).json()
    assert top1["choices"][0]["text"] == greedy["choices"][0]["text"]
    ids = tok(PROMPTS[1])["input_ids"]
    want = reference(engine, model, ids, 10, sampling=SamplingConfig(temperature=1.0), seed=[row_seed(1234, 0)])
    got = post(server, "/v1/completions", {"prompt": PROMPTS[1], "max_tokens": 10, "temperature": 1.0, "n": 3,
                                           "seed": 1234}).json()
    assert got["choices"][0]["text"] == tok.decode(want.token_lists()[0], skip_special_tokens=True)


def test_a_warm_server_does_not_recompile(server):
    bodies = [{"prompt": PROMPTS[0], "max_tokens": 5, "temperature": 0},
              {"prompt": PROMPTS[1], "max_tokens": 9, "temperature": 0},  # another limit, the same length bucket
              {"prompt": PROMPTS[2], "max_tokens": 7, "temperature": 1.0, "seed": 3}]
    for b in bodies:
        assert post(server, "/v1/completions", b).status_code == 200
    before = trace_count()
    for b in bodies:
        assert post(server, "/v1/completions", {**b, "seed": 11}).status_code == 200
    assert trace_count() == before


def test_health_and_models(server, engine):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == "tiny" and h["max_model_len"] == engine.max_model_len
    assert h["decode_calls"] == engine.decode_calls and h["queued"] == 0
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["object"] == "model" and models["data"][0]["max_model_len"] == engine.max_model_len
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server.url + "/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["message"].startswith("GET /v1/completions")
