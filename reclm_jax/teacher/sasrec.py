"""SASRec in Flax NNX: the sequential recommender the teacher is made of.

Item ids are integer rows of the embedding table; row 0 is padding, rows 1..n_items are catalogue items.
Histories are left-padded to ``window``, so the last position always holds the most recent item and its
final hidden state is the user representation. Scores are dot products with the (tied) item embeddings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from reclm_jax.teacher.config import SASRecConfig

PAD = 0
# The original adds -10000 (not -inf) for masked attention positions; an all-padding history then stays finite.
MASK_VALUE = -10000.0


class SelfAttention(nnx.Module):
    def __init__(self, cfg: SASRecConfig, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.init_std)
        self.num_heads = cfg.num_heads
        self.qkv = nnx.Linear(cfg.dim, 3 * cfg.dim, kernel_init=init, rngs=rngs)
        self.out = nnx.Linear(cfg.dim, cfg.dim, kernel_init=init, rngs=rngs)
        self.attn_drop = nnx.Dropout(cfg.dropout)

    def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3, h, d // h), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, T, H, Dh]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // h).astype(x.dtype) + bias
        probs = self.attn_drop(jax.nn.softmax(logits, axis=-1), deterministic=deterministic, rngs=rngs)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d))


class Block(nnx.Module):
    """Post-LN (BERT-style) transformer layer: x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x)))."""

    def __init__(self, cfg: SASRecConfig, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.init_std)
        self.attn = SelfAttention(cfg, rngs)
        self.ln1 = nnx.LayerNorm(cfg.dim, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.fc1 = nnx.Linear(cfg.dim, cfg.inner_dim, kernel_init=init, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.inner_dim, cfg.dim, kernel_init=init, rngs=rngs)
        self.ln2 = nnx.LayerNorm(cfg.dim, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)

    def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        a = self.drop(self.attn(x, bias, deterministic, rngs), deterministic=deterministic, rngs=rngs)
        x = self.ln1(x + a)
        f = self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))
        f = self.drop(f, deterministic=deterministic, rngs=rngs)
        return self.ln2(x + f)


class SASRec(nnx.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.init_std)
        self.n_items = n_items
        self.window = cfg.window
        self.item_emb = nnx.Embed(n_items + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.item_emb.embedding[...] = self.item_emb.embedding[...].at[PAD].set(0.0)
        # window + 1 rows as in the original (one row is never used) so parameter counts match it exactly.
        self.pos_emb = nnx.Embed(cfg.window + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.ln = nnx.LayerNorm(cfg.dim, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])

    def user_state(self, history: jax.Array, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """history: int32 [B, window], left-padded with 0 -> float32 [B, dim] (state after the last item)."""
        return self.hidden_states(history, deterministic, rngs)[:, -1]

    def hidden_states(self, history: jax.Array, deterministic: bool = True,
                      rngs: nnx.Rngs | None = None) -> jax.Array:
        """history: int32 [B, T] -> float32 [B, T, dim], position t seeing only positions <= t."""
        valid = history != PAD
        # Masking the lookup keeps the pad row out of every gradient (torch's padding_idx).
        x = self.item_emb(history) * valid[..., None] + self.pos_emb(jnp.arange(history.shape[1]))[None]
        x = self.drop(self.ln(x), deterministic=deterministic, rngs=rngs)
        t = history.shape[1]
        allowed = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]  # [B, Tq, Tk]
        bias = jnp.where(allowed, 0.0, MASK_VALUE)[:, None].astype(x.dtype)  # [B, 1, Tq, Tk]
        for block in self.blocks:
            x = block(x, bias, deterministic, rngs)
        return x

    def __call__(self, history: jax.Array, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """history: int32 [B, window] -> float32 scores [B, n_items + 1]; column 0 (padding) is -inf."""
        u = self.user_state(history, deterministic, rngs)
        scores = u @ self.item_emb.embedding[...].T
        return scores.at[:, PAD].set(-jnp.inf)
