"""LoRA on the Llama linears: pick targets by pattern, attach named adapters, split trainable/frozen, merge.

Several adapters can sit on one frozen backbone (RL uses "actor" and "critic"); the forward pass takes
``adapter=NAME`` (or None for the reference policy). An adapter that fully tunes a layer (the actor's
``lm_head``) owns a copy of its kernel instead of training the shared one. Module names are HF's (``model.layers.0.mlp.up_proj``,
``lm_head``), so the same patterns work here, in PEFT and in the exported files.

A target pattern matches a module when it equals the module name, is a dotted suffix of it (PEFT's
rule: ``q_proj`` matches every layer's q_proj), or is a regular expression that fully matches the name
(``model\\.layers\\.[0-3]\\..*proj``).

With ``scan_layers`` (``layer_stack.py``) the layers' linears are one stacked ``Linear`` each; patterns still
match the per-layer names (``layer_linears``), and a pattern must then select a stacked linear in every layer
or in none (``UserError`` otherwise): the stack runs one program for all layers.
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
from reclm_jax.models.layer_stack import is_stacked_name, layer_name, name_order, stacked_name
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


def layer_linears(model: nnx.Module) -> dict[str, tuple[Linear, int | None]]:
    """Every linear by its unrolled name, in the unrolled model's order: (module, layer), where ``layer`` indexes
    the leading dim of a stacked linear's parameters (``scan_layers``) and is None otherwise. For an unrolled
    model this is ``linear_modules`` with None beside each module."""
    views = {}
    for name, lin in linear_modules(model).items():
        if is_stacked_name(name):  # a layer stack: one entry per layer
            views.update({layer_name(name, i): (lin, i) for i in range(lin.kernel[...].shape[0])})
        else:
            views[name] = (lin, None)
    return dict(sorted(views.items(), key=lambda kv: name_order(kv[0])))


def _stack_groups(model: nnx.Module, chosen: list[str], what: str) -> list[tuple[str, Linear, list[int]]]:
    """``chosen`` (unrolled names) grouped by the module that holds them: (module name, module, positions in
    ``chosen`` in layer order). A stacked linear must be chosen in every layer (``UserError`` otherwise)."""
    views, real = layer_linears(model), linear_modules(model)
    groups: dict[str, list[tuple[int, int]]] = {}
    for k, name in enumerate(chosen):
        if name not in views:
            raise UserError(f"{what} module {name!r} does not exist in this model")
        layer = views[name][1]
        groups.setdefault(name if layer is None else stacked_name(name)[0], []).append((layer or 0, k))
    out = []
    for mod, members in groups.items():
        lin = real[mod]
        if is_stacked_name(mod):
            n = lin.kernel[...].shape[0]
            layers = sorted(layer for layer, _ in members)
            if layers != list(range(n)):
                raise UserError(f"{what} selects {mod.replace('model.layers.', 'model.layers.N.')} in layers "
                                f"{layers} of {n}, but with model.scan_layers the layers are one stack: select it "
                                f"in every layer or in none (e.g. target {mod.rsplit('.', 1)[-1]!r}), or set "
                                f"model.scan_layers=false")
        out.append((mod, lin, [k for _, k in sorted(members)]))
    return out


def matches(name: str, pattern: str) -> bool:
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def select_targets(model: nnx.Module, targets: tuple[str, ...]) -> list[str]:
    """Names of the linears matched by any of ``targets`` (``UserError`` if a pattern matches none)."""
    names = list(layer_linears(model))
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


def mesh_of(tree):
    """The mesh of the first ``NamedSharding`` leaf of ``tree`` (an array or a pytree of arrays, e.g. an
    ``nnx.State``), or None when nothing is on a mesh. The one helper for "which mesh do these weights live
    on" (LoRA placement here, the Sampler's default ``Runtime``)."""
    for leaf in jax.tree_util.tree_leaves(tree):
        s = getattr(leaf, "sharding", None)
        if isinstance(s, NamedSharding):
            return s.mesh
    return None


def _check_adapter_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise UserError(f"adapter name {name!r}: use letters, digits and '_' only")


def add_lora(model: nnx.Module, cfg: LoraConfig, name: str = "default", *, seed: int = 0,
             modules: list[str] | None = None, full_tune: tuple[str, ...] = ()) -> list[str]:
    """Attaches adapter ``name`` to the linears matched by ``cfg.targets`` (or exactly ``modules``).

    A is random, B zero. Parameters are placed on the mesh of the model's weights. ``full_tune`` (patterns
    as ``targets``, e.g. ``("lm_head",)``) also gives the adapter its own full kernel copies in
    ``cfg.param_dtype`` (see ``own_full_copy``). Returns the names of the modules that got LoRA factors.
    """
    _check_adapter_name(name)
    if cfg.rank <= 0:
        raise UserError(f"LoRA rank must be positive, got {cfg.rank}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"LoRA dropout must be in [0, 1), got {cfg.dropout}")
    chosen = list(modules) if modules is not None else select_targets(model, cfg.targets)
    mesh = mesh_of(model.model.embed_tokens.weight[...])
    key = jax.random.key(seed)
    dtype = jnp.dtype(cfg.param_dtype)
    for mod_name, lin, positions in _stack_groups(model, chosen, "LoRA"):
        if name in lin.adapters:
            raise UserError(f"module {mod_name} already has an adapter named {name!r}")
        # Module i of ``chosen`` draws A from fold_in(key, i), stacked or not: the same start either way.
        inits = [_a_init(cfg, jax.random.fold_in(key, i), lin.in_features) for i in positions]
        a = jnp.stack(inits) if is_stacked_name(mod_name) else inits[0]
        lin.add_adapter(name, cfg.rank, cfg.scale, cfg.dropout, a, param_dtype=dtype)
        if mesh is not None:
            for part in ("a", "b"):
                var = lin.lora[name][part]
                spec_name = f"{mod_name}.lora.{name}.{part}"
                sharding = param_sharding(spec_name, var[...].shape, mesh, model.config)
                var.set_value(jax.device_put(var[...], sharding))
    if full_tune:
        own_full_copy(model, name, full_tune, param_dtype=cfg.param_dtype)
    return list(chosen)


def base_kernel(model: nnx.Module, module: str) -> jnp.ndarray:
    """The frozen [in, out] kernel that ``module`` multiplies by (the embedding transposed for a tied head)."""
    lin = linear_modules(model)[module]
    if lin.kernel is None:  # only the tied lm_head has none
        return model.model.embed_tokens.weight[...].T
    return lin.kernel[...]


def own_full_copy(model: nnx.Module, adapter: str, targets: tuple[str, ...],
                  param_dtype: str | None = None) -> list[str]:
    """Gives ``adapter`` its own copy of the kernel of every linear matched by ``targets``, in place.

    Called with ``adapter=NAME`` those linears then multiply by the copy (a ``FullKernel`` at
    ``<module>.full.<adapter>``, selected by ``adapter_filter(adapter)`` and so by ``split_trainable``);
    ``adapter=None`` and every other adapter keep reading the frozen original. The copy is [in, out] like
    every kernel: on a tied model ``lm_head``'s starts as the embedding transposed, [hidden, vocab], and
    costs one more vocab x hidden matrix. ``param_dtype`` defaults to the original's dtype. Returns the
    module names.
    """
    _check_adapter_name(adapter)
    chosen = select_targets(model, tuple(targets))
    mesh = mesh_of(model.model.embed_tokens.weight[...])
    for mod_name, lin, _ in _stack_groups(model, chosen, "full_tune"):
        if adapter in lin.full_copies:
            raise UserError(f"module {mod_name} already has a full copy for adapter {adapter!r}")
        w = base_kernel(model, mod_name)
        # A new buffer, never an alias of the frozen kernel: a train step donates the trainable state.
        copy = jnp.array(w, dtype=jnp.dtype(param_dtype) if param_dtype else w.dtype, copy=True)
        if mesh is not None:
            copy = jax.device_put(copy, param_sharding(f"{mod_name}.full.{adapter}", copy.shape, mesh, model.config))
        lin.add_full_copy(adapter, copy)
    return chosen


def adapter_names(model: nnx.Module) -> list[str]:
    names: list[str] = []
    for lin in linear_modules(model).values():
        names += [n for n in (*lin.adapters, *lin.full_copies) if n not in names]
    return names


def adapter_modules(model: nnx.Module, name: str) -> dict[str, Linear]:
    """The linears carrying LoRA factors of adapter ``name`` (``UserError`` if the model has no such adapter).

    Empty when the adapter only owns full kernel copies (see ``full_copy_modules``).
    """
    if name not in adapter_names(model):
        raise UserError(f"the model has no LoRA adapter named {name!r} (it has: {adapter_names(model) or 'none'})")
    return {k: m for k, m in linear_modules(model).items() if name in m.adapters}


def full_copy_modules(model: nnx.Module, name: str) -> dict[str, Linear]:
    """The linears in which adapter ``name`` owns a full kernel copy (possibly none)."""
    return {k: m for k, m in linear_modules(model).items() if name in m.full_copies}


def adapter_layers(model: nnx.Module, name: str) -> dict[str, tuple[Linear, int | None]]:
    """``adapter_modules`` by unrolled name, as ``layer_linears``: what adapter files and exports list."""
    adapter_modules(model, name)  # the UserError for an unknown adapter
    return {k: v for k, v in layer_linears(model).items() if name in v[0].adapters}


def full_copy_layers(model: nnx.Module, name: str) -> dict[str, tuple[Linear, int | None]]:
    """``full_copy_modules`` by unrolled name, as ``layer_linears``."""
    return {k: v for k, v in layer_linears(model).items() if name in v[0].full_copies}


def remove_lora(model: nnx.Module, name: str) -> None:
    """Removes adapter ``name``: its LoRA factors and its full kernel copies."""
    for lin in adapter_modules(model, name).values():
        lin.remove_adapter(name)
    for lin in full_copy_modules(model, name).values():
        lin.remove_full_copy(name)


def untie_lm_head(model: nnx.Module) -> None:
    """Gives a tied model its own ``lm_head.kernel`` (a copy of the embedding, [hidden, vocab])."""
    cfg = model.config
    if not cfg.tie_word_embeddings:
        return
    emb = model.model.embed_tokens.weight[...]
    kernel = emb.T
    if isinstance(getattr(emb, "sharding", None), NamedSharding):
        kernel = jax.device_put(kernel, param_sharding("lm_head.kernel", kernel.shape, emb.sharding.mesh, cfg))
    model.lm_head.kernel = nnx.Param(kernel)
    model.config = cfg.replace(tie_word_embeddings=False)


def merge_lora(model: nnx.Module, name: str) -> None:
    """Folds adapter ``name`` into the base kernels and removes it, in place.

    Each kernel becomes the adapter's full copy where it owns one, else the original, plus
    ``scale * A @ B`` where it has LoRA factors. An ``lm_head`` adapter on a tied model unties it first: the
    merged head no longer equals the embedding.
    """
    mods, owned = adapter_modules(model, name), full_copy_modules(model, name)
    if "lm_head" in mods or "lm_head" in owned:
        untie_lm_head(model)
    for mod_name, lin in linear_modules(model).items():
        if mod_name not in mods and mod_name not in owned:
            continue
        w = lin.kernel[...]
        merged = (lin.full[name][...] if mod_name in owned else w).astype(jnp.float32)
        if mod_name in mods:
            merged = merged + lin.lora_delta(name)
        merged = merged.astype(w.dtype)
        if isinstance(getattr(w, "sharding", None), NamedSharding):
            merged = jax.device_put(merged, w.sharding)
        lin.kernel.set_value(merged)
    remove_lora(model, name)


def _owned_by(names: tuple[str, ...]):
    """Path predicate: the parameter sits under ``lora.<name>`` or ``full.<name>`` for one of ``names``.

    Looks at the adapter slot only, so an adapter called e.g. ``mlp`` does not also select every module
    named ``mlp`` (``nnx.PathContains`` would).
    """
    def pred(path, _value) -> bool:
        keys = [str(p) for p in path]
        return any(keys[i] in ("lora", "full") and keys[i + 1] in names for i in range(len(keys) - 1))

    return pred


def adapter_filter(*names: str) -> nnx.filterlib.Filter:
    """Selects the parameters of the named adapters, LoRA factors and full kernel copies (all adapters'
    when no name is given)."""
    if not names:
        return LoRAParam
    return nnx.All(LoRAParam, _owned_by(names))


def split_trainable(model: nnx.Module, adapters: tuple[str, ...] = ("default",)):
    """``(graphdef, trainable, frozen)`` for a jitted step that differentiates only ``trainable``.

    Trainable = the parameters of ``adapters``: their LoRA factors and the full kernel copies they own (an
    actor that fully tunes ``lm_head`` owns one, see ``own_full_copy``); everything shared stays frozen, so
    the reference policy (``adapter=None``) and other adapters never move. Rebuild with
    ``nnx.merge(graphdef, trainable, frozen)``.
    """
    graphdef, train_state, frozen_state = nnx.split(model, adapter_filter(*adapters), ...)
    return graphdef, train_state, frozen_state
