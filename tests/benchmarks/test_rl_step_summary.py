"""benchmarks/rl_step.py's parent side on made-up worker outputs: the phase split after the warm-up iteration,
compile times apart, rollout tokens/s of both engines and their ratio, peak memory; its synthetic prompts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "rl_step.py"
_spec = importlib.util.spec_from_file_location("bench_rl_step", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _it(rollout, reward, logprobs, update, compiled=0, updates=16):
    return {"rollout": rollout, "reward": reward, "logprobs": logprobs, "update": update, "updates": updates,
            "compiled": compiled, "reward_mean": 0.5}


def _gen(times, tokens, rows=16):
    return {"first_s": 9.0, "times": list(times), "tokens": list(tokens), "rows": rows}


OUTPUTS = [
    {"engine": "reclm-jax", "round": 1, "version": "jax", "load_s": 10.0, "max_rss_gib": 3.0,
     "iterations": [_it(40.0, 1.0, 20.0, 90.0, compiled=5), _it(10.0, 1.0, 2.0, 30.0), _it(12.0, 1.0, 4.0, 34.0)],
     "generate": _gen([8.0, 10.0], [1600, 1600])},
    {"engine": "transformers", "round": 1, "version": "torch", "load_s": 4.0, "max_rss_gib": 1.5,
     "generate": _gen([40.0, 32.0], [1600, 1280])},
    {"engine": "transformers", "round": 2, "version": "torch", "load_s": 6.0, "max_rss_gib": 1.7,
     "generate": _gen([20.0], [1000])},
    {"engine": "reclm-jax", "round": 2, "version": "jax", "load_s": 12.0, "max_rss_gib": 3.2,
     "iterations": [_it(20.0, 1.0, 6.0, 40.0, compiled=5), _it(14.0, 3.0, 6.0, 38.0, compiled=1, updates=12)],
     "generate": _gen([5.0], [1200])},
]


def test_summary_splits_phases_and_compares_the_rollout():
    s = bench.summarise(OUTPUTS)
    # Timed iterations (every worker's first is its warm-up): rollout 10, 12, 14 -> median 12; update 30, 34, 38.
    assert s["phases_s"] == {"rollout": 12.0, "reward": 1.0, "logprobs": 4.0, "update": 34.0}
    assert s["iteration_s"] == 51.0 and s["updates"] == 16
    assert s["recompiled_in_timed_iterations"] == 1
    # Compile = the warm-up minus the median timed iteration of the same worker.
    assert s["compile_s"][0] == {"round": 1, "programs": 5, "rollout": 29.0, "reward": 0.0, "logprobs": 17.0,
                                 "update": 58.0}
    assert s["compile_s"][1]["rollout"] == 6.0
    # Best call per worker (1600 / 8 = 200, 1200 / 5 = 240; torch 1280 / 32 = 40, 1000 / 20 = 50), median of rounds.
    assert s["rollout_tok_s"] == {"reclm-jax": 220.0, "transformers": 45.0}
    assert s["ratio_rollout_jax_over_transformers"] == pytest.approx(220 / 45, abs=1e-3)
    assert s["mean_response_tokens"]["transformers"] == pytest.approx((1440 / 16 + 1000 / 16) / 2)
    assert s["max_rss_gib"] == {"reclm-jax": 3.2, "transformers": 1.7} and s["load_s"]["reclm-jax"] == 11.0


def test_report_prints_our_figure_the_baseline_and_the_ratio():
    text = bench.report(bench.summarise(OUTPUTS), 8, 2, 256)
    first, *rest = text.splitlines()
    assert first.startswith("PPO iteration, 8 prompts x 2 responses, up to 256 new tokens: 51.00 s = rollout 12.00 "
                            "+ reward 1.00 + logprobs 4.00 + update 34.00 s")
    assert any(ln.startswith("warning: 1 programs compiled") for ln in rest)
    line = next(ln for ln in rest if ln.startswith("rollout generation"))
    assert "reclm-jax 220.0 tok/s" in line and "transformers 45.0 tok/s" in line and "ratio 4.89x" in line
    assert rest[-1] == "peak memory (ru_maxrss): reclm-jax 3.20 GiB, transformers 1.70 GiB"


def test_missing_baseline_shows_a_dash():
    s = bench.summarise([o for o in OUTPUTS if o["engine"] == "reclm-jax"])
    assert s["ratio_rollout_jax_over_transformers"] is None
    assert "transformers – tok/s" in bench.report(s, 8, 2, 256)


def test_responses_end_at_their_stop_token():
    assert bench.response_tokens([5, 6, 2, 0, 0], [2]) == [5, 6, 2]
    assert bench.response_tokens([5, 6, 7], [2, 9]) == [5, 6, 7]


def test_synthetic_prompts_reach_the_asked_length(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    samples = bench.synthetic_samples(tok, 3, 160)
    lengths = [len(tok(s["input_text"])["input_ids"]) for s in samples]
    assert all(148 <= n < 220 for n in lengths), lengths
    assert len({s["input_text"] for s in samples}) == 3 and samples[0]["input_text"].startswith("<|im_start|>")
