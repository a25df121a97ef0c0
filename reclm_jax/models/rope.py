"""Rotary position embeddings in HF's split-half layout (``rotate_half``), so HF q/k weights load unpermuted."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from reclm_jax.models.llama_config import LlamaConfig


def inverse_frequencies(cfg: LlamaConfig) -> np.ndarray:
    """Per-pair rotation frequencies, float32 [head_dim // 2], after ``rope_scaling`` is applied."""
    dim = cfg.head_dim
    # Same arithmetic as transformers (float32 exponent, then the power) so angles agree bit for bit-ish.
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponent)).astype(np.float32)
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    if s.rope_type == "linear":
        return (inv_freq / np.float32(s.factor)).astype(np.float32)
    if s.rope_type == "llama3":
        old_len = float(s.original_max_position_embeddings)
        low_wavelen = old_len / s.low_freq_factor
        high_wavelen = old_len / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths (low frequencies) are stretched by `factor`, short ones kept, the band between blended.
        scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
        smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        blended = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, blended, scaled).astype(np.float32)
    raise ValueError(f"unknown rope_type {s.rope_type!r}")


def rope_angles(positions: jnp.ndarray, inv_freq: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin, float32 [B, T, head_dim], for int positions [B, T]."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotates x [B, T, heads, head_dim] by cos/sin [B, T, head_dim]; computed in float32, returned in x.dtype."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
