"""Sharding on 8 simulated CPU devices (in a subprocess, since this process's JAX may already be set up)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from reclm_jax.errors import UserError
from reclm_jax.models.llama_config import from_hf_config
from reclm_jax.models.sharding import MeshConfig, make_mesh, partition_spec
from reclm_jax.testing.tiny_model import tiny_llama_config, write_tiny_llama

# SmolLM2-135M's attention (9 query heads, 3 KV heads, head_dim 64) around small other widths
SMOLLM2_HEADS = {"num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "hidden_size": 192,
                 "intermediate_size": 384}


def run_check(script: str, model_dir) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name(script)), str(model_dir)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mesh_2x2x2_shards_parameters_and_matches_single_device(tiny_llama_factory):
    res = run_check("mesh_check.py", tiny_llama_factory("llama3"))
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

    cfg = from_hf_config({**tiny_llama_config("smollm2", 512), "num_attention_heads": 8, "num_key_value_heads": 4})
    # 4 KV heads x 32 = 128 columns split into 4 whole heads; an MLP dim of 9 does not divide and is replicated
    assert tuple(partition_spec("model.layers.0.self_attn.k_proj.kernel", (128, 128), FakeMesh(), cfg)) == ("fsdp", "tp")
    assert tuple(partition_spec("model.layers.0.mlp.up_proj.kernel", (128, 9), FakeMesh(), cfg)) == ("fsdp", None)
    assert tuple(partition_spec("model.layers.0.mlp.down_proj.full.actor", (1536, 576), FakeMesh(), cfg)) == ("tp", "fsdp")


def test_tp_splits_attention_by_whole_heads_only(tmp_path, tiny_tokenizer_dir):
    """SmolLM2's 9 heads x 64 = 576 columns divide by tp=2 but that split would cut head 4 in half: on tp=2 the
    attention weights stay whole on tp (MLP still splits), on tp=3 each device holds 3 whole query heads and one
    KV head; both forwards (with a LoRA adapter on q/k/v/o) equal the 1-device forward."""
    d = write_tiny_llama(tmp_path / "heads", num_layers=1, tokenizer_dir=tiny_tokenizer_dir,
                         shape=SMOLLM2_HEADS)
    res = run_check("head_split_check.py", d)
    assert res["devices"] == 6
    hd = SMOLLM2_HEADS["head_dim"]
    attn = "model.layers.0.self_attn."
    tp3, tp2 = res["tp3"]["layout"], res["tp2"]["layout"]
    for proj, heads in (("q_proj", 9), ("k_proj", 3), ("v_proj", 3)):
        assert tp3[attn + proj + ".kernel"]["spec"] == ["fsdp", "tp"]
        assert tp3[attn + proj + ".kernel"]["shard"][1] == heads // 3 * hd  # whole heads per device
        assert tp3[attn + proj + ".lora.actor.b"]["spec"] == [None, "tp"]  # B's columns as the kernel's
        assert tp2[attn + proj + ".kernel"]["spec"] == ["fsdp", None]
        assert tp2[attn + proj + ".lora.actor.b"]["spec"] == [None, None]
    assert tp3[attn + "o_proj.kernel"]["spec"] == ["tp", "fsdp"] and tp3[attn + "o_proj.kernel"]["shard"][0] == 3 * hd
    assert tp3[attn + "o_proj.lora.actor.a"]["spec"] == ["tp", None]  # A's rows as o's rows
    assert tp2[attn + "o_proj.kernel"]["spec"] == [None, "fsdp"]
    assert tp2[attn + "o_proj.lora.actor.a"]["spec"] == [None, None]
    # the MLP is not made of heads: its 384 columns split on either tp
    assert tp2["model.layers.0.mlp.up_proj.kernel"]["spec"] == ["fsdp", "tp"]
    assert tp2["model.layers.0.mlp.up_proj.lora.actor.b"]["spec"] == [None, "tp"]
    assert tp3["model.layers.0.mlp.down_proj.kernel"]["spec"] == ["tp", "fsdp"]
    assert res["adapter_effect"] > 1e-3  # the adapters move the logits, so a misplaced B would show
    assert res["tp3"]["max_diff"] <= 1e-5 and res["tp2"]["max_diff"] <= 1e-5
