"""benchmarks/compile_time.py's parent side on made-up worker outputs: per-variant figures, the unrolled / scanned
ratios and the one-line report; the worker's model config follows the flags."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "compile_time.py"
_spec = importlib.util.spec_from_file_location("bench_compile_time", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _out(variant, compile_s, cpu_s, lower_s):
    return {"variant": variant, "compile_s": compile_s, "compile_cpu_s": cpu_s, "lower_s": lower_s,
            "cache_hit": False, "first_step_s": 0.5, "loss": 8.31, "jax": "0.10.2"}


def test_summary_gives_both_figures_and_the_ratios():
    s = bench.summarize({"unrolled": _out("unrolled", 120.0, 100.0, 30.0), "scanned": _out("scanned", 8.0, 5.0, 2.0)})
    assert s["unrolled_compile_s"] == 120.0 and s["scanned_compile_s"] == 8.0
    assert s["ratio_compile"] == 15.0 and s["ratio_compile_cpu"] == 20.0 and s["ratio_lower"] == 15.0
    line = bench.report_line({"layers": 32, "hidden": 256, "dtype": "bfloat16", **s})
    assert "32 layers of hidden 256" in line
    assert "unrolled 120.0 s (CPU 100.0 s" in line and "scanned 8.0 s (CPU 5.0 s" in line
    assert line.endswith("15.00x wall, 20.00x CPU")


def test_a_slower_scan_shows_as_a_ratio_below_one():
    s = bench.summarize({"unrolled": _out("unrolled", 3.0, 3.0, 1.0), "scanned": _out("scanned", 4.0, 6.0, 1.0)})
    assert s["ratio_compile"] == 0.75 and s["ratio_compile_cpu"] == 0.5


@pytest.mark.parametrize("worker", ["unrolled", "scanned"])
def test_the_worker_builds_the_asked_model(worker):
    args = argparse.Namespace(layers=32, hidden=256, vocab=4096, dtype="bfloat16", remat=True, worker=worker)
    cfg = bench.model_config(args)
    assert (cfg.num_layers, cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads) == (32, 256, 32, 8, 4)
    assert cfg.scan_layers == (worker == "scanned") and cfg.remat
