"""The critic's value head: Linear(hidden, 64) -> GELU -> Linear(64, 1) on the last hidden state.

Initialised as RecLM-gen's: orthogonal weights (gain sqrt(2), then 1.0) and zero biases.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


class ValueHead(nnx.Module):
    def __init__(self, hidden_size: int, inner: int = 64, *, param_dtype=jnp.float32, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        ortho = jax.nn.initializers.orthogonal
        self.dense = nnx.Linear(hidden_size, inner, kernel_init=ortho(scale=math.sqrt(2.0)),
                                bias_init=jax.nn.initializers.zeros, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(inner, 1, kernel_init=ortho(scale=1.0), bias_init=jax.nn.initializers.zeros,
                              param_dtype=param_dtype, dtype=dtype, rngs=rngs)

    def __call__(self, hidden: jnp.ndarray) -> jnp.ndarray:
        """hidden [B, T, D] (after the final norm) -> values float32 [B, T]."""
        h = jax.nn.gelu(self.dense(hidden), approximate=False)  # torch nn.GELU() is the exact erf form
        return self.out(h)[..., 0].astype(jnp.float32)
