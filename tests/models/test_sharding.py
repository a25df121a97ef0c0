"""Sharding on 8 simulated CPU devices (in a subprocess, since this process's JAX may already be set up)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from reclm_jax.errors import UserError
from reclm_jax.models.sharding import MeshConfig, make_mesh, partition_spec


def test_mesh_2x2x2_shards_parameters_and_matches_single_device(tiny_llama_factory):
    d = tiny_llama_factory("llama3")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("mesh_check.py")), str(d)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8 and res["device_count_of_kernel"] == 8
    s = res["specs"]
    assert s["model.embed_tokens.weight"] == ["tp", "fsdp"]
    assert s["model.layers.0.self_attn.q_proj.kernel"] == ["fsdp", "tp"]
    assert s["model.layers.1.self_attn.k_proj.kernel"] == ["fsdp", "tp"]
    assert s["model.layers.0.self_attn.o_proj.kernel"] == ["tp", "fsdp"]
    assert s["model.layers.0.mlp.down_proj.kernel"] == ["tp", "fsdp"]
    assert s["lm_head.kernel"] == ["fsdp", "tp"]
    assert s["model.layers.0.input_layernorm.weight"] == [None]
    assert s["model.layers.0.self_attn.q_proj.lora.actor.a"] == ["fsdp", None]
    assert s["model.layers.0.self_attn.o_proj.lora.actor.b"] == [None, "fsdp"]
    assert s["lm_head.full.actor"] == ["fsdp", "tp"]  # the actor's own head copy is laid out as the head
    assert res["max_diff"] <= 1e-5
    assert res["generate_equal"]
    # the Sampler with an explicit Runtime (mesh active, rows placed): the 1-device tokens, one compile per
    # program (8 and 5 new tokens share the 16 bucket; the processor is a second program)
    assert res["sampler_equal"] and res["sampler_prefix_equal"] and res["sampler_traces"] == 2
    assert res["row_data_equal"] and res["row_data_applied"]
    assert res["read_rows_ok"]  # results are assembled from the addressable shards


def test_mesh_config_and_indivisible_dims():
    mesh = make_mesh(MeshConfig(data=-1))
    assert mesh.axis_names == ("data", "fsdp", "tp") and mesh.shape["data"] == jax.device_count()
    with pytest.raises(UserError, match="needs 4 devices"):
        make_mesh(MeshConfig(data=2, fsdp=2, tp=1), devices=jax.devices()[:1])
    with pytest.raises(UserError, match="at most one"):
        make_mesh(MeshConfig(data=-1, fsdp=-1))

    class FakeMesh:
        shape = {"data": 1, "fsdp": 2, "tp": 4}

    # 3 KV heads x 64 = 192 columns divide by tp=4, a 9-wide dim does not and is replicated
    assert tuple(partition_spec("model.layers.0.self_attn.k_proj.kernel", (576, 192), FakeMesh())) == ("fsdp", "tp")
    assert tuple(partition_spec("model.layers.0.self_attn.k_proj.kernel", (576, 9), FakeMesh())) == ("fsdp", None)
    assert tuple(partition_spec("model.layers.0.mlp.down_proj.full.actor", (1536, 576), FakeMesh())) == ("tp", "fsdp")
