"""Tiny random HF Llama folders for tests and benchmarks, built deterministically without torch.

A folder holds ``config.json``, ``generation_config.json``, ``model.safetensors`` (or shards with an index),
and a real byte-level BPE tokenizer (``tokenizer.json`` + ``tokenizer_config.json`` with a chat template)
trained on a fixed corpus, so any text round-trips. The tokenizer's special tokens and template follow one
of ``TOKENIZER_STYLES`` (default ChatML); ``build_tokenizer(style=...)`` makes the others. Shapes follow
three real families:

- ``llama2``:  untied embeddings, multi-head attention, rope_theta 10000, no scaling.
- ``llama3``:  untied, grouped-query attention, rope_theta 500000, ``rope_scaling`` of type ``llama3``.
- ``smollm2``: tied embeddings, grouped-query attention, rope_theta 100000.

head_dim is 32 (vLLM's CPU attention rejects 16).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

VARIANTS = ("llama2", "llama3", "smollm2")

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")

# ChatML, as SmolLM2-Instruct ships it (system turn defaults to a generic assistant line).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-2-chat's [INST] template, verbatim: an assistant turn ends with " " + eos_token (</s>).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Llama-3-Instruct's template: turns end with <|eot_id|>, while the tokenizer's EOS is <|end_of_text|>.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# style -> (special tokens in id order, bos, eos, unk, pad, chat template)
TOKENIZER_STYLES = {
    "chatml": (SPECIAL_TOKENS, "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<pad>", CHATML_TEMPLATE),
    "llama2": (("<unk>", "<s>", "</s>"), "<s>", "</s>", "<unk>", None, LLAMA2_TEMPLATE),
    "llama3": (("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"), "<|begin_of_text|>", "<|end_of_text|>", None, None, LLAMA3_TEMPLATE),
}

_CORPUS_LINES = (
    "You are an expert recommender engine. You are a helpful, respectful and honest assistant.",
    "Here is the user's historical interactions: 'Toy Story (1995)' → 'Heat (1995)' → 'Casino (1995)'",
    "Please recommend 10 items that the user is most likely to interact with next. 1. 2. 3. 4. 5. 6. 7. 8. 9. 10.",
    "The quick brown fox jumps over the lazy dog; Star Wars: Episode IV - A New Hope (1977), Fargo (1996).",
    "Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir Horror Musical",
    "Mystery Romance Sci-Fi Thriller War Western. Sure! What can I do for you? Recommend items in category",
    "0123456789 %, the user prefers about 20% of items; don't, won't, isn't. Ünïcödé café naïve — 東京 😀",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n",
)


def build_tokenizer(out_dir: str | Path, vocab_size: int = 512, style: str = "chatml") -> Path:
    """Trains a byte-level BPE tokenizer on a fixed corpus and saves it as an HF tokenizer folder.

    ``style`` (``TOKENIZER_STYLES``) picks the special tokens and chat template: ``chatml`` (SmolLM2),
    ``llama2`` (``<s>``, ``</s>``, [INST]; no pad) or ``llama3`` (``<|begin_of_text|>``, ``<|eot_id|>``,
    ``<|end_of_text|>``; no pad, no unk). The trainer is deterministic for a fixed corpus, so the files are
    identical on every run.
    """
    if style not in TOKENIZER_STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}; choose from {tuple(TOKENIZER_STYLES)}")
    specials, bos, eos, unk, pad, template = TOKENIZER_STYLES[style]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS_LINES) * 20, trainer)
    named = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad))
             if v is not None}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **named)
    fast.save_pretrained(out)
    return out


def tiny_llama_config(variant: str, vocab_size: int, num_layers: int = 2) -> dict:
    """HF ``config.json`` contents (transformers-4 style keys) for a tiny model of ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose from {VARIANTS}")
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
        "torch_dtype": "float32",
    }
    if variant == "llama3":
        cfg.update(num_key_value_heads=2, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256})
    elif variant == "smollm2":
        cfg.update(num_key_value_heads=2, rope_theta=100000.0, tie_word_embeddings=True)
    return cfg


def tiny_llama_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random fp32 weights under HF Llama tensor names (normal, std 0.02; norms near 1)."""
    rng = np.random.default_rng(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def norm() -> np.ndarray:
        # Not exactly 1 so that a loader that ignores norm weights fails the parity tests.
        return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = normal(nq * hd, d)
        w[p + "self_attn.k_proj.weight"] = normal(nkv * hd, d)
        w[p + "self_attn.v_proj.weight"] = normal(nkv * hd, d)
        w[p + "self_attn.o_proj.weight"] = normal(d, nq * hd)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = normal(f, d)
        w[p + "mlp.up_proj.weight"] = normal(f, d)
        w[p + "mlp.down_proj.weight"] = normal(d, f)
    w["model.norm.weight"] = norm()
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = normal(v, d)
    return w


def write_tiny_llama(out_dir: str | Path, variant: str = "smollm2", seed: int = 0, num_layers: int = 2,
                     shards: int = 1, tokenizer_dir: str | Path | None = None,
                     tokenizer_style: str = "chatml", shape: dict | None = None) -> Path:
    """Writes a complete tiny HF Llama folder and returns its path.

    ``shards > 1`` splits the weights over several safetensors files with ``model.safetensors.index.json``.
    ``tokenizer_dir`` reuses an already built tokenizer folder (saves a second of training per model);
    otherwise one of ``tokenizer_style`` is built. ``shape``: ``config.json`` keys that replace the variant's
    (e.g. ``{"num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}`` for SmolLM2's heads).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        build_tokenizer(out, style=tokenizer_style)
    else:
        for f in Path(tokenizer_dir).iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                (out / f.name).write_bytes(f.read_bytes())
    from reclm_jax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(out)
    cfg = tiny_llama_config(variant, vocab_size=len(tok), num_layers=num_layers)
    cfg.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg.update(shape or {})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
         "do_sample": False}, indent=2))
    weights = tiny_llama_weights(cfg, seed=seed)
    names = list(weights)
    if shards <= 1:
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: weights[n] for n in names[s::shards]}
            save_file(part, str(out / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        total = int(sum(a.nbytes for a in weights.values()))
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return out
