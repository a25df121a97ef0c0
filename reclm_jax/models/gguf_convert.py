"""GGUF (llama.cpp) Llama file -> HF Llama folder, with numpy only (no torch).

Weights are dequantised with ``gguf.quants.dequantize`` to fp32. llama.cpp's converter permutes the rows of
``q_proj``/``k_proj`` so that rotary pairs are interleaved (its RoPE layout); HF's Llama rotates the two halves
of each head instead, so the permutation is undone here. The tokenizer (GPT-2 style byte-level BPE: tokens and
merges in the GGUF metadata) is rebuilt as a ``tokenizers`` object with SmolLM's pre-tokenizer (single digits,
then byte-level), and saved with its chat template.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from reclm_jax.atomic import replace_dir, temp_dir
from reclm_jax.errors import UserError

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
_SPECIAL_TYPES = (2, 3, 4)


def hf_tensor_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m:
        layer, part, kind = m.groups()
        if part not in _LAYER_NAMES:
            raise UserError(f"unsupported GGUF tensor {gguf_name!r}")
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    raise UserError(f"unsupported GGUF tensor {gguf_name!r}")


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation.

    w: [n_heads * head_dim, in_dim]. llama.cpp stores, per head, rows in the order (pair, 2) = interleaved
    (x0, x_half, x1, x_half+1, ...); HF wants (2, pair) = first half then second half.
    """
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_gguf_config(reader) -> dict:
    """HF ``config.json`` contents for a GGUF Llama file."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise UserError(f"GGUF architecture {arch!r} is not supported (only 'llama')")
    names = {t.name for t in reader.tensors}
    n_heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    vocab = int(_field(reader, "llama.vocab_size", len(reader.fields["tokenizer.ggml.tokens"].data)))
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        "head_dim": int(_field(reader, "llama.rope.dimension_count", hidden // n_heads)),
        "hidden_act": "silu",
        "max_position_embeddings": int(_field(reader, "llama.context_length", 2048)),
        "rms_norm_eps": float(np.float32(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5))),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id", 2)),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }
    return cfg


def convert_weights(reader, cfg: dict) -> dict[str, np.ndarray]:
    """Dequantised fp32 tensors under HF names (q/k rows un-permuted)."""
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        name = hf_tensor_name(t.name)
        arr = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        arr = arr.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims innermost-first
        if name.endswith("q_proj.weight"):
            arr = unpermute_rope_rows(arr, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            arr = unpermute_rope_rows(arr, cfg["num_key_value_heads"])
        out[name] = np.ascontiguousarray(arr)
    return out


def build_tokenizer(reader):
    """A ``PreTrainedTokenizerFast`` equivalent to the GGUF's GPT-2 style tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise UserError(f"GGUF tokenizer model {model!r} is not supported (only byte-level BPE 'gpt2')")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = [int(x) for x in _field(reader, "tokenizer.ggml.token_type")]
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [tokens[i] for i, ty in enumerate(types) if ty in _SPECIAL_TYPES]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])

    def tok_at(key: str):
        i = _field(reader, key)
        return None if i is None else tokens[int(i)]

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=tok_at("tokenizer.ggml.bos_token_id"),
        eos_token=tok_at("tokenizer.ggml.eos_token_id"),
        unk_token=tok_at("tokenizer.ggml.unknown_token_id"),
        pad_token=tok_at("tokenizer.ggml.padding_token_id"),
        chat_template=_field(reader, "tokenizer.chat_template"),
        add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        clean_up_tokenization_spaces=False,
        model_max_length=int(_field(reader, "llama.context_length", 2048)),
    )


def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Writes an HF Llama folder for ``gguf_path``; the folder appears under its final name only when complete."""
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    gguf_path, out = Path(gguf_path), Path(out_dir)
    try:
        reader = GGUFReader(str(gguf_path))
    except Exception as e:
        raise UserError(f"{gguf_path}: not a readable GGUF file ({e})") from None
    cfg = read_gguf_config(reader)
    tmp = temp_dir(out)
    tokenizer = build_tokenizer(reader)
    tokenizer.save_pretrained(tmp)
    weights = convert_weights(reader, cfg)
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
           "pad_token_id": cfg["pad_token_id"], "do_sample": False}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return replace_dir(tmp, out)
