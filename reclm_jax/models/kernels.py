"""The one switch between the model's two implementations of its products: ``kernels = "xla" | "cpu"``.

- ``"xla"``: plain ``jax.lax.dot_general`` in the compute dtype and ``jax.nn.dot_product_attention`` for the
  cache-free pass. What GPUs and TPUs run: they accumulate low-precision dots in f32 themselves and may pick
  a fused attention kernel.
- ``"cpu"``: the XLA:CPU fast paths, bf16 x bf16 -> f32 dots with a hand-written backward (``matmul.py``)
  and blocked causal attention (``attention.py``); for decoding, where they apply, the native kernels of
  ``native_kernels.py`` (few-row products and one step's cached attention on every core).
- ``"auto"`` (the default everywhere a user chooses): ``"cpu"`` when ``jax.default_backend()`` is the CPU,
  else ``"xla"``.

The choice is resolved once, when the model is built (``from_hf_config``, ``load_llama(kernels=...)``,
``LlamaForCausalLM``), and stored as a static attribute of each ``Linear`` and ``Attention`` (part of the
graphdef, so jit keys on it). Model code never asks which backend it runs on, so both paths run in the
CPU test suite and a user can force either.

Shared by both: ``Linear`` flattens its input to 2-D (measured on XLA:CPU: 18-33% faster LoRA steps; on
GPUs/TPUs a free reshape of contiguous major dims, and it keeps LoRA dropout masks identical across the two
paths); decoding attention over the cache (``step_attention``: the cache's uint16-view writes,
``kv_cache.write_slots``, then ``attention.cached_attention``'s f32-accumulating einsums, which every backend
supports; on ``"cpu"`` the native kernel instead, where it applies).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

from reclm_jax.errors import UserError
from reclm_jax.models import native_kernels
from reclm_jax.models.attention import cached_attention, causal_attention
from reclm_jax.models.kv_cache import write_slots
from reclm_jax.models.matmul import matmul

KERNELS = ("auto", "xla", "cpu")


def resolve_kernels(value: str, key: str = "kernels") -> str:
    """``"auto"`` -> ``"cpu"`` on the CPU backend, else ``"xla"``; ``"xla"``/``"cpu"`` unchanged.

    Anything else raises ``UserError`` naming ``key``.
    """
    if value not in KERNELS:
        raise UserError(f"{key} must be one of {', '.join(KERNELS)}, got {value!r}")
    if value == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    return value


def _resolved(kernels: str) -> str:
    # Dispatch takes resolved values only: "auto" reaching model math would mean a backend read at trace time.
    if kernels not in ("xla", "cpu"):
        raise ValueError(f"kernels must be resolved to 'xla' or 'cpu' before use, got {kernels!r}")
    return kernels


# Decoding on "cpu": kernels packed for the native product (``native_kernels.pack_kernel``) by the Linear's
# ``uid``. A decoding program packs them once, outside its loop, and traces its model calls inside
# ``packed_weights`` (models/sampler.py); everywhere else there are none and the plain kernels are used.
_PACKED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("reclm_packed_kernels", default=None)


@contextlib.contextmanager
def packed_weights(packed: dict | None):
    """While tracing inside this block, Linears whose ``uid`` is in ``packed`` ({uid: packed kernel}) multiply
    few-row inputs by the packed kernel (``linear_dot``'s ``packed``); ``None`` or {}: no packed kernels."""
    token = _PACKED.set(packed or None)
    try:
        yield
    finally:
        _PACKED.reset(token)


def packed_kernel(uid: int):
    """The packed kernel of the Linear ``uid`` in the current ``packed_weights`` block, else None."""
    packed = _PACKED.get()
    return None if packed is None else packed.get(uid)


# The key of the token embedding's uint16 bits in a packed dict (Linear uids are >= 0; one key type, so the dict
# stays a sortable pytree). Inside a decoding loop XLA:CPU hoists the table's bitcast out of the loop as a full
# copy of the table, once per program call (SmolLM2's 56 MB: 27-41 ms per call on a 2-core Skylake-SP, once per
# chunk of a SlotDecoder); made once per set of weights, the bits are only gathered from.
EMBED_BITS = -1


def pack_for_decoding(kernel: jnp.ndarray, kernels: str):
    """A Linear's [in, out] kernel -> its packed form for the native few-row product, or None where that does not
    apply (``"xla"``, not bf16, no native library): the caller then keeps the plain kernel."""
    if _resolved(kernels) == "cpu" and native_kernels.pack_applies(kernel):
        return native_kernels.pack_kernel(kernel)
    return None


def linear_dot(x: jnp.ndarray, w: jnp.ndarray, kernels: str, transposed: bool = False,
               packed: jnp.ndarray | None = None) -> jnp.ndarray:
    """x [M, K] @ w [K, N] (w [N, K] when ``transposed``) -> [M, N] in x's dtype (both operands share it).

    ``transposed`` serves a tied LM head, which contracts the [vocab, hidden] embedding without
    materialising its transpose. ``packed``: w's ``pack_for_decoding`` form, used (on ``"cpu"``) for inputs
    of few enough rows (the same bits either way) and, on CPUs with AMX tiles, for inputs of 16 rows or more (a
    prefill, a batched decoding step: ``native_kernels.amx_packed_dot``, within f32 rounding of the plain product).
    """
    if _resolved(kernels) == "cpu":
        if packed is not None and native_kernels.amx_applies(x, w, native_kernels.AMX_PACKED_MIN_ROWS):
            # a prefill, or a decoding step of 16 rows or more, on AMX tiles
            return native_kernels.amx_packed_dot(x, packed, w.shape[1]).astype(x.dtype)
        if packed is not None and native_kernels.dot_applies(x, w):
            return native_kernels.packed_dot(x, packed, w.shape[1]).astype(x.dtype)
        return matmul(x, w, transposed)
    return jax.lax.dot_general(x, w, (((1,), (1 if transposed else 0,)), ((), ())))


def self_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray, scale: float,
                   kernels: str) -> jnp.ndarray:
    """Attention of T tokens over themselves (no cache, or a prefill into an empty one).

    q: [B, T, N, H]; k, v: [B, T, K, H] (GQA: N a multiple of K), compute dtype. mask: bool [B, 1, T, T],
    causal, every row allowing at least one key. Returns [B, T, N, H] in q's dtype.
    """
    if _resolved(kernels) == "cpu":
        return causal_attention(q, k, v, mask, scale)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)


def step_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, keys: jnp.ndarray, values: jnp.ndarray,
                   mask: jnp.ndarray, end, scale: float, kernels: str):
    """Writes T new tokens into the cache at slots [end, end + T) and attends over the cache.

    q: [B, T, N, H]; k, v: [B, T, K, H]; keys, values: [B, K, S, H] (cache dtype); mask: bool [B, 1, T, S];
    end: int32 scalar. Returns (out [B, T, N, H] in q's dtype, keys, values) with the new slots filled.
    """
    if _resolved(kernels) == "cpu" and native_kernels.attention_applies(q, keys):
        return native_kernels.decode_attention(q, k, v, keys, values, mask, end, scale)
    keys, values = write_slots(keys, k, end), write_slots(values, v, end)
    return cached_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask, scale), keys, values
