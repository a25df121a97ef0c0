"""Merged and PEFT export, reloaded in transformers / peft and compared with the JAX model; both CLIs."""

import json

import numpy as np
import pytest
import torch
import transformers

from reclm_jax import export as export_cli
from reclm_jax import generate as generate_cli
from reclm_jax.errors import UserError
from reclm_jax.models.adapter_io import save_adapter
from reclm_jax.models.hf_export import export_merged, plan_shards
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.lora import ALL_LINEARS, LoraConfig, adapter_modules, add_lora, full_copy_modules

import jax

TOKENS = np.random.default_rng(4).integers(4, 500, (2, 20))


def trained_adapter(model, name="actor", targets=ALL_LINEARS + ("lm_head",), full_tune=()):
    cfg = LoraConfig(rank=4, alpha=8, targets=targets)
    add_lora(model, cfg, name, full_tune=full_tune)
    for i, lin in enumerate(adapter_modules(model, name).values()):
        b = lin.lora[name]["b"]
        b.set_value(jax.random.normal(jax.random.key(i), b[...].shape) * 0.05)
    for i, lin in enumerate(full_copy_modules(model, name).values()):
        w = lin.full[name]
        w.set_value(w[...] + jax.random.normal(jax.random.key(100 + i), w[...].shape) * 0.05)
    return cfg


def torch_logits(model):
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy()


@pytest.fixture(scope="module")
def smollm2_adapter(tiny_llama_factory, tmp_path_factory):
    """A tied model with an adapter on every linear and on lm_head, which it also fully tunes (its own copy),
    saved; plus the JAX logits."""
    base = tiny_llama_factory("smollm2")
    model = load_llama(base, progress=False)
    cfg = trained_adapter(model, full_tune=("lm_head",))
    ckpt = save_adapter(tmp_path_factory.mktemp("ad") / "ckpt", model, "actor", config=cfg, base_model=str(base))
    return base, ckpt, np.asarray(model(TOKENS, adapter="actor").logits)


def test_merged_export_reloads_in_transformers(smollm2_adapter, tmp_path):
    base, ckpt, want = smollm2_adapter
    out = tmp_path / "merged"
    export_cli.main(["--base", str(base), "--adapter", str(ckpt), "--out", str(out), "--max-shard-size", "300KB"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).stat().st_size <= 300_000 + 8 + 4096 for s in shards)
    assert "lm_head.weight" in index["weight_map"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["rope_theta"] == 100000.0
    assert {"generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert not (tmp_path / "merged.partial").exists()
    merged = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert np.abs(torch_logits(merged) - want).max() <= 1e-4
    # our own loader reads the sharded export too
    np.testing.assert_allclose(np.asarray(load_llama(out, progress=False)(TOKENS).logits), want, atol=1e-5)
    with pytest.raises(UserError, match="already exists"):
        export_cli.main(["--base", str(base), "--adapter", str(ckpt), "--out", str(out)])
    with pytest.raises(UserError, match=r"also fully tunes \['lm_head.weight'\]"):
        export_cli.main(["--base", str(base), "--adapter", str(ckpt), "--out", str(tmp_path / "p"), "--format", "peft"])


@pytest.mark.parametrize("variant", ["llama3", "smollm2"])
def test_peft_export_loads_with_peft(tiny_llama_factory, tmp_path, variant):
    from peft import PeftModel

    base = tiny_llama_factory(variant)
    model = load_llama(base, progress=False)
    cfg = trained_adapter(model, targets=ALL_LINEARS + ("lm_head",))
    want = np.asarray(model(TOKENS, adapter="actor").logits)
    ckpt = save_adapter(tmp_path / "ckpt", model, "actor", config=cfg)
    out = tmp_path / "peft"
    export_cli.main(["--base", str(base), "--adapter", str(ckpt), "--out", str(out), "--format", "peft"])
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["r"] == 4 and conf["lora_alpha"] == 8 and "lm_head" in conf["target_modules"]
    torch_base = transformers.LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(torch_base, out).eval()
    assert np.abs(torch_logits(peft_model) - want).max() <= 1e-4


def test_export_streams_into_capped_shards_and_keeps_ties(tiny_llama_factory, tmp_path):
    base = tiny_llama_factory("smollm2")
    model = load_llama(base, progress=False)
    out = export_merged(model, base, tmp_path / "plain", dtype="bfloat16", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "bfloat16"
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    again = load_llama(out, param_dtype="float32", progress=False)
    ref = np.asarray(model(TOKENS).logits)
    assert np.abs(np.asarray(again(TOKENS).logits) - ref).max() < 0.02
    sizes = [[1, 2], [3], [4]]
    from reclm_jax.models.safetensors_writer import TensorSpec

    specs = [TensorSpec(str(i), (n,), np.dtype(np.float32), None) for i, n in enumerate([1, 2, 3, 4])]
    assert [[s.shape[0] for s in shard] for shard in plan_shards(specs, 12)] == sizes


def test_generate_cli_prints_json(tiny_llama_factory, capsys):
    d = tiny_llama_factory("smollm2")
    generate_cli.main(["--model", str(d), "--prompt", "Recommend a movie", "--chat", "--max-new-tokens", "5",
                       "--json"])
    out = json.loads(capsys.readouterr().out)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    assert out["prompt_ids"][-3:] == tok("<|im_start|>assistant\n")["input_ids"][-3:]
    assert 1 <= len(out["generated_ids"]) <= 5
    model = load_llama(d, progress=False)
    from reclm_jax.models.generation import generate

    again = generate(model, [out["prompt_ids"]], max_new_tokens=5, pad_id=tok.pad_token_id,
                     stop_ids=[tok.eos_token_id]).token_lists()[0]
    assert again == out["generated_ids"] and out["text"] == tok.decode(again, skip_special_tokens=True)
    with pytest.raises(UserError, match="no such directory"):
        generate_cli.main(["--model", "/nonexistent", "--prompt", "x"])
