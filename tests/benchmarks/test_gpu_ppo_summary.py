"""benchmarks/gpu_ppo.py's summary on made-up iterations: the phase split and rollout tokens/s over the timed
iterations (the first is the warm-up), compile times apart, the printed lines; rl_phases' counting scorer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_DIR))
_spec = importlib.util.spec_from_file_location("bench_gpu_ppo", _DIR / "gpu_ppo.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
import rl_phases  # noqa: E402  (benchmarks/ is on the path now)


def _it(rollout, logprobs, update, tokens, compiled=0, updates=16, epochs=4):
    return {"rollout": rollout, "reward": 0.01, "logprobs": logprobs, "update": update,
            "wall": rollout + 0.01 + logprobs + update, "updates": updates, "epochs": epochs, "compiled": compiled,
            "reward_mean": 0.25, "tokens": tokens}


ITERATIONS = [_it(30.0, 10.0, 60.0, 2048, compiled=5), _it(2.0, 0.5, 4.0, 2048), _it(4.0, 0.7, 6.0, 1024,
                                                                                       updates=8, epochs=2),
              _it(3.0, 0.6, 5.0, 2048, compiled=1)]


def test_summary_takes_medians_of_the_timed_iterations():
    s = bench.summarise(ITERATIONS)
    assert s["phases_s"] == pytest.approx({"rollout": 3.0, "reward": 0.01, "logprobs": 0.6, "update": 5.0})
    assert s["iteration_s"] == pytest.approx(3.0 + 0.01 + 0.6 + 5.0)
    # Each timed iteration's own rate (2048 / 2, 1024 / 4, 2048 / 3), then the median: not tokens over time.
    assert s["rollout_tok_s"] == pytest.approx(2048 / 3, abs=0.05) and s["rollout_tokens"] == 2048
    assert s["updates"] == 16 and s["epochs"] == 4
    # Compile = the warm-up minus the timed median, per phase; programs counted in the warm-up only.
    assert s["compile_s"] == pytest.approx({"rollout": 27.0, "reward": 0.0, "logprobs": 9.4, "update": 55.0})
    assert s["programs_compiled"] == 5 and s["recompiled_in_timed_iterations"] == 1
    assert s["warmup_s"] == pytest.approx(100.01)


def test_a_warm_up_alone_gives_no_figures():
    s = bench.summarise(ITERATIONS[:1])
    assert s["iteration_s"] is None and s["rollout_tok_s"] is None
    assert set(s["compile_s"].values()) == {None}


def test_report_prints_the_split_the_rate_and_the_compile_times():
    r = {"model": "Llama-2-7B", "device": "NVIDIA H200", "prompts": 8, "samples": 2, "prompt_tokens_mean": 255.5,
         "new_tokens": 128, "peak_mem_gib": 40.0, **bench.summarise(ITERATIONS)}
    first, second, *rest = bench.report(r).splitlines()
    assert first.startswith("Llama-2-7B PPO iteration | NVIDIA H200 | 8 prompts x 2 responses, prompt ~256 + up to "
                            "128 new tokens | 8.61 s = rollout 3.00 + reward 0.01 + logprobs 0.60 + update 5.00 s")
    assert "rollout 683 tok/s (2048 tokens)" in first and "16 updates in 4 epochs" in first
    assert second == ("  [Llama-2-7B] compile (5 programs; warm-up iteration 100.01 s): rollout 27.0 s, reward 0.0 s, "
                      "logprobs 9.4 s, update 55.0 s")
    assert rest == ["  warning: 1 programs compiled during timed iterations"]
    r.update(bench.summarise(ITERATIONS[:1]), peak_mem_gib=None)
    assert "– s = rollout –" in bench.report(r) and "peak mem – GiB" in bench.report(r)


def test_counting_scorer_counts_the_responses_it_scores():
    from reclm_jax.rl.toy import TokenModulusReward

    scorer = rl_phases.CountingScorer(TokenModulusReward(4))
    out = scorer([{}, {}], ["", ""], [[4, 5, 8], [1]])
    assert scorer.tokens == 4 and scorer.selection == "sum"
    np.testing.assert_array_equal(out[0], [1.0, 0.0, 1.0])
    scorer([{}], [""], [[2, 3]])
    assert scorer.tokens == 2  # the last call's responses, not a running total
