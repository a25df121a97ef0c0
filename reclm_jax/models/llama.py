"""Llama-family decoder (Llama-2, Llama-3.x, SmolLM2) as Flax NNX modules.

Attribute names mirror HF's module tree (``model.layers.0.self_attn.q_proj``), so a parameter's dotted NNX
path *is* its HF name up to ``kernel`` (stored transposed, ``[in, out]``) versus ``weight``. Norms and the
softmax run in float32; matmuls run in ``cfg.dtype``. ``cfg.kernels`` (resolved when the model is built, see
``kernels.py``) picks plain XLA dots and ``jax.nn.dot_product_attention`` (GPUs/TPUs: f32 accumulation and
fused attention kernels of their own) or the XLA:CPU fast paths of ``matmul.py`` and ``attention.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reclm_jax.models.kernels import EMBED_BITS, packed_kernel, resolve_kernels, self_attention, step_attention
from reclm_jax.models.kv_cache import KVCache, bits_view, write_slots
from reclm_jax.models.layer_stack import run_stack, stack_modules
from reclm_jax.models.linear import Linear, normal_init
from reclm_jax.models.llama_config import LlamaConfig
from reclm_jax.models.rope import apply_rope, inverse_frequencies, rope_angles
from reclm_jax.models.sharding import constrain


# Dropout-key ids: layer i's linears are i * UIDS_PER_LAYER + slot (slots 0-6), so every layer draws its own masks.
UIDS_PER_LAYER = 8


class ModelOutput(NamedTuple):
    logits: jnp.ndarray  # [B, T, vocab] in the compute dtype
    hidden: jnp.ndarray  # [B, T, hidden] after the final norm, compute dtype
    cache: KVCache | None  # the updated cache when one was passed in


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        # As transformers: normalise in fp32, cast back, then scale.
        return self.weight[...].astype(self.dtype) * xf.astype(self.dtype)


class Embedding(nnx.Module):
    def __init__(self, vocab: int, dim: int, param_dtype, dtype, rngs: nnx.Rngs):
        self.weight = nnx.Param(normal_init()(rngs.params(), (vocab, dim), param_dtype))
        self.dtype = dtype

    def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
        bits = packed_kernel(EMBED_BITS)  # a decoding program's table bits (kernels.EMBED_BITS), made once
        if bits is not None and bits.shape == self.weight.shape:
            return gather_bits(bits, tokens, self.weight.dtype).astype(self.dtype)
        return take_rows(self.weight[...], tokens).astype(self.dtype)


@jax.custom_vjp
def take_rows(table: jnp.ndarray, ids: jnp.ndarray) -> jnp.ndarray:
    """``jnp.take(table, ids, axis=0)`` (table [V, D], ids int [...] -> [..., D]; out-of-range ids give NaN rows).

    A 16-bit float table is gathered as its uint16 bits: XLA:CPU otherwise converts the whole table to f32 before
    gathering a few rows from it (measured: 50-78 ms per decoding call for SmolLM2's [49152, 576] table, a
    quarter of its batch-1 time to first token). Elsewhere the bitcasts are free. The gradient is the plain
    gather's (a scatter-add into the table), so a trained embedding still gets it."""
    bits = bits_view(table)
    if bits.dtype == table.dtype:
        return jnp.take(table, ids, axis=0)
    return gather_bits(bits, ids, table.dtype)


def gather_bits(bits: jnp.ndarray, ids: jnp.ndarray, dtype) -> jnp.ndarray:
    """Rows ``ids`` (int [...]) of a 16-bit float table given as its uint16 bits [V, D] -> [..., D] in ``dtype``;
    out-of-range ids give NaN rows (jnp.take's default)."""
    nan = int(np.asarray(np.nan, dtype).view(bits.dtype))  # a static fill value: the dtype's NaN bits
    rows = jnp.take(bits, ids, axis=0, mode="fill", fill_value=nan)
    return jax.lax.bitcast_convert_type(rows, dtype)


def _take_rows_fwd(table, ids):
    return take_rows(table, ids), (ids, table)  # the table itself: its shape and dtype, no copy


def _take_rows_bwd(res, g):
    ids, table = res
    grad = jnp.zeros(table.shape, jnp.float32).at[ids].add(g.astype(jnp.float32), mode="drop")
    return grad.astype(table.dtype), None


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def decoding_tables(model: nnx.Module) -> dict:
    """{kernels.EMBED_BITS: uint16 [V, D]}: a CPU decoding program's token-embedding bits, made once per set of
    weights (outside the program's loop, see ``kernels.EMBED_BITS``); {} elsewhere (other backends, a 32-bit
    table, a model without a token embedding)."""
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if not isinstance(embed, Embedding) or jax.default_backend() != "cpu":
        return {}
    table = embed.weight[...]
    bits = bits_view(table)
    return {} if bits.dtype == table.dtype else {EMBED_BITS: bits}


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, layer: int, rngs: nnx.Rngs):
        pd, dt = cfg.jnp_param_dtype, cfg.jnp_dtype
        d, h = cfg.hidden_size, cfg.head_dim

        def lin(i, o, slot):
            return Linear(i, o, use_bias=cfg.attention_bias, param_dtype=pd, dtype=dt, uid=layer * UIDS_PER_LAYER + slot,
                          kernels=cfg.kernels, rngs=rngs)

        self.q_proj = lin(d, cfg.num_heads * h, 0)
        self.k_proj = lin(d, cfg.num_kv_heads * h, 1)
        self.v_proj = lin(d, cfg.num_kv_heads * h, 2)
        self.o_proj = lin(cfg.num_heads * h, d, 3)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, h
        self.kernels = resolve_kernels(cfg.kernels)

    def __call__(self, x, cos, sin, mask, kv=None, end=None, adapter=None, rng=None, prefill=False, uid_offset=0):
        """x [B, T, D]; kv = (keys, values) [B, K, S, H] (the cache layout) or None; uid_offset as ``Linear``'s.

        mask: bool [B, 1, T, S] over the cache slots, or [B, 1, T, T] over the new tokens when there is no cache
        or ``prefill`` (the cache is empty, so the new tokens attend only among themselves).
        Returns (out [B, T, D], new (keys, values) or None)."""
        b, t, _ = x.shape
        kw = dict(adapter=adapter, dropout_rng=rng, uid_offset=uid_offset)
        q = self.q_proj(x, **kw).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x, **kw).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, **kw).reshape(b, t, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = constrain(q, "batch", None, "tp", None)
        scale = 1.0 / math.sqrt(self.head_dim)
        new_kv = None
        if kv is not None and not prefill:
            out, ck, cv = step_attention(q, k, v, kv[0], kv[1], mask, end, scale, self.kernels)
            new_kv = (ck, cv)
        else:
            if kv is not None:  # prefill: fill the empty cache, attend among the new tokens
                new_kv = (write_slots(kv[0], k, end), write_slots(kv[1], v, end))
            out = self_attention(q, k, v, mask, scale, self.kernels)
        out = out.reshape(b, t, self.num_heads * self.head_dim)
        return self.o_proj(out, **kw), new_kv


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, layer: int, rngs: nnx.Rngs):
        pd, dt = cfg.jnp_param_dtype, cfg.jnp_dtype
        d, f = cfg.hidden_size, cfg.intermediate_size

        def lin(i, o, slot):
            return Linear(i, o, use_bias=cfg.mlp_bias, param_dtype=pd, dtype=dt, uid=layer * UIDS_PER_LAYER + slot,
                          kernels=cfg.kernels, rngs=rngs)

        self.gate_proj = lin(d, f, 4)
        self.up_proj = lin(d, f, 5)
        self.down_proj = lin(f, d, 6)

    def __call__(self, x, adapter=None, rng=None, uid_offset=0):
        kw = dict(adapter=adapter, dropout_rng=rng, uid_offset=uid_offset)
        h = jax.nn.silu(self.gate_proj(x, **kw)) * self.up_proj(x, **kw)
        h = constrain(h, "batch", None, "tp")
        return self.down_proj(h, **kw)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, layer: int, rngs: nnx.Rngs):
        pd, dt = cfg.jnp_param_dtype, cfg.jnp_dtype
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, dt)
        self.self_attn = Attention(cfg, layer, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, dt)
        self.mlp = MLP(cfg, layer, rngs)

    def __call__(self, x, cos, sin, mask, kv=None, end=None, adapter=None, rng=None, prefill=False, layer=0):
        """``layer``: this layer's index (a traced int32 in a layer stack, whose static dropout ids are layer 0's;
        0 in the unrolled model, whose ids already hold it)."""
        off = layer * UIDS_PER_LAYER
        attn, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv, end, adapter, rng, prefill, off)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x), adapter, rng, off)
        return constrain(x, "batch", None, None), new_kv


class LlamaModel(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, cfg.jnp_param_dtype, cfg.jnp_dtype, rngs)
        layers = [DecoderLayer(cfg, i, rngs) for i in range(cfg.num_layers)]
        # scan_layers: one DecoderLayer with [L, ...] parameters (the same initial values), see layer_stack.py.
        self.layers = stack_modules(layers) if cfg.scan_layers else nnx.List(layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_param_dtype, cfg.jnp_dtype)


class LlamaForCausalLM(nnx.Module):
    """The full causal LM. Call it with token ids; see ``__call__`` for shapes.

    A config with ``kernels="auto"`` is resolved here (``self.config.kernels`` is "xla" or "cpu").
    """

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        cfg = cfg.replace(kernels=resolve_kernels(cfg.kernels))
        self.config = cfg
        self.model = LlamaModel(cfg, rngs)
        # Tied models keep an lm_head without a kernel: it reads the embedding but can own LoRA adapters.
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, param_dtype=cfg.jnp_param_dtype, dtype=cfg.jnp_dtype,
                              with_kernel=not cfg.tie_word_embeddings, uid=(cfg.num_layers + 1) * UIDS_PER_LAYER,
                              kernels=cfg.kernels, rngs=rngs)

    def __call__(self, tokens: jnp.ndarray, *, attention_mask: jnp.ndarray | None = None,
                 positions: jnp.ndarray | None = None, cache: KVCache | None = None, adapter: str | None = None,
                 dropout_rng: jax.Array | None = None, compute_logits: bool = True,
                 prefill: bool = False) -> ModelOutput:
        """Runs the decoder.

        tokens: int32 [B, T]. attention_mask: [B, T], 1/True for real tokens, 0 for padding (default all
        real). positions: int32 [B, T]; default ``cumsum(mask) - 1`` (right for left padding) or, with a
        cache, continuing from the tokens already cached. cache: a ``KVCache``; the T new tokens are written
        at slots ``[cache.end, cache.end + T)``. adapter: name of the LoRA adapter to apply (None = base
        weights). dropout_rng: enables LoRA dropout. compute_logits=False skips the LM head (``logits`` is
        None): a loss can then apply ``head`` to chunks of ``hidden`` and never hold [B, T, vocab] at once.
        prefill=True promises an empty cache (fresh from ``init_cache``): the new tokens then attend only
        among themselves instead of over every slot, which is cheaper and gives the same result.
        """
        cfg = self.config
        b, t = tokens.shape
        mask_in = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        if cache is None:
            if positions is None:
                positions = jnp.maximum(jnp.cumsum(mask_in, axis=1) - 1, 0)
            q_slot = jnp.arange(t)
            key_valid = mask_in
            k_slot = jnp.arange(t)
            end = None
        else:
            end = cache.end
            valid = jax.lax.dynamic_update_slice(cache.valid, mask_in, (0, end))
            if positions is None:
                before = jnp.sum(cache.valid, axis=1, keepdims=True)
                positions = jnp.maximum(before + jnp.cumsum(mask_in, axis=1) - 1, 0)
            if prefill:  # attention over the new tokens only (the other slots are empty)
                q_slot, key_valid, k_slot = jnp.arange(t), mask_in, jnp.arange(t)
            else:
                q_slot, key_valid, k_slot = end + jnp.arange(t), valid, jnp.arange(cache.size)
        causal = k_slot[None, :] <= q_slot[:, None]  # [T, S]
        mask = (causal[None] & key_valid[:, None, :]) | (k_slot[None, None, :] == q_slot[None, :, None])
        mask = mask[:, None]  # [B, 1, T, S]; a padding query attends only to itself (never an empty row)
        cos, sin = rope_angles(positions, inverse_frequencies(cfg))  # constants, not parameters

        x = constrain(self.model.embed_tokens(tokens), "batch", None, None)
        if cfg.scan_layers:
            kv = None if cache is None else (cache.keys, cache.values)
            x, kv = run_stack(self.model.layers, x, cos, sin, mask, kv=kv, end=end, adapter=adapter,
                              rng=dropout_rng, prefill=prefill, remat=cfg.remat)
            new_keys, new_values = kv if kv is not None else ((), ())
        else:
            new_keys, new_values = [], []
            for i, layer in enumerate(self.model.layers):
                kv = None if cache is None else (cache.keys[i], cache.values[i])
                if cfg.remat and cache is None:
                    x, _ = _remat_layer(layer, x, cos, sin, mask, adapter, dropout_rng)
                else:
                    x, new_kv = layer(x, cos, sin, mask, kv, end, adapter, dropout_rng, prefill)
                    if new_kv is not None:
                        new_keys.append(new_kv[0])
                        new_values.append(new_kv[1])
            new_keys, new_values = tuple(new_keys), tuple(new_values)
        hidden = self.model.norm(x)
        logits = self.head(hidden, adapter=adapter, dropout_rng=dropout_rng) if compute_logits else None
        new_cache = None
        if cache is not None:
            new_cache = KVCache(new_keys, new_values, valid, end + t)
        return ModelOutput(logits, hidden, new_cache)

    def head(self, hidden: jnp.ndarray, *, adapter: str | None = None,
             dropout_rng: jax.Array | None = None) -> jnp.ndarray:
        """The LM head (tied or not, with the adapter's LoRA): hidden [B, T, D] -> logits [B, T, vocab]."""
        tied = self.model.embed_tokens.weight[...] if self.config.tie_word_embeddings else None
        logits = self.lm_head(hidden, adapter=adapter, dropout_rng=dropout_rng, kernel_t=tied)
        return constrain(logits, "batch", None, "tp")


def _remat_layer(layer, x, cos, sin, mask, adapter, rng):
    """One decoder layer under ``jax.checkpoint``: its activations are recomputed in the backward pass."""
    graphdef, state = nnx.split(layer)

    def run(state, x, cos, sin, mask, rng):
        return nnx.merge(graphdef, state)(x, cos, sin, mask, None, None, adapter, rng)

    return jax.checkpoint(run)(state, x, cos, sin, mask, rng)
