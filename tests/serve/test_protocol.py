"""Malformed requests: each kind gets a 400 (404 for an unknown model, as OpenAI and vLLM) in OpenAI's error
shape, with a message and ``param`` naming the field; the server keeps serving afterwards."""

from __future__ import annotations

import httpx
import pytest

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]

BAD = [  # (path, body, the field the message must name)
    (COMP, b"{not json", "JSON"),
    (COMP, b"[1, 2]", "JSON object"),
    (COMP, {"max_tokens": 4}, "prompt"),
    (COMP, {"prompt": 123}, "prompt"),
    (COMP, {"prompt": [1, "a"]}, "prompt"),
    (COMP, {"prompt": [10 ** 6]}, "prompt"),
    (COMP, {"prompt": ""}, "prompt"),
    (COMP, {"prompt": "x" * 20000, "max_tokens": 4}, "prompt"),  # longer than the 2048-token context
    (COMP, {"prompt": "hi", "n": 0}, "n"),
    (COMP, {"prompt": "hi", "n": "2"}, "n"),
    (COMP, {"prompt": "hi", "temperature": -0.5}, "temperature"),
    (COMP, {"prompt": "hi", "top_p": 1.5}, "top_p"),
    (COMP, {"prompt": "hi", "top_p": 0}, "top_p"),
    (COMP, {"prompt": "hi", "top_k": -3}, "top_k"),
    (COMP, {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    (COMP, {"prompt": "hi", "max_tokens": 10.5}, "max_tokens"),
    (COMP, {"prompt": "hi", "max_tokens": 100000}, "max_tokens"),  # prompt + completion beyond the context
    (COMP, {"prompt": "hi", "stop": 5}, "stop"),
    (COMP, {"prompt": "hi", "stop": ["ok", ""]}, "stop"),
    (COMP, {"prompt": "hi", "logprobs": 99}, "logprobs"),
    (COMP, {"prompt": "hi", "seed": "abc"}, "seed"),
    (COMP, {"prompt": "hi", "stream": "yes"}, "stream"),
    (COMP, {"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    (COMP, {"prompt": "hi", "echo": True}, "echo"),
    (COMP, {"prompt": "hi", "stop_token_ids": [1, -1]}, "stop_token_ids"),
    (COMP, {"prompt": "hi", "model": 7}, "model"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": "hi"}, "messages"),
    (CHAT, {"prompt": "hi"}, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user"}]}, "messages[0].content"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    (CHAT, {"messages": USER, "logprobs": 5}, "logprobs"),
    (CHAT, {"messages": USER, "top_logprobs": 2}, "top_logprobs"),
    (CHAT, {"messages": USER, "top_logprobs": 50, "logprobs": True}, "top_logprobs"),
    (CHAT, {"messages": USER, "max_completion_tokens": -1}, "max_completion_tokens"),
    (CHAT, {"messages": USER, "tools": [{"type": "function"}]}, "tools"),
    (CHAT, {"messages": USER, "presence_penalty": 0.5}, "presence_penalty"),
]


@pytest.mark.parametrize("path, body, field", BAD, ids=[f"bad{i}-{f}" for i, (_, _, f) in enumerate(BAD)])
def test_malformed_requests_get_400_naming_the_field(server, path, body, field):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + path, timeout=60, **kw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert field in err["message"] and err["type"] == "invalid_request_error"
    if not isinstance(body, bytes) and field not in ("JSON", "JSON object"):
        assert field.split(".")[0].split("[")[0] == err["param"]


def test_an_unknown_model_is_404_as_openai(server):
    r = httpx.post(server.url + COMP, json={"prompt": "hi", "model": "gpt-4"}, timeout=60)
    assert r.status_code == 404
    err = r.json()["error"]
    assert "gpt-4" in err["message"] and err["param"] == "model" and err["code"] == "model_not_found"


def test_the_server_keeps_serving_after_bad_requests(server):
    for path, body, _ in BAD:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        assert httpx.post(server.url + path, timeout=60, **kw).status_code == 400
    r = httpx.post(server.url + COMP, json={"model": "tiny", "prompt": "hi", "max_tokens": 3, "temperature": 0,
                                            "user": "someone", "some_future_field": {"x": 1}}, timeout=600)
    assert r.status_code == 200 and len(r.json()["choices"]) == 1  # unknown fields are ignored


def test_a_template_that_refuses_the_messages_is_a_400(tmp_path, tiny_llama_dir):
    """Llama-2's template raises on roles that do not alternate; the message says so (no model is needed)."""
    from reclm_jax.service.http import BadRequest
    from reclm_jax.serve.config import ServeConfig
    from reclm_jax.serve.engine import Engine
    from reclm_jax.serve.protocol import parse_request
    from reclm_jax.testing.tiny_model import build_tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_tokenizer(tmp_path / "tok", style="llama2"))

    class Info:  # the two methods validation calls, the engine's own code
        vocab_size, max_model_len, tokenizer, model_dir = len(tok), 2048, tok, tmp_path
        encode, render_chat = Engine.encode, Engine.render_chat

    body = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    with pytest.raises(BadRequest, match="alternate") as e:
        parse_request(body, "chat", Info(), ServeConfig(served_model_name="m"))
    assert e.value.param == "messages"
    ok = parse_request({"messages": body["messages"][:1]}, "chat", Info(), ServeConfig(served_model_name="m"))
    assert tok.decode(ok.prompts[0]).startswith("<s>[INST] a [/INST]")
