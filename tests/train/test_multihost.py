"""Two JAX processes on this one machine (loopback coordinator, 4 simulated CPU devices each, started by
scripts/launch_multihost.sh) against one process with 8 devices, the same global batch: three SFT steps and one
PPO iteration give the same losses, only process 0 writes the run's files, and a checkpoint the two processes
wrote resumes in one process to the same step and adapter.

Each run is a real ``python -m reclm_jax.<stage>`` (its entry point initialises ``jax.distributed``), so this
takes minutes of compiling (2 min 48 s of CPU time in all, measured 2026-12-01 on this 2-core machine): marked
slow; .ci/run runs it as a second pytest call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reclm_jax.service.server import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 1200


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECLM_JAX_") or k == "RECLM_JAX_COMPILATION_CACHE"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(REPO))
    return env


def _start(stage: str, args: list[str], processes: int, log: Path) -> subprocess.Popen:
    """``python -m reclm_jax.<stage> args`` as one process with 8 devices or two with 4 each (the launcher)."""
    cmd = [sys.executable, "-m", f"reclm_jax.{stage}", *args]
    if processes == 2:
        cmd = ["bash", str(REPO / "scripts" / "launch_multihost.sh"), "--hosts", "127.0.0.1,127.0.0.1", "--port",
               str(free_port()), "--", *cmd]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(8 // processes), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _finish(p: subprocess.Popen, log: Path) -> str:
    try:
        p.wait(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
    text = log.read_text()
    assert p.returncode == 0, text[-4000:]
    return text


def _records(run: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _adapter(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / "adapter" / "lora_adapter.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset_dir, tiny_llama_dir, tiny_teacher_dir):
    """Every run of the module, started together (they are independent) so 2 cores overlap their compiles."""
    root = tmp_path_factory.mktemp("multihost")
    sft = ["--config", "configs/sft_tiny.yaml", f"data_path={tiny_dataset_dir}", f"model.path={tiny_llama_dir}",
           f"teacher.checkpoint={tiny_teacher_dir}", "train.max_steps=3", "train.save_every=2",
           "train.batch_size=8", "data.val_tasks=[]"]
    rl = ["--config", "configs/rl_tiny.yaml", f"model.path={tiny_llama_dir}", "train.max_iterations=1"]
    jobs = {(stage, n): _start(stage, [*args, f"output_dir={root / f'{stage}{n}'}"], n, root / f"{stage}{n}.log")
            for stage, args in (("sft", sft), ("rl", rl)) for n in (1, 2)}
    logs = {key: _finish(p, root / f"{key[0]}{key[1]}.log") for key, p in jobs.items()}
    # The two processes' checkpoint of step 2, resumed by one process with 8 devices for the last step.
    resumed = root / "sft_resumed"
    shutil.copytree(root / "sft2", resumed)
    shutil.rmtree(resumed / "checkpoints" / "3")
    _finish(_start("sft", [*sft, f"output_dir={resumed}", "resume=true"], 1, root / "resumed.log"),
            root / "resumed.log")
    return {"root": root, "logs": logs, "resumed": resumed}


def test_two_processes_form_one_mesh(runs):
    for stage in ("sft", "rl"):
        assert "distributed: 2 processes, 8 devices (4 here), via config/env" in runs["logs"][(stage, 2)]
        assert "distributed:" not in runs["logs"][(stage, 1)]  # a plain run starts no coordinator


def test_three_sft_steps_match_one_process(runs):
    one, two = _records(runs["root"] / "sft1"), _records(runs["root"] / "sft2")
    assert [r["step"] for r in two] == [1, 2, 3]  # one log, written by process 0 alone (two would append twice)
    for key in ("loss", "grad_norm", "lr"):
        np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], rtol=2e-5, err_msg=key)
    assert one[-1]["loss"] < one[0]["loss"]  # the steps trained
    a, b = _adapter(runs["root"] / "sft1"), _adapter(runs["root"] / "sft2")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-6, err_msg=k)
    assert sorted(p.name for p in (runs["root"] / "sft2" / "checkpoints").iterdir()) == ["2", "3"]


def test_one_ppo_iteration_matches_one_process(runs):
    one, two = _records(runs["root"] / "rl1"), _records(runs["root"] / "rl2")
    assert len(one) == len(two) == 1
    for key in ("reward", "kl", "loss", "pg_loss", "value_loss", "entropy", "policy_kl", "grad_norm"):
        np.testing.assert_allclose(two[0][key], one[0][key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert one[0]["updates"] == two[0]["updates"] > 1


def test_a_two_process_checkpoint_resumes_in_one_process(runs):
    one = _records(runs["root"] / "sft1")
    resumed = _records(runs["resumed"])
    assert [r["step"] for r in resumed] == [1, 2, 3, 3]  # the copied log, then the resumed run's step 3
    np.testing.assert_allclose(resumed[-1]["loss"], one[-1]["loss"], rtol=2e-5)
    a, c = _adapter(runs["root"] / "sft1"), _adapter(runs["resumed"])
    for k in a:
        np.testing.assert_allclose(c[k], a[k], atol=1e-6, err_msg=k)
