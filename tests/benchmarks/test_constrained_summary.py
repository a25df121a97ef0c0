"""benchmarks/constrained.py: the parent's summary on made-up worker outputs (medians over rounds, slowdown,
the target, violations, the scale figures), the synthetic titles, and (slow) a --smoke run end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "constrained.py"
_spec = importlib.util.spec_from_file_location("bench_constrained", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _decode(worker, rate, bad=0, unfinished=0):
    out = {"worker": worker, "tokens_per_s": rate}
    if worker == "constrained":
        out.update(build_s=1.5, rows_violating=bad, rows_unfinished=unfinished)
    return out


def test_summary_and_table():
    scale = {"worker": "scale", "items": 1000, "build_s": 2.0, "nodes": 5000, "device_bytes": 2 ** 20,
             "row_state_bytes": 16 * 2048, "batch": 16, "step_ms": 0.5}
    outs = [_decode("plain", 100.0), _decode("constrained", 95.0, unfinished=1), _decode("plain", 80.0),
            _decode("constrained", 91.0, bad=2), _decode("plain", 120.0), _decode("constrained", 93.0), scale]
    s = bench.summarise(outs)
    assert s["tokens_per_s"] == {"plain": 100.0, "constrained": 93.0}
    assert s["slowdown"] == pytest.approx(0.07)
    assert s["within_target"] and s["rows_violating"] == 2 and s["rows_unfinished"] == 1
    text = bench.table(s)
    assert "7.0%" in text and "1,000" in text and "2 (1 unfinished" in text
    slow = bench.summarise([_decode("plain", 100.0), _decode("constrained", 80.0)])
    assert slow["slowdown"] == pytest.approx(0.2) and not slow["within_target"] and slow["scale"] is None
    missing = bench.summarise([_decode("plain", 100.0)])
    assert missing["slowdown"] is None and "–" in bench.table(missing)


def test_synthetic_titles_are_distinct(tiny_tokenizer_dir):
    from reclm_jax.models.tokenizer import load_tokenizer

    titles = bench.synthetic_titles(load_tokenizer(tiny_tokenizer_dir), 500, seed=1)
    assert len(titles) == len(set(titles)) == 500
    assert all(t.endswith(")") and 2 <= len(t.split()) - 1 <= 5 for t in titles)


@pytest.mark.slow
def test_smoke_run(tmp_path):
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, str(_PATH), "--smoke", "--json", str(out)], check=True, timeout=900)
    r = json.loads(out.read_text().splitlines()[-1])
    s = r["summary"]
    assert not r["failures"] and s["rows_violating"] == 0
    assert s["tokens_per_s"]["plain"] > 0 and s["tokens_per_s"]["constrained"] > 0
    assert s["scale"]["items"] == 2000 and s["scale"]["device_bytes"] > 0
