"""The RL command end to end on the tiny model and the toy problem: exact resume after SIGKILL (adapters, critic and
value head <= 1e-6 from an uninterrupted run), the same losses on an 8-device mesh, and user errors as exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

CONFIG = str(Path(__file__).parents[2] / "configs" / "rl_tiny.yaml")
# Reward whitening over running moments and an adaptive KL coefficient: both states must survive the restart;
# 4 PPO epochs with the paper's early stop (KLT-0.05), which ends some iterations early.
RUN = ["train.max_iterations=6", "train.save_every=2", "ppo.reward_whitening=running", "ppo.kl.kind=adaptive",
       "ppo.kl.target=1.0", "ppo.kl.horizon=100", "ppo.policy_kl_threshold=0.05", "ppo.epochs=4"]


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _rl(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "reclm_jax.rl", "--config", CONFIG, *args], env=env,
                          capture_output=True, text=True, timeout=600, **kw)


def _records(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in ("adapter/lora_adapter.safetensors", "critic/lora_adapter.safetensors", "critic/value_head.safetensors"):
        out.update({f"{f}:{k}": v for k, v in load_file(str(run_dir / f)).items()})
    return out


def _args(model, out, *extra):
    return [f"model.path={model}", f"output_dir={out}", *RUN, *extra]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_llama_dir):
    out = tmp_path_factory.mktemp("rl_ref")
    r = _rl(_args(tiny_llama_dir, out), _env())
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_run_outputs(reference_run):
    rec = _records(reference_run)
    assert [r["step"] for r in rec] == [1, 2, 3, 4, 5, 6]
    assert rec[-1]["kl_coef"] != pytest.approx(0.3)  # the adaptive controller moved
    epochs = [r["epochs"] for r in rec]
    assert min(epochs) < 4 == max(epochs)  # the policy-KL early stop fired, and not always
    steps = sorted(int(p.name) for p in (reference_run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4, 6]


def test_sigkill_then_resume_matches_uninterrupted(reference_run, tmp_path, tiny_llama_dir):
    args = _args(tiny_llama_dir, tmp_path)
    # The run pauses after iteration 3 (checkpoint 2 is the latest) through the trainer's after_step hook.
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("paused_rl.py")), "3", CONFIG, *args],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 500
        while time.time() < deadline:
            log = tmp_path / "log.jsonl"
            if log.is_file() and any(json.loads(x).get("step") == 3 for x in log.read_text().splitlines()):
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("the run never reached iteration 3")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "adapter").exists()
    r = _rl(args + ["resume=true"], _env())
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = _weights(reference_run), _weights(tmp_path)
    assert set(ref) == set(got) and any("value_head" in k for k in ref)
    diff = max(float(np.max(np.abs(ref[k] - got[k]))) for k in ref)
    assert diff <= 1e-6
    assert [r["step"] for r in _records(tmp_path)] == [1, 2, 3, 3, 4, 5, 6]  # resumed from checkpoint 2
    for key in ("loss", "reward", "kl_coef", "value_loss"):
        np.testing.assert_allclose([r[key] for r in _records(tmp_path)][-4:],
                                   [r[key] for r in _records(reference_run)][-4:], atol=1e-6, err_msg=key)


def test_eight_device_mesh_gives_the_same_losses(reference_run, tmp_path, tiny_llama_dir):
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = _rl(_args(tiny_llama_dir, tmp_path, "mesh.data=2", "mesh.fsdp=2", "mesh.tp=2"), env)
    assert r.returncode == 0, r.stderr[-3000:]
    got, ref = _records(tmp_path), _records(reference_run)
    np.testing.assert_array_equal([r["reward"] for r in got], [r["reward"] for r in ref])  # same samples
    for key in ("loss", "value_loss", "pg_loss", "kl"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in ref], atol=1e-4, rtol=1e-4, err_msg=key)


def test_user_errors_exit_2(tmp_path, tiny_llama_dir):
    r = _rl([f"model.path={tiny_llama_dir}", f"output_dir={tmp_path}", "data.source=tasks"], _env())
    assert r.returncode == 2 and "data_path" in r.stderr and "Traceback" not in r.stderr
    r = _rl([f"model.path={tiny_llama_dir}", "ppo.whitening=batch"], _env())
    assert r.returncode == 2 and "ppo.whitening" in r.stderr


def test_exported_actor_equals_the_trained_actor(reference_run, tmp_path, tiny_llama_dir):
    """``python -m reclm_jax.rl.merge`` merges the actor (LoRA + its own lm_head) into the backbone as an HF
    folder; the critic and the value head stay out of it."""
    import jax.numpy as jnp

    from reclm_jax.models.adapter_io import load_adapter
    from reclm_jax.models.hf_loading import load_llama

    out = tmp_path / "merged"
    r = subprocess.run([sys.executable, "-m", "reclm_jax.rl.merge", "--run", str(reference_run), "--out", str(out)],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 500, (2, 24)), dtype=jnp.int32)
    base = load_llama(tiny_llama_dir, progress=False)
    name = load_adapter(reference_run / "adapter", base)
    assert name == "actor"
    want = base(tokens, adapter=name).logits
    assert float(jnp.max(jnp.abs(want - base(tokens).logits))) > 1e-3  # the actor moved away from the reference
    got = load_llama(out, progress=False)(tokens).logits
    assert float(jnp.max(jnp.abs(want - got))) <= 1e-5
