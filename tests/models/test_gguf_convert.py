"""GGUF -> HF conversion: q/k un-permutation, a synthetic GGUF round trip, and parity on the real SmolLM2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from reclm_jax.errors import UserError
from reclm_jax.models.gguf_convert import convert_gguf_to_hf, hf_tensor_name, unpermute_rope_rows
from reclm_jax.testing.tiny_model import tiny_llama_config, tiny_llama_weights

MIXED_TEXTS = [
    "Héllo wörld! 12345 東京 😀 naïve café",
    "<|im_start|>user\nRecommend 10 movies like 'Toy Story (1995)' → 'Heat (1995)'<|im_end|>\n<|im_start|>assistant\n",
    "  spaces   and\ttabs 3.14159, don't stop: 2026-11-28",
]


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to HF q/k rows (written independently of the inverse under test)."""
    rows, cols = w.shape
    hd = rows // n_heads
    out = np.empty_like(w)
    for h in range(n_heads):
        block = w[h * hd:(h + 1) * hd]
        for j in range(hd // 2):  # interleave first-half row j and second-half row j
            out[h * hd + 2 * j] = block[j]
            out[h * hd + 2 * j + 1] = block[hd // 2 + j]
    return out


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.random.default_rng(0).standard_normal((3 * 8, 5)).astype(np.float32)
    assert not np.array_equal(llama_cpp_permute(w, 3), w)
    np.testing.assert_array_equal(unpermute_rope_rows(llama_cpp_permute(w, 3), 3), w)


def test_tensor_names():
    assert hf_tensor_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_tensor_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    with pytest.raises(UserError, match="unsupported GGUF tensor 'blk.0.ffn_gate_exps.weight'"):
        hf_tensor_name("blk.0.ffn_gate_exps.weight")


_TO_GGUF = {v: k for k, v in {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}.items()}


def write_synthetic_gguf(path, tokenizer_dir, variant="smollm2"):
    """A tiny fp32 GGUF as llama.cpp would write it from an HF model (q/k permuted), with a BPE tokenizer."""
    import gguf

    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    added = {a["content"]: a["id"] for a in tok["added_tokens"]}
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in {**vocab, **added}.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    cfg = tiny_llama_config(variant, vocab_size=len(tokens))
    w = tiny_llama_weights(cfg, seed=3)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_dimension_count(cfg["head_dim"])
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")  # the tiny tokenizer has no digit splitting
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in added else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(added["<|im_start|>"])
    writer.add_eos_token_id(added["<|im_end|>"])
    writer.add_unk_token_id(added["<|endoftext|>"])
    writer.add_pad_token_id(added["<pad>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}")
    for name, arr in w.items():
        if name.endswith("q_proj.weight"):
            arr = llama_cpp_permute(arr, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            arr = llama_cpp_permute(arr, cfg["num_key_value_heads"])
        if name == "lm_head.weight":
            gname = "output.weight"
        elif name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            gname = f"blk.{layer}.{_TO_GGUF[rest.rsplit('.', 1)[0]]}.weight"
        writer.add_tensor(gname, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return cfg, w


def test_synthetic_gguf_round_trip(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    cfg, w = write_synthetic_gguf(tmp_path / "m.gguf", tiny_tokenizer_dir)
    out = convert_gguf_to_hf(tmp_path / "m.gguf", tmp_path / "hf")
    assert not (tmp_path / "hf.tmp").exists()
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(w)  # tied: no lm_head written
    for k in w:
        np.testing.assert_array_equal(got[k], w[k], err_msg=k)
    hf_cfg = json.loads((out / "config.json").read_text())
    for k in ("hidden_size", "num_key_value_heads", "head_dim", "rope_theta", "tie_word_embeddings", "vocab_size"):
        assert hf_cfg[k] == cfg[k], k
    ours, ref = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    for text in MIXED_TEXTS:
        assert ours(text)["input_ids"] == ref(text)["input_ids"], text
    assert ours.eos_token == "<|im_end|>" and ours.bos_token == "<|im_start|>"


def test_not_a_gguf_is_a_user_error(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"nope")
    with pytest.raises(UserError, match="not a readable GGUF file"):
        convert_gguf_to_hf(tmp_path / "x.gguf", tmp_path / "out")


@pytest.mark.realdata
def test_real_smollm2_matches_transformers_gguf_loader():
    """transformers' own GGUF loading of the same file gives the same logits and token ids."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reclm_jax.models.fetch import ensure_smollm2, gguf_path

    folder, gguf_file = ensure_smollm2(), gguf_path()
    ours = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    ref_tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    for text in MIXED_TEXTS:
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"], text
    ids = torch.tensor([tok(MIXED_TEXTS[1])["input_ids"]])
    with torch.no_grad():
        diff = (ours(ids).logits - ref(ids).logits).abs().max().item()
    assert diff <= 1e-4
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>")
