"""Matrix products that run at the CPU's bf16 rate: bf16 x bf16 dots accumulated and returned in f32.

XLA:CPU runs a bf16 x bf16 -> bf16 dot as an f32 dot behind inserted converts, but a bf16 x bf16 -> f32 dot
with the CPU's bf16 dot-product instructions: about 2x the FLOP rate on this project's AVX512-BF16 machines
(measured: 154 vs 372 GFLOP/s for [1024, 576] x [576, 1536]). ``matmul`` writes every low-precision product
that way, gradients included. It is the ``kernels="cpu"`` product (see ``kernels.py``); GPUs and TPUs, which
already accumulate bf16 dots in f32, run ``kernels="xla"``'s plain dot.

Few-row forward products (decoding: one row per sequence) go to the native kernel of ``native_kernels.py``
where it applies: it uses every core for them, which XLA:CPU's kernel does not.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from reclm_jax.models import native_kernels


def _dims(transposed: bool):
    # x [M, K] with w [K, N], or with w [N, K] when ``transposed``: contract K.
    return ((1,), (1 if transposed else 0,)), ((), ())


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dot_f32acc(x: jnp.ndarray, w: jnp.ndarray, transposed: bool) -> jnp.ndarray:
    if native_kernels.dot_applies(x, w):
        return native_kernels.native_dot(x, w, transposed).astype(x.dtype)
    if x.shape[0] == 1:
        # A one-row bf16 product (decoding one sequence) leaves XLA:CPU's library kernel for a generic loop
        # that ran 9x slower than the same product with two rows (0.9 against 7.8 GB/s of weights streamed,
        # [1, 576] x [576, 1536], measured on the 2-core dev machine); a zero second row costs nothing.
        x2 = jnp.concatenate([x, jnp.zeros_like(x)])
        return jax.lax.dot_general(x2, w, _dims(transposed), preferred_element_type=jnp.float32)[:1].astype(x.dtype)
    return jax.lax.dot_general(x, w, _dims(transposed), preferred_element_type=jnp.float32).astype(x.dtype)


def _dot_f32acc_fwd(x, w, transposed):
    return _dot_f32acc(x, w, transposed), (x, w)


def _dot_f32acc_bwd(transposed, res, g):
    # Written by hand so the gradient dots are bf16 x bf16 -> f32 as well (autodiff of the forward would
    # feed an f32 cotangent into them). The kernel's gradient is dead code for a frozen kernel; XLA drops it.
    x, w = res
    f32 = jnp.float32
    if transposed:  # w [N, K]
        dx = jax.lax.dot_general(g, w, (((1,), (0,)), ((), ())), preferred_element_type=f32)
        dw = jax.lax.dot_general(g, x, (((0,), (0,)), ((), ())), preferred_element_type=f32)
    else:  # w [K, N]
        dx = jax.lax.dot_general(g, w, (((1,), (1,)), ((), ())), preferred_element_type=f32)
        dw = jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())), preferred_element_type=f32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dot_f32acc.defvjp(_dot_f32acc_fwd, _dot_f32acc_bwd)


def matmul(x: jnp.ndarray, w: jnp.ndarray, transposed: bool = False) -> jnp.ndarray:
    """x [M, K] @ w [K, N] (w [N, K] when ``transposed``) -> [M, N] in x's dtype, accumulated in f32.

    Both operands must have the same dtype. ``transposed`` serves a tied LM head, which contracts the
    [vocab, hidden] embedding directly rather than materialising its transpose. f32 operands get the plain dot.
    """
    if x.dtype != jnp.float32:
        return _dot_f32acc(x, w, transposed)
    return jax.lax.dot_general(x, w, _dims(transposed))
