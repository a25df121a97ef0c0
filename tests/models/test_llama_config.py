"""Reading config.json in both forms, RoPE frequencies against transformers, unsupported configs."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from reclm_jax.errors import UserError
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.llama_config import from_hf_config
from reclm_jax.models.rope import inverse_frequencies


def test_transformers5_rope_parameters_form_loads_the_same(tiny_llama_factory, tmp_path):
    d = tiny_llama_factory("llama3")
    # transformers 5 rewrites the config with a "rope_parameters" dict and no top-level rope_theta.
    new = tmp_path / "v5"
    shutil.copytree(d, new)
    transformers.LlamaConfig.from_pretrained(d).save_pretrained(new)
    raw = json.loads((new / "config.json").read_text())
    assert "rope_parameters" in raw and "rope_theta" not in raw and "rope_scaling" not in raw
    old_cfg, new_cfg = from_hf_config(d), from_hf_config(new)
    assert new_cfg == old_cfg
    assert new_cfg.rope_theta == 500000.0 and new_cfg.rope_scaling.rope_type == "llama3"
    tokens = np.arange(4, 300).reshape(1, -1) % 500
    a = np.asarray(load_llama(d, progress=False)(tokens).logits)
    b = np.asarray(load_llama(new, progress=False)(tokens).logits)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", ["llama2", "llama3"])
def test_inverse_frequencies_match_transformers(tiny_llama_factory, variant):
    d = tiny_llama_factory(variant)
    hf = transformers.LlamaConfig.from_pretrained(d)
    rope_type = hf.rope_parameters.get("rope_type", "default")
    if rope_type == "default":
        theirs = 1.0 / (hf.rope_parameters["rope_theta"] ** (torch.arange(0, 32, 2).float() / 32))
    else:
        theirs, _ = ROPE_INIT_FUNCTIONS[rope_type](hf, "cpu")
    np.testing.assert_allclose(inverse_frequencies(from_hf_config(d)), theirs.numpy(), rtol=1e-6)


def test_linear_rope_scaling_divides_frequencies():
    base = {"model_type": "llama", "vocab_size": 8, "hidden_size": 64, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    plain = inverse_frequencies(from_hf_config(base))
    scaled = inverse_frequencies(from_hf_config({**base, "rope_scaling": {"type": "linear", "factor": 4.0}}))
    np.testing.assert_allclose(scaled, plain / 4.0, rtol=1e-6)


def test_unsupported_configs_are_user_errors(tmp_path):
    cfg = {"model_type": "mistral", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
           "num_hidden_layers": 1, "num_attention_heads": 2}
    with pytest.raises(UserError, match="unsupported model_type 'mistral'"):
        from_hf_config(cfg)
    with pytest.raises(UserError, match="unsupported RoPE type 'yarn'"):
        from_hf_config({**cfg, "model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(UserError, match="no config.json"):
        from_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(UserError, match="not valid JSON"):
        from_hf_config(tmp_path)
