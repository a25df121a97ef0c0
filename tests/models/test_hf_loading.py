"""Loading sharded checkpoints and the errors for broken ones."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from reclm_jax.errors import UserError
from reclm_jax.models.hf_loading import load_llama


@pytest.mark.parametrize("kernels", ["xla", "cpu"])
def test_sharded_checkpoint_loads_like_single(tiny_llama_factory, kernels):
    single = tiny_llama_factory("llama2")
    sharded = tiny_llama_factory("llama2", shards=3)
    assert (sharded / "model.safetensors.index.json").is_file()
    tokens = np.arange(4, 40).reshape(2, -1)
    a = np.asarray(load_llama(single, kernels=kernels, progress=False)(tokens).logits)
    b = np.asarray(load_llama(sharded, kernels=kernels, progress=False)(tokens).logits)
    np.testing.assert_array_equal(a, b)


def test_bf16_checkpoint_is_read(tiny_llama_factory, tmp_path):
    src = tiny_llama_factory("smollm2")
    d = tmp_path / "bf16"
    shutil.copytree(src, d)
    import ml_dtypes

    w = load_file(str(src / "model.safetensors"))
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}, str(d / "model.safetensors"))
    model = load_llama(d, param_dtype="float32", progress=False)
    want = w["model.layers.0.self_attn.q_proj.weight"].astype(ml_dtypes.bfloat16).astype(np.float32).T
    np.testing.assert_array_equal(np.asarray(model.model.layers[0].self_attn.q_proj.kernel[...]), want)


def _broken_copy(src, dst, edit):
    shutil.copytree(src, dst)
    w = load_file(str(src / "model.safetensors"))
    edit(w)
    save_file(w, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_unexpected_and_misshaped_tensors_are_named(tiny_llama_factory, tmp_path):
    src = tiny_llama_factory("llama2")
    missing = _broken_copy(src, tmp_path / "missing", lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(UserError, match="lacks tensor model.layers.1.mlp.up_proj.weight"):
        load_llama(missing, progress=False)

    def add(w):
        w["model.layers.0.self_attn.q_norm.weight"] = np.ones(32, np.float32)

    extra = _broken_copy(src, tmp_path / "extra", add)
    with pytest.raises(UserError, match="unexpected tensor model.layers.0.self_attn.q_norm.weight"):
        load_llama(extra, progress=False)

    def reshape(w):
        w["model.layers.0.mlp.down_proj.weight"] = np.zeros((128, 128), np.float32)

    bad = _broken_copy(src, tmp_path / "bad", reshape)
    with pytest.raises(UserError, match=r"down_proj.weight has shape \[128, 128\], the config implies \[128, 256\]"):
        load_llama(bad, progress=False)


def test_missing_shard_and_no_weights(tiny_llama_factory, tmp_path):
    d = tmp_path / "sh"
    shutil.copytree(tiny_llama_factory("llama2", shards=2), d)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match="names shard model-00002-of-00002.safetensors, which is missing"):
        load_llama(d, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_llama_factory("llama2") / "config.json").read_text())
    with pytest.raises(UserError, match="no model.safetensors"):
        load_llama(empty, progress=False)
    cfg = json.loads((empty / "config.json").read_text())
    (empty / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(UserError, match="unsupported model_type 'gpt2'"):
        load_llama(empty, progress=False)


def test_bad_kernels_value_names_the_key(tiny_llama_factory):
    with pytest.raises(UserError, match=r"kernels must be one of auto, xla, cpu, got 'gpu'"):
        load_llama(tiny_llama_factory("llama2"), kernels="gpu", progress=False)
