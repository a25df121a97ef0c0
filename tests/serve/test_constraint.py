"""The ``reclm_constraint`` request key on a live server started with a catalogue (the tiny dataset): greedy
and sampled answers obey an explicit constraint and a task sample's, concurrent constrained requests share a
decode, and the key's mistakes (or a server without a catalogue) are 400s naming it."""

from __future__ import annotations

import threading

import httpx
import pytest

from reclm_jax.decoding import ListConstraint, constraint_for_sample
from reclm_jax.decoding.check import violations
from reclm_jax.eval.parsing import parse_list


@pytest.fixture(scope="module")
def constrained(tiny_llama_dir, tiny_dataset_dir, serve_config):
    from reclm_jax.serve.app import create_app
    from reclm_jax.serve.engine import load_engine
    from reclm_jax.service.server import BackgroundServer

    engine = load_engine(tiny_llama_dir, max_batch=4, constrain_data=tiny_dataset_dir, item_index="title")
    with BackgroundServer(create_app(engine, serve_config(max_wait_ms=50.0))) as s:
        yield s, engine


def _post(server, body):
    return httpx.post(server.url + "/v1/completions", json={"model": "tiny", "max_tokens": 200, **body},
                      timeout=600)


def _check(engine, tiny_raw_categories, text, c):
    assert violations(parse_list(text), c, engine.catalogue, tiny_raw_categories) == [], text


def test_constrained_answers_obey_their_rules(constrained):
    server, engine = constrained
    cat = engine.catalogue
    i2c = {it: [c for c in cat.categories if cat.item_cats[r, cat.cat_index[c] // 32] >> (cat.cat_index[c] % 32) & 1]
           for r, it in enumerate(cat.items)}
    explicit = {"item_count": 3, "category": "Drama", "category_mode": "only", "exclude": cat.items[:5]}
    fields = {"item_count": 4, "sub_sequential": cat.items[5:9], "target_category": "Comedy", "category_count": 2}
    cases = [(explicit, ListConstraint(k_min=3, k_max=3, category="Drama", category_mode="only",
                                       exclude=tuple(cat.items[:5]))),
             ({"task": "SFTTestPersonalCategoryRateMP_30", "input_field_data": fields},
              constraint_for_sample("SFTTestPersonalCategoryRateMP_30", fields))]
    results = {}

    def ask(j, spec, temperature):
        results[j, temperature] = _post(server, {"prompt": "Recommend films:", "temperature": temperature,
                                                 "seed": 3, "reclm_constraint": spec})

    threads = [threading.Thread(target=ask, args=(j, spec, t)) for j, (spec, _) in enumerate(cases)
               for t in (0, 1.0)]
    calls = engine.decode_calls
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (j, _), r in results.items():
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        _check(engine, i2c, choice["text"], cases[j][1])
    assert engine.decode_calls - calls <= 3  # the two greedy requests (one key) may share a decode


def test_constraint_mistakes_are_400s(constrained, server):
    cserver, _ = constrained
    for spec, words in (({"item_count": -1}, "item_count"), ({"colour": 1}, "unknown fields"),
                        ({"category": "Nope", "category_mode": "only"}, "unknown category"), ("x", "true")):
        r = _post(cserver, {"prompt": "x", "reclm_constraint": spec})
        assert r.status_code == 400 and words in r.text and r.json()["error"]["param"] == "reclm_constraint"
    r = _post(server, {"prompt": "x", "reclm_constraint": True})  # the shared server has no catalogue
    assert r.status_code == 400 and "--constrain-data" in r.text
