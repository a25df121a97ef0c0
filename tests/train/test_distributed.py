"""Where a multi-host launch's settings come from (config keys, the launcher's variables, JAX's cluster detection),
and the mistakes that stop before any coordinator is contacted. The two-process runs are in test_multihost.py."""

from __future__ import annotations

import pytest

from reclm_jax.config import load_config
from reclm_jax.errors import UserError
from reclm_jax.train.distributed import DistributedConfig, initialize, refuse_multi_process, resolve


def no_cluster():
    return None


def test_a_plain_machine_is_one_process():
    launch = resolve(DistributedConfig(), env={}, cluster=no_cluster)
    assert not launch.distributed and launch.via == "single"
    assert not initialize(DistributedConfig(), env={}).distributed  # nothing is started


def test_config_keys_win_over_the_environment_key_by_key():
    env = {"RECLM_JAX_COORDINATOR": "envhost:1", "RECLM_JAX_NUM_PROCESSES": "4", "RECLM_JAX_PROCESS_ID": "3",
           "RECLM_JAX_LOCAL_DEVICE_IDS": "2,3"}
    launch = resolve(DistributedConfig(coordinator_address="cfg:29500", process_id=1), env=env, cluster=no_cluster)
    assert launch.distributed and launch.via == "config/env"
    assert (launch.coordinator_address, launch.num_processes, launch.process_id) == ("cfg:29500", 4, 1)
    assert launch.local_device_ids == (2, 3)


def test_jax_own_coordinator_variable_counts():
    env = {"JAX_COORDINATOR_ADDRESS": "h:5", "RECLM_JAX_NUM_PROCESSES": "2", "RECLM_JAX_PROCESS_ID": "0"}
    assert resolve(DistributedConfig(), env=env, cluster=no_cluster).coordinator_address == "h:5"


def test_a_detected_cluster_of_several_processes_starts_jax_detection():
    launch = resolve(DistributedConfig(), env={}, cluster=lambda: ("SlurmCluster", 16))
    assert launch.distributed and launch.via == "SlurmCluster"
    assert launch.coordinator_address is None and launch.process_id is None  # JAX fills them in
    # a one-task SLURM job (an interactive allocation) stays a plain process: no coordinator port is opened
    assert not resolve(DistributedConfig(), env={}, cluster=lambda: ("SlurmCluster", 1)).distributed


def test_mode_never_ignores_the_launcher_and_mode_always_initialises():
    env = {"RECLM_JAX_COORDINATOR": "h:1", "RECLM_JAX_NUM_PROCESSES": "2", "RECLM_JAX_PROCESS_ID": "0"}
    assert not resolve(DistributedConfig(mode="never"), env=env, cluster=no_cluster).distributed
    assert resolve(DistributedConfig(mode="always"), env={}, cluster=no_cluster).distributed
    # num_processes 1 given explicitly: one process, whatever a launcher says
    assert not resolve(DistributedConfig(num_processes=1), env={}, cluster=lambda: ("SlurmCluster", 8)).distributed


@pytest.mark.parametrize("cfg, env, match", [
    (DistributedConfig(coordinator_address="h:1"), {}, "distributed.num_processes, distributed.process_id"),
    (DistributedConfig(num_processes=2, process_id=0), {}, "distributed.coordinator_address"),
    (DistributedConfig(coordinator_address="nohost", num_processes=2, process_id=0), {}, "must be host:port"),
    (DistributedConfig(coordinator_address="h:1", num_processes=2, process_id=2), {}, r"in 0\.\.1, got 2"),
    (DistributedConfig(), {"RECLM_JAX_NUM_PROCESSES": "two"}, "RECLM_JAX_NUM_PROCESSES='two'"),
    (DistributedConfig(), {"RECLM_JAX_NUM_PROCESSES": "0"}, "must be >= 1"),
    (DistributedConfig(), {"RECLM_JAX_LOCAL_DEVICE_IDS": "0;1", "RECLM_JAX_NUM_PROCESSES": "2"}, "device ids"),
])
def test_mistakes_name_the_key_or_variable(cfg, env, match):
    with pytest.raises(UserError, match=match):
        resolve(cfg, env=env, cluster=no_cluster)


def test_the_stage_configs_have_the_section():
    from reclm_jax.rl.config import RLConfig
    from reclm_jax.sft.config import SFTConfig

    cfg = load_config(SFTConfig, None, ["data_path=d", "output_dir=o", "distributed.coordinator_address=h:9",
                                        "distributed.num_processes=2", "distributed.local_device_ids=[0,1]"])
    assert cfg.distributed == DistributedConfig(coordinator_address="h:9", num_processes=2, local_device_ids=(0, 1))
    assert load_config(RLConfig, None, ["distributed.mode=never"]).distributed.mode == "never"
    with pytest.raises(UserError, match="distributed.mode"):
        load_config(RLConfig, None, ["distributed.mode=maybe"])


def test_single_process_stages_refuse_a_multi_process_launch():
    refuse_multi_process("teacher", env={})
    with pytest.raises(UserError, match="teacher runs as one process"):
        refuse_multi_process("teacher", env={"RECLM_JAX_COORDINATOR": "h:1", "RECLM_JAX_NUM_PROCESSES": "2",
                                             "RECLM_JAX_PROCESS_ID": "1"})


def _stage(module: str, *args: str, env: dict | None = None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECLM_JAX_") or "COMPILATION" in k}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=repo, capture_output=True, text=True,
                          timeout=120, env={**base, "PYTHONPATH": str(repo), **(env or {})})


def test_entry_points_stop_on_launch_mistakes_with_exit_2():
    # the stage entry points resolve the launch right after the config, before a model or dataset is read
    res = _stage("reclm_jax.rl", "--config", "configs/rl_tiny.yaml", "model.path=/nonexistent",
                 "distributed.num_processes=2")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "error: a multi-process launch needs distributed.coordinator_address, distributed.process_id" in res.stderr
    res = _stage("reclm_jax.sft", "--config", "configs/sft_tiny.yaml", "data_path=/x", "model.path=/x",
                 env={"RECLM_JAX_COORDINATOR": "127.0.0.1:1", "RECLM_JAX_NUM_PROCESSES": "2",
                      "RECLM_JAX_PROCESS_ID": "5"})
    assert res.returncode == 2 and "distributed.process_id (RECLM_JAX_PROCESS_ID) must be in 0..1" in res.stderr
    res = _stage("reclm_jax.teacher.train", "--config", "configs/teacher_tiny.yaml", "data_path=/x", "output_dir=/x",
                 env={"RECLM_JAX_COORDINATOR": "127.0.0.1:1", "RECLM_JAX_NUM_PROCESSES": "2",
                      "RECLM_JAX_PROCESS_ID": "0"})
    assert res.returncode == 2 and "runs as one process" in res.stderr, res.stderr
