"""LoRA on the Llama linears: pick targets by pattern, attach named adapters, split trainable/frozen, merge.

Several adapters can sit on one frozen backbone (RL uses "actor" and "critic"); the forward pass takes
``adapter=NAME`` (or None for the reference policy). Module names are HF's (``model.layers.0.mlp.up_proj``,
``lm_head``), so the same patterns work here, in PEFT and in the exported files.

A target pattern matches a module when it equals the module name, is a dotted suffix of it (PEFT's
rule: ``q_proj`` matches every layer's q_proj), or is a regular expression that fully matches the name
(``model\\.layers\\.[0-3]\\..*proj``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from reclm_jax.errors import UserError
from reclm_jax.models.linear import Linear, LoRAParam
from reclm_jax.models.sharding import param_sharding, path_name

ALL_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """One adapter's hyperparameters. ``scale = alpha / rank``; ``init`` sets A ("orthogonal": gain sqrt(2),
    as RecLM-gen; "kaiming": PEFT's default), B always starts at zero so a new adapter changes nothing."""

    rank: int = 16
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ALL_LINEARS
    init: Literal["orthogonal", "kaiming"] = "orthogonal"
    param_dtype: str = "float32"

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def linear_modules(model: nnx.Module) -> dict[str, Linear]:
    """Every ``Linear`` of ``model`` by dotted HF-style name (``lm_head``, ``model.layers.0.self_attn.q_proj``)."""
    return {path_name(path): m for path, m in nnx.iter_modules(model) if isinstance(m, Linear)}


def matches(name: str, pattern: str) -> bool:
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def select_targets(model: nnx.Module, targets: tuple[str, ...]) -> list[str]:
    """Names of the linears matched by any of ``targets`` (``UserError`` if a pattern matches none)."""
    names = list(linear_modules(model))
    chosen = []
    for pattern in targets:
        hit = [n for n in names if matches(n, pattern)]
        if not hit:
            raise UserError(f"LoRA target {pattern!r} matches no module; modules look like "
                            f"'model.layers.0.self_attn.q_proj', 'model.layers.0.mlp.down_proj', 'lm_head'")
        chosen += [n for n in hit if n not in chosen]
    return sorted(chosen, key=names.index)


def _a_init(cfg: LoraConfig, key, fan_in: int) -> jnp.ndarray:
    shape = (fan_in, cfg.rank)
    if cfg.init == "orthogonal":
        # Orthonormal columns of A [in, r] = orthonormal rows of torch's lora_A [r, in].
        return jax.nn.initializers.orthogonal(scale=math.sqrt(2.0))(key, shape, jnp.float32)
    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform with a=sqrt(5), as torch Linear / PEFT
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _mesh_of(model: nnx.Module):
    s = getattr(model.model.embed_tokens.weight[...], "sharding", None)
    return s.mesh if isinstance(s, NamedSharding) else None


def add_lora(model: nnx.Module, cfg: LoraConfig, name: str = "default", *, seed: int = 0,
             modules: list[str] | None = None) -> list[str]:
    """Attaches adapter ``name`` to the linears matched by ``cfg.targets`` (or exactly ``modules``).

    A is random, B zero. Parameters are placed on the mesh of the model's weights. Returns the names of
    the modules that got the adapter.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise UserError(f"adapter name {name!r}: use letters, digits and '_' only")
    if cfg.rank <= 0:
        raise UserError(f"LoRA rank must be positive, got {cfg.rank}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"LoRA dropout must be in [0, 1), got {cfg.dropout}")
    linears = linear_modules(model)
    chosen = modules if modules is not None else select_targets(model, cfg.targets)
    mesh = _mesh_of(model)
    key = jax.random.key(seed)
    dtype = jnp.dtype(cfg.param_dtype)
    for i, mod_name in enumerate(chosen):
        if mod_name not in linears:
            raise UserError(f"LoRA module {mod_name!r} does not exist in this model")
        lin = linears[mod_name]
        if name in lin.adapters:
            raise UserError(f"module {mod_name} already has an adapter named {name!r}")
        a = _a_init(cfg, jax.random.fold_in(key, i), lin.in_features)
        lin.add_adapter(name, cfg.rank, cfg.scale, cfg.dropout, a, param_dtype=dtype)
        if mesh is not None:
            for part in ("a", "b"):
                var = lin.lora[name][part]
                spec_name = f"{mod_name}.lora.{name}.{part}"
                var.set_value(jax.device_put(var[...], param_sharding(spec_name, var[...].shape, mesh)))
    return list(chosen)


def adapter_names(model: nnx.Module) -> list[str]:
    names: list[str] = []
    for lin in linear_modules(model).values():
        names += [n for n in lin.adapters if n not in names]
    return names


def adapter_modules(model: nnx.Module, name: str) -> dict[str, Linear]:
    """The linears carrying adapter ``name`` (``UserError`` if there are none)."""
    found = {k: m for k, m in linear_modules(model).items() if name in m.adapters}
    if not found:
        raise UserError(f"the model has no LoRA adapter named {name!r} (it has: {adapter_names(model) or 'none'})")
    return found


def remove_lora(model: nnx.Module, name: str) -> None:
    for lin in adapter_modules(model, name).values():
        lin.remove_adapter(name)


def untie_lm_head(model: nnx.Module) -> None:
    """Gives a tied model its own ``lm_head.kernel`` (a copy of the embedding, [hidden, vocab])."""
    cfg = model.config
    if not cfg.tie_word_embeddings:
        return
    emb = model.model.embed_tokens.weight[...]
    kernel = emb.T
    if isinstance(getattr(emb, "sharding", None), NamedSharding):
        kernel = jax.device_put(kernel, param_sharding("lm_head.kernel", kernel.shape, emb.sharding.mesh))
    model.lm_head.kernel = nnx.Param(kernel)
    model.config = cfg.replace(tie_word_embeddings=False)


def merge_lora(model: nnx.Module, name: str) -> None:
    """Folds adapter ``name`` into the base kernels (``W += scale * A @ B``) and removes it, in place.

    An ``lm_head`` adapter on a tied model unties it first: the merged head no longer equals the embedding.
    """
    mods = adapter_modules(model, name)
    if "lm_head" in mods:
        untie_lm_head(model)
    for lin in mods.values():
        w = lin.kernel[...]
        merged = (w.astype(jnp.float32) + lin.lora_delta(name)).astype(w.dtype)
        if isinstance(getattr(w, "sharding", None), NamedSharding):
            merged = jax.device_put(merged, w.sharding)
        lin.kernel.set_value(merged)
        lin.remove_adapter(name)


def adapter_filter(*names: str) -> nnx.filterlib.Filter:
    """Selects the LoRA parameters of the named adapters (all adapters when no name is given)."""
    if not names:
        return LoRAParam
    return nnx.All(LoRAParam, nnx.Any(*(nnx.PathContains(n) for n in names)))


def split_trainable(model: nnx.Module, adapters: tuple[str, ...] = ("default",), full_tune: tuple[str, ...] = ()):
    """``(graphdef, trainable, frozen)`` for a jitted step that differentiates only ``trainable``.

    Trainable = the LoRA parameters of ``adapters`` plus whole parameters whose dotted path starts with
    one of ``full_tune`` (e.g. ``("lm_head",)`` as RecLM-gen's RL actor). Rebuild with
    ``nnx.merge(graphdef, trainable, frozen)``.
    """
    full = [nnx.All(nnx.Param, nnx.Not(LoRAParam), _path_prefix(p)) for p in full_tune]
    trainable = nnx.Any(adapter_filter(*adapters), *full) if full else adapter_filter(*adapters)
    graphdef, train_state, frozen_state = nnx.split(model, trainable, ...)
    return graphdef, train_state, frozen_state


def _path_prefix(prefix: str):
    def pred(path, _value) -> bool:
        return path_name(path).startswith(prefix)

    return pred
