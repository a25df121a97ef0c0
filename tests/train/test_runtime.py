"""The runtime layer: activation constraints present in the compiled SFT step on a mesh (8 simulated devices),
process-local batch placement, primary-only writes, the step throughput and the cadence rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reclm_jax.errors import UserError
from reclm_jax.train.cadence import Budget, Cadence, Hooks, pause_at
from reclm_jax.train.run_log import RunLog, Throughput
from reclm_jax.train.runtime import Runtime, local_runtime


@pytest.fixture(scope="module")
def mesh_findings(tiny_llama_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("mesh_step_check.py")), str(tiny_llama_dir)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_constraints_are_in_the_compiled_step_only_with_the_runtime_active(mesh_findings):
    assert mesh_findings["devices"] == 8
    # embeddings, q, MLP hidden, layer outputs (x2 layers) and logits: at least one per constrained site
    assert mesh_findings["constraints_with_mesh"] >= 8
    assert mesh_findings["constraints_without"] == 0


def test_constraints_do_not_change_the_losses(mesh_findings):
    np.testing.assert_allclose(mesh_findings["losses_mesh"], mesh_findings["losses_no_mesh"], atol=1e-6)
    np.testing.assert_allclose(mesh_findings["losses_mesh"], mesh_findings["losses_single"], atol=1e-5)
    assert mesh_findings["losses_mesh"][-1] < mesh_findings["losses_mesh"][0]  # the steps trained


def test_place_builds_the_global_batch_from_local_rows():
    rt = local_runtime()
    local = np.arange(2 * 6 * 5, dtype=np.int32).reshape(2, 6, 5)
    x = rt.place(local, batch_dim=1)
    assert x.shape == (2, 6, 5)
    np.testing.assert_array_equal(rt.to_host(x), local)
    assert rt.is_primary and rt.process_count == 1


def test_batch_size_must_divide_over_processes():
    rt = Runtime(local_runtime().mesh, process_index=1, process_count=4)
    assert rt.local_rows(8) == 2
    assert not rt.is_primary
    with pytest.raises(UserError, match="train.batch_size 6 is global"):
        rt.local_rows(6, "train.batch_size")


def test_run_log_writes_on_the_primary_only(tmp_path):
    primary, other = tmp_path / "p", tmp_path / "o"
    for out, is_primary in ((primary, True), (other, False)):
        log = RunLog(out, primary=is_primary, tensorboard=False)
        log.write("train", 1, {"loss": 2.5})
        assert log.bar(10).disable is (not is_primary)
        log.close()
    rows = [json.loads(x) for x in (primary / "log.jsonl").read_text().splitlines()]
    assert rows[0]["kind"] == "train" and rows[0]["loss"] == 2.5
    assert not other.exists()


def test_throughput_leaves_out_the_compiling_first_window():
    speed = Throughput()
    speed.add(100.0)
    time.sleep(0.05)  # the "compile"
    assert speed.rate() is None
    speed.add(1000.0)
    time.sleep(0.02)
    rate = speed.rate()
    assert rate is not None and 1000 / 0.5 < rate < 1000 / 0.02  # this window only: no compile, no earlier tokens
    speed.add(1000.0)
    time.sleep(0.2)  # a checkpoint or a validation
    speed.restart()
    speed.add(1000.0)
    time.sleep(0.02)
    assert speed.rate() > 1000 / 0.15  # the pause before restart() is not in the figure
    assert speed.rate() is None  # a window without steps has no rate


def test_cadence_rules():
    c = Cadence(log_every=3, save_every=4, val_every=0)
    assert [s for s in range(1, 10) if c.log(s)] == [1, 3, 6, 9]
    assert [s for s in range(1, 10) if c.save(s)] == [4, 8]
    assert not any(c.validate(s) for s in range(1, 10))
    assert not Budget(0).exhausted()
    b = Budget(0.01)
    time.sleep(0.02)
    assert b.exhausted()


def test_hooks_run_after_each_step():
    seen = []
    hooks = Hooks(after_step=[seen.append, pause_at(2, seconds=0.0)])
    for s in (1, 2, 3):
        hooks.run_after_step(s)
    assert seen == [1, 2, 3]
