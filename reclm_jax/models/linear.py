"""A dense layer that can carry several named LoRA adapters, of which one (or none) is used per call.

The frozen kernel is stored ``[in, out]``; adapter ``name`` adds ``scale * dropout(x) @ A @ B`` with
A ``[in, r]`` and B ``[r, out]`` (both ``LoRAParam``, so filters can pick exactly what trains). Which
adapter runs is a plain call argument, so one frozen backbone serves an actor, a critic and the reference
policy (``adapter=None``) inside the same jitted function.

An adapter can also own a full copy of a layer's kernel (``add_full_copy``; RL's actor fully tunes
``lm_head``): called with that adapter the layer reads the copy, every other caller the frozen original, so
training the actor's head cannot move the reference policy or the critic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from reclm_jax.models.kernels import linear_dot, pack_for_decoding, packed_kernel, resolve_kernels


def dropout_keep(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jnp.ndarray:
    """bool mask of ``shape``, each entry False with probability ``rate`` (to within 2**-16).

    Each 32-bit random word decides two entries (its low and high 16 bits) rather than one as in
    ``jax.random.bernoulli``: threefry makes 32 bits per evaluation, so this halves the RNG work, which was
    ~8% of a LoRA SFT step on CPU.
    """
    threshold = min(round(rate * 65536), 65535)
    if shape[-1] % 2:
        return (jax.random.bits(key, shape) >> 16) >= threshold
    words = jax.random.bits(key, (*shape[:-1], shape[-1] // 2))
    return jnp.concatenate([(words & 0xFFFF) >= threshold, (words >> 16) >= threshold], axis=-1)


class LoRAParam(nnx.LoRAParam):
    """A parameter that belongs to one adapter: a LoRA factor (A or B) or an owned full kernel.

    A distinct type (flax's own ``nnx.LoRAParam`` underneath, so flax's LoRA filters agree) that lives under
    its adapter's name in the path, so ``nnx.split(model, LoRAParam, ...)`` separates every adapter parameter
    from the frozen base and ``lora.adapter_filter(name)`` one adapter's.
    """


class FullKernel(LoRAParam):
    """An adapter's own full copy of a ``Linear``'s kernel, [in, out] (at ``<module>.full.<adapter>``)."""


def normal_init(std: float = 0.02):
    def init(key, shape, dtype):
        return (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)

    return init


class Linear(nnx.Module):
    """``y = x @ kernel (+ bias) (+ LoRA of the active adapter)``.

    ``kernel`` may be absent (``with_kernel=False``): the tied ``lm_head`` then receives the [vocab, hidden]
    embedding matrix as ``kernel_t=`` at call time but still owns its own LoRA adapters (and full copies).
    ``kernels`` ("auto", "xla", "cpu"; see ``kernels.py``) is resolved here and kept as a static attribute.
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = False, param_dtype=jnp.float32,
                 dtype=jnp.float32, with_kernel: bool = True, uid: int = 0, kernels: str = "auto",
                 rngs: nnx.Rngs):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.kernels = resolve_kernels(kernels)
        self.uid = uid  # folds into the dropout key so each layer draws its own mask
        # nnx.data: the attribute stays a data slot even while None (untie_lm_head fills it later).
        self.kernel = nnx.data(nnx.Param(normal_init()(rngs.params(), (in_features, out_features), param_dtype))
                               if with_kernel else None)
        self.bias = nnx.data(nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None)
        self.lora = nnx.Dict()
        self.full = nnx.Dict()  # adapter name -> FullKernel [in, out]
        # ((name, scale, dropout rate), ...): static (part of the graphdef, which jit hashes), so a tuple.
        self.lora_meta: tuple = ()

    @property
    def adapters(self) -> dict[str, tuple[float, float]]:
        """name -> (scale, dropout rate) of every attached adapter."""
        return {n: (s, d) for n, s, d in self.lora_meta}

    def add_adapter(self, name: str, rank: int, scale: float, dropout: float, a_init: jnp.ndarray,
                    param_dtype=None) -> None:
        """Attaches adapter ``name`` with A = ``a_init`` [in, r] and B = 0 [r, out] (in a layer stack, A
        [L, in, r] and B [L, r, out])."""
        if a_init.shape[-2:] != (self.in_features, rank):
            raise ValueError(f"LoRA A must be {(self.in_features, rank)}, got {a_init.shape}")
        dt = param_dtype or a_init.dtype
        self.lora[name] = nnx.Dict(a=LoRAParam(a_init.astype(dt)),
                                   b=LoRAParam(jnp.zeros((*a_init.shape[:-2], rank, self.out_features), dt)))
        self.lora_meta = self.lora_meta + ((name, float(scale), float(dropout)),)

    def remove_adapter(self, name: str) -> None:
        del self.lora[name]
        self.lora_meta = tuple(m for m in self.lora_meta if m[0] != name)

    @property
    def full_copies(self) -> tuple[str, ...]:
        """Names of the adapters that own a full copy of this layer's kernel."""
        return tuple(self.full.keys())

    def add_full_copy(self, name: str, kernel: jnp.ndarray) -> None:
        """Gives adapter ``name`` its own kernel, initialised to ``kernel`` [in, out] (its dtype kept; [L, in, out]
        in a layer stack)."""
        if kernel.shape[-2:] != (self.in_features, self.out_features):
            raise ValueError(f"full kernel must be {(self.in_features, self.out_features)}, got {kernel.shape}")
        self.full[name] = FullKernel(kernel)

    def remove_full_copy(self, name: str) -> None:
        del self.full[name]

    def lora_delta(self, name: str, layer: int | None = None) -> jnp.ndarray:
        """``scale * A @ B`` in float32 [in, out]: what merging adds to the kernel. In a layer stack: [L, in, out],
        or layer ``layer``'s [in, out]."""
        scale, _ = self.adapters[name]
        a, b = self.lora[name]["a"][...], self.lora[name]["b"][...]
        if layer is not None:
            a, b = a[layer], b[layer]
        return scale * (a.astype(jnp.float32) @ b.astype(jnp.float32))

    def __call__(self, x: jnp.ndarray, *, adapter: str | None = None, dropout_rng: jax.Array | None = None,
                 kernel_t: jnp.ndarray | None = None, uid_offset=0) -> jnp.ndarray:
        """x [..., in] -> [..., out] in the compute dtype.

        ``kernel_t``: [out, in], used instead of ``kernel`` (the tied head's embedding). An ``adapter`` that owns
        a full copy uses that copy instead of either. ``uid_offset`` (an int, or a traced int32 scalar) is added to
        ``uid`` for the dropout key: a layer stack's one ``Linear`` serves every layer (``layer_stack.py``) and
        passes the layer's offset, so each layer draws the mask the unrolled model's layer draws.
        """
        lead = x.shape[:-1]
        # 2-D matmuls on both kernel paths: with a [B, T, in] input XLA:CPU transposes the [B*T, out] gradient
        # before the LoRA weight-gradient dots (measured: the LoRA SFT step is 18-33% faster flattened); on
        # GPUs/TPUs the reshape is free, and one shape keeps dropout masks the same on both paths.
        x = x.reshape(-1, x.shape[-1]).astype(self.dtype)
        if adapter is not None and adapter in self.full:
            y = linear_dot(x, self.full[adapter][...].astype(self.dtype), self.kernels)
        elif kernel_t is None:
            y = linear_dot(x, self.kernel[...].astype(self.dtype), self.kernels, packed=packed_kernel(self.uid))
        else:
            y = linear_dot(x, kernel_t.astype(self.dtype), self.kernels, transposed=True)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if adapter is not None and adapter in self.adapters:
            scale, rate = self.adapters[adapter]
            ad = self.lora[adapter]
            h = x
            if rate > 0.0 and dropout_rng is not None:
                keep = dropout_keep(jax.random.fold_in(dropout_rng, self.uid + uid_offset), rate, x.shape)
                h = jnp.where(keep, x / (1.0 - rate), 0).astype(self.dtype)
            low = linear_dot(h, ad["a"][...].astype(self.dtype), self.kernels)
            y = y + linear_dot(low, ad["b"][...].astype(self.dtype), self.kernels) * jnp.asarray(scale, self.dtype)
        return y.reshape(*lead, y.shape[-1])


def pack_linears(model: nnx.Module) -> dict[int, jnp.ndarray]:
    """{uid: packed kernel} of every Linear of ``model`` whose frozen 2-D kernel the native few-row product can
    use packed (``kernels.pack_for_decoding``); {} where none can (GPUs, TPUs, float32, a layer stack's [L, in, out]
    kernels). A decoding program computes it once and traces its steps inside ``kernels.packed_weights``."""
    packed, seen = {}, set()
    for _, module in nnx.iter_modules(model):
        if not isinstance(module, Linear):
            continue
        if module.uid in seen:  # uids key the packed kernels: a shared one (e.g. an extra head's default 0) never is
            packed.pop(module.uid, None)
            continue
        seen.add(module.uid)
        if module.kernel is not None and module.kernel[...].ndim == 2:
            wp = pack_for_decoding(module.kernel[...].astype(module.dtype), module.kernels)
            if wp is not None:
                packed[module.uid] = wp
    return packed
