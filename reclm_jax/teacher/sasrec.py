"""SASRec in Flax NNX: the sequential recommender the teacher is made of.

Item ids are integer rows of the embedding table; row 0 is padding, rows 1..n_items are catalogue items.
Histories are left-padded to ``window``, so the last position always holds the most recent item and its
final hidden state is the user representation. Scores are dot products with the (tied) item embeddings.

Only the last position's final state is ever scored, so ``user_state`` runs the last layer for that one query
(its keys and values still come from every position): the same function as the full stack, with over a quarter
fewer FLOPs per training step. ``SASRecConfig.matmul_dtype`` chooses the dense layers' products: float32, or bfloat16
products accumulated in float32 (activations, parameters and the optimiser stay float32). The bfloat16 products
(forward and both gradients) run on AMX tiles where the CPU has them (``native_kernels.has_amx``), else on
XLA's bf16 dot.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from reclm_jax.models import native_kernels
from reclm_jax.teacher.config import SASRecConfig, resolve_matmul_dtype

F32, BF16 = jnp.float32, jnp.bfloat16

PAD = 0
# The original adds -10000 (not -inf) for masked attention positions; an all-padding history then stays finite.
MASK_VALUE = -10000.0


def dropout_bits(rate: float) -> int:
    """Random bits per dropout decision: the fewest of 1, 2, 4, 8 that represent ``rate`` exactly, else 16."""
    for bits in (1, 2, 4, 8):
        if float(rate * 2 ** bits).is_integer():
            return bits
    return 16


class Dropout(nnx.Module):
    """Inverted dropout that spends ``dropout_bits(rate)`` random bits per element, not 32.

    XLA:CPU spends most of a dropout layer generating threefry words: at rate 0.5 one 32-bit word serves 32
    elements here (``nnx.Dropout`` draws a word per element), the same Bernoulli(1 - rate) masks. A rate that is
    no multiple of 1/256 is drawn with 16 bits, i.e. rounded to a multiple of 1/65536, and the kept values are
    scaled by that rounded keep probability, so the layer stays unbiased.
    """

    def __init__(self, rate: float):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate {rate} must be in [0, 1)")
        self.rate = rate

    def __call__(self, x: jax.Array, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        bits = dropout_bits(self.rate)
        threshold = round(self.rate * 2 ** bits)  # a field below it drops its element
        per_word = 32 // bits
        n = math.prod(x.shape)
        words = jax.random.bits(rngs.dropout(), (-(-n // per_word),), jnp.uint32)
        shifts = jnp.arange(per_word, dtype=jnp.uint32) * jnp.uint32(bits)
        fields = (words[:, None] >> shifts[None, :]) & jnp.uint32(2 ** bits - 1)
        keep = (fields.reshape(-1)[:n] >= jnp.uint32(threshold)).reshape(x.shape)
        keep_prob = 1.0 - threshold / 2 ** bits
        return jnp.where(keep, x * jnp.asarray(1.0 / keep_prob, x.dtype), jnp.zeros((), x.dtype))


def _contract(transposed: bool):
    # x [M, K] with w [K, N], or with w [N, K] when ``transposed``: contract K.
    return ((1,), (1 if transposed else 0,)), ((), ())


def _bf16_product(a: jax.Array, b: jax.Array, transposed: bool) -> jax.Array:
    """bf16 a [M, K] @ b [K, N] (b [N, K] when ``transposed``) -> f32 [M, N], exact products summed in f32.

    On a CPU with AMX tiles (Sapphire Rapids and later) on the tiles (``native_kernels.amx_dot``): XLA:CPU forms
    these products with vdpbf16ps at a fraction of the tiles' rate. The sums are in order along K there, so
    the bits differ from XLA's within f32 rounding. ``RECLM_JAX_AMX=0`` keeps XLA's dot (A/B measurements).
    """
    if native_kernels.amx_applies(a, b):
        return native_kernels.amx_dot(a, b, transposed)
    return jax.lax.dot_general(a, b, _contract(transposed), preferred_element_type=F32)


def _bf16_weight_gradient(a: jax.Array, b: jax.Array, ones_row: bool = False) -> jax.Array:
    """bf16 a [M, K], b [M, N] -> f32 a^T b [K, N], the M rows contracted; ``ones_row``: [K + 1, N], the last row
    the column sums of b (a bias gradient as one more row of the same product: XLA:CPU sums the M rows far
    faster there than in a reduction of its own).

    On AMX tiles ``native_kernels.amx_tn_dot`` transposes a itself. XLA:CPU's bf16 library dot only takes this
    product with the rows as the left operand's minor axis ([K, M] @ [M, N]); written as a^T b, XLA folds the
    transpose into the dot and runs it as an f32 one at about half the speed, so a is transposed in memory first.
    """
    if native_kernels.amx_applies(a, b):
        return native_kernels.amx_tn_dot(a, b, ones_row)
    return jax.lax.dot_general(_materialised_t(a, ones_row), b, (((1,), (0,)), ((), ())),
                               preferred_element_type=F32)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def bf16_dot(x: jax.Array, w: jax.Array, transposed: bool) -> jax.Array:
    """f32 x [M, K] @ f32 w [K, N] (w [N, K] when ``transposed``) -> f32 [M, N]: products in bf16, sums in f32.

    XLA:CPU runs a bf16 x bf16 -> f32 dot with the CPU's bf16 dot-product instructions at about twice the f32
    rate, but autodiff of it would feed f32 cotangents into the gradient dots, so the gradient is written here:
    both gradient dots are bf16 x bf16 -> f32 too (what TPUs do to f32 matmuls by default).
    """
    return _bf16_product(x.astype(BF16), w.astype(BF16), transposed)


def _bf16_dot_fwd(x, w, transposed):
    x16, w16 = x.astype(BF16), w.astype(BF16)
    return _bf16_product(x16, w16, transposed), (x16, w16)


def _bf16_dot_bwd(transposed, res, g):
    x16, w16 = res
    g16 = g.astype(BF16)
    dx = _bf16_product(g16, w16, not transposed)
    # (A transposed result, e.g. (g^T x)^T, would be folded by XLA into a bf16 dot XLA:CPU cannot run.)
    a, b = (g16, x16) if transposed else (x16, g16)  # dw = a^T b
    return dx, _bf16_weight_gradient(a, b)


def _materialised_t(a: jax.Array, ones_row: bool = False) -> jax.Array:
    """a [M, K] -> a.T [K, M] (plus a last row of ones when ``ones_row``), written through a dynamic_update_slice
    so XLA keeps it a copy in memory instead of folding the transpose into the dot that reads it."""
    m, k = a.shape
    buf = jnp.zeros((k, m + 1), a.dtype)
    if ones_row:
        buf = jnp.concatenate([buf, jnp.ones((1, m + 1), a.dtype)])
    return jax.lax.dynamic_update_slice(buf, a.T, (0, 1))[:, 1:]


bf16_dot.defvjp(_bf16_dot_fwd, _bf16_dot_bwd)


@jax.custom_vjp
def bf16_affine(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``bf16_dot(x, w) + b`` for f32 x [M, K], w [K, N], b [N]. Its gradient gets db from the weight-gradient
    product, as one more row of it (``_bf16_weight_gradient``'s ``ones_row``)."""
    return bf16_dot(x, w, False) + b


def _bf16_affine_fwd(x, w, b):
    x16, w16 = x.astype(BF16), w.astype(BF16)
    return _bf16_product(x16, w16, False) + b, (x16, w16)


def _bf16_affine_bwd(res, g):
    x16, w16 = res
    g16 = g.astype(BF16)
    dx = _bf16_product(g16, w16, True)
    dwb = _bf16_weight_gradient(x16, g16, ones_row=True)  # [K + 1, N]: dw, then db
    return dx, dwb[:-1], dwb[-1]


bf16_affine.defvjp(_bf16_affine_fwd, _bf16_affine_bwd)


def matmul(x: jax.Array, w: jax.Array, dtype: str, transposed: bool = False,
           bias: jax.Array | None = None) -> jax.Array:
    """f32 x [..., K] @ f32 w [K, N] (w [N, K] when ``transposed``, so a tied embedding is contracted in place,
    never transposed) (+ bias [N]) -> f32 [..., N], the products in ``dtype`` ("float32" or "bfloat16")."""
    x2 = x.reshape(-1, x.shape[-1])
    if dtype == "float32":
        y = jax.lax.dot_general(x2, w, _contract(transposed))
        y = y if bias is None else y + bias
    elif bias is None:
        y = bf16_dot(x2, w, transposed)
    else:
        assert not transposed
        y = bf16_affine(x2, w, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def dense(layer: nnx.Linear, x: jax.Array, dtype: str) -> jax.Array:
    """``layer(x)`` with the products in ``dtype`` (the parameters stay those of the ``nnx.Linear``)."""
    return matmul(x, layer.kernel[...], dtype, bias=layer.bias[...])


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    xhat = centred * rstd
    return xhat * scale + bias, (xhat, rstd, scale)


def _layer_norm_bwd(eps, res, g):
    # The closed form: two row means and one fused expression, where autodiff of the forward leaves XLA:CPU a
    # dozen broadcast/reduce fusions per layer norm.
    xhat, rstd, scale = res
    gs = g * scale
    dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True) - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
    lead = tuple(range(g.ndim - 1))
    return dx, jnp.sum(g * xhat, axis=lead), jnp.sum(g, axis=lead)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(ln: nnx.LayerNorm, x: jax.Array) -> jax.Array:
    """``ln(x)`` over the last axis (two-pass variance, as torch's LayerNorm) with a hand-written gradient."""
    return _layer_norm(x, ln.scale[...], ln.bias[...], ln.epsilon)


class SelfAttention(nnx.Module):
    def __init__(self, cfg: SASRecConfig, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.init_std)
        self.num_heads = cfg.num_heads
        self.matmul_dtype = resolve_matmul_dtype(cfg.matmul_dtype)
        self.qkv = nnx.Linear(cfg.dim, 3 * cfg.dim, kernel_init=init, rngs=rngs)
        self.out = nnx.Linear(cfg.dim, cfg.dim, kernel_init=init, rngs=rngs)
        self.attn_drop = Dropout(cfg.dropout)

    def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool, rngs: nnx.Rngs | None,
                 last_only: bool = False) -> jax.Array:
        """x [B, T, D], bias [B, 1, T, T] -> [B, T, D], or [B, 1, D] for the last query only (``last_only``)."""
        b, t, d = x.shape
        h, mm = self.num_heads, self.matmul_dtype
        # Heads are moved in front of the positions with one transpose of the projection ([B, T, n, H, Dh] ->
        # [n, B, H, T, Dh]), so both attention products batch over leading axes; splitting q, k and v first
        # costs a transpose each way for each of them (and a concatenation in the gradient).
        if last_only:  # keys and values of every position, the query of the last one
            kernel, qkv_bias = self.qkv.kernel[...], self.qkv.bias[...]
            q = matmul(x[:, -1:], kernel[:, :d], mm, bias=qkv_bias[:d]).reshape(b, 1, h, d // h).transpose(0, 2, 1, 3)
            kv = matmul(x, kernel[:, d:], mm, bias=qkv_bias[d:]).reshape(b, t, 2, h, d // h).transpose(2, 0, 3, 1, 4)
            k, v = (a[0] for a in jnp.split(kv, 2))  # split, not indexing: its gradient is a concatenation
            bias = bias[:, :, -1:]
        else:
            qkv = dense(self.qkv, x, mm).reshape(b, t, 3, h, d // h).transpose(2, 0, 3, 1, 4)
            q, k, v = (a[0] for a in jnp.split(qkv, 3))  # [B, H, T, Dh] each
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(d // h).astype(x.dtype) + bias
        probs = self.attn_drop(jax.nn.softmax(logits, axis=-1), deterministic, rngs)
        heads = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
        return dense(self.out, heads.transpose(0, 2, 1, 3).reshape(b, q.shape[2], d), mm)


class Block(nnx.Module):
    """Post-LN (BERT-style) transformer layer: x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x)))."""

    def __init__(self, cfg: SASRecConfig, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.init_std)
        self.matmul_dtype = resolve_matmul_dtype(cfg.matmul_dtype)
        self.attn = SelfAttention(cfg, rngs)
        self.ln1 = nnx.LayerNorm(cfg.dim, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.fc1 = nnx.Linear(cfg.dim, cfg.inner_dim, kernel_init=init, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.inner_dim, cfg.dim, kernel_init=init, rngs=rngs)
        self.ln2 = nnx.LayerNorm(cfg.dim, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.drop = Dropout(cfg.dropout)

    def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool, rngs: nnx.Rngs | None,
                 last_only: bool = False) -> jax.Array:
        """[B, T, D] -> [B, T, D], or [B, 1, D]: the last position's output only (``last_only``)."""
        a = self.drop(self.attn(x, bias, deterministic, rngs, last_only), deterministic, rngs)
        x = layer_norm(self.ln1, (x[:, -1:] if last_only else x) + a)
        mm = self.matmul_dtype
        f = dense(self.fc2, jax.nn.gelu(dense(self.fc1, x, mm), approximate=False), mm)
        f = self.drop(f, deterministic, rngs)
        return layer_norm(self.ln2, x + f)


class SASRec(nnx.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.init_std)
        self.n_items = n_items
        self.window = cfg.window
        self.matmul_dtype = resolve_matmul_dtype(cfg.matmul_dtype)
        self.item_emb = nnx.Embed(n_items + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.item_emb.embedding[...] = self.item_emb.embedding[...].at[PAD].set(0.0)
        # window + 1 rows as in the original (one row is never used) so parameter counts match it exactly.
        self.pos_emb = nnx.Embed(cfg.window + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.ln = nnx.LayerNorm(cfg.dim, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])

    def user_state(self, history: jax.Array, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """history: int32 [B, window], left-padded with 0 -> float32 [B, dim] (state after the last item)."""
        x, bias = self._embed(history, deterministic, rngs)
        for block in self.blocks[:-1]:
            x = block(x, bias, deterministic, rngs)
        return self.blocks[-1](x, bias, deterministic, rngs, last_only=True)[:, 0]

    def hidden_states(self, history: jax.Array, deterministic: bool = True,
                      rngs: nnx.Rngs | None = None) -> jax.Array:
        """history: int32 [B, T] -> float32 [B, T, dim], position t seeing only positions <= t."""
        x, bias = self._embed(history, deterministic, rngs)
        for block in self.blocks:
            x = block(x, bias, deterministic, rngs)
        return x

    def _embed(self, history: jax.Array, deterministic: bool, rngs: nnx.Rngs | None) -> tuple[jax.Array, jax.Array]:
        """history int32 [B, T] -> (layer input [B, T, dim], additive attention bias [B, 1, T, T])."""
        valid = history != PAD
        # Masking the lookup keeps the pad row out of every gradient (torch's padding_idx).
        x = self.item_emb(history) * valid[..., None] + self.pos_emb(jnp.arange(history.shape[1]))[None]
        x = self.drop(layer_norm(self.ln, x), deterministic, rngs)
        t = history.shape[1]
        allowed = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]  # [B, Tq, Tk]
        bias = jnp.where(allowed, 0.0, MASK_VALUE)[:, None].astype(x.dtype)  # [B, 1, Tq, Tk]
        return x, bias

    def __call__(self, history: jax.Array, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """history: int32 [B, window] -> float32 scores [B, n_items + 1]; column 0 (padding) is -inf."""
        u = self.user_state(history, deterministic, rngs)
        scores = matmul(u, self.item_emb.embedding[...], self.matmul_dtype, transposed=True)
        return scores.at[:, PAD].set(-jnp.inf)
