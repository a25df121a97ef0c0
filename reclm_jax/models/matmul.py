"""Matrix products that run at the CPU's bf16 rate: bf16 x bf16 dots accumulated and returned in f32.

XLA:CPU runs a bf16 x bf16 -> bf16 dot as an f32 dot behind inserted converts, but a bf16 x bf16 -> f32 dot
with the CPU's bf16 dot-product instructions: about 2x the FLOP rate on this project's AVX512-BF16 machines
(measured: 154 vs 372 GFLOP/s for [1024, 576] x [576, 1536]). ``matmul`` writes every low-precision product
that way, gradients included. It is the ``kernels="cpu"`` product (see ``kernels.py``); GPUs and TPUs, which
already accumulate bf16 dots in f32, run ``kernels="xla"``'s plain dot.

Few-row forward products (decoding: one row per sequence) go to the native kernel of ``native_kernels.py``
where it applies: it uses every core for them, which XLA:CPU's kernel does not. On CPUs with AMX tiles
(``native_kernels.has_amx``) many-row forward products go to its tile kernel (``amx_dot``); the gradient's
products stay XLA's.

On a CPU without AVX512-BF16 (``native_kernels.cpu_variant()`` is not "bf16") XLA:CPU has no bf16 dot
instruction to use, and its bf16 -> f32 dot ran at about two thirds of its f32 dot's rate (measured on a
2-core Skylake-SP: see docs/performance.md); there the other products widen both operands to f32 first. The
sums are the same f32 sums of exact products (a bf16 x bf16 product is exact in f32), in XLA's f32 order.
``RECLM_JAX_WIDEN_BF16=0`` keeps the bf16 dots (for A/B measurements).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from reclm_jax.models import native_kernels


def _dims(transposed: bool):
    # x [M, K] with w [K, N], or with w [N, K] when ``transposed``: contract K.
    return ((1,), (1 if transposed else 0,)), ((), ())


def _f32_dot(a: jnp.ndarray, b: jnp.ndarray, dims) -> jnp.ndarray:
    """a . b contracted by ``dims`` with f32 sums: bf16 operands widened to f32 first where the CPU has no bf16
    dot instruction (see the module docstring), else XLA's bf16 -> f32 dot."""
    if not native_kernels.has_bf16_dot():
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dot_f32acc(x: jnp.ndarray, w: jnp.ndarray, transposed: bool) -> jnp.ndarray:
    if native_kernels.dot_applies(x, w):
        return native_kernels.native_dot(x, w, transposed).astype(x.dtype)
    if native_kernels.amx_applies(x, w):
        return native_kernels.amx_dot(x, w, transposed).astype(x.dtype)
    if not native_kernels.has_bf16_dot():
        return _f32_dot(x, w, _dims(transposed)).astype(x.dtype)
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
    if transposed:  # w [N, K]
        dx = _f32_dot(g, w, (((1,), (0,)), ((), ())))
        dw = _f32_dot(g, x, (((0,), (0,)), ((), ())))
    else:  # w [K, N]
        dx = _f32_dot(g, w, (((1,), (1,)), ((), ())))
        dw = _f32_dot(x, g, (((0,), (0,)), ((), ())))
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
