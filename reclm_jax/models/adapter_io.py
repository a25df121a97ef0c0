"""Saving and loading one adapter: its LoRA factors and the full kernel copies it owns (e.g. ``lm_head``).

Checkpoint format: a directory holding

- ``lora_adapter.json``: ``{"format": "reclm_jax.lora", "version": 1, "name", "rank", "alpha", "dropout",
  "targets", "init", "modules": [dotted module names], "full_tune": [HF tensor names], "base_model"}``;
  ``modules`` is empty for an adapter that only owns full copies (its LoRA fields are then placeholders)
- ``lora_adapter.safetensors``: ``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight`` [out, r]
  in float32 (PEFT's orientation, so a PEFT export is a rename), and each full kernel copy the adapter owns
  under its module's HF weight name and HF orientation (``lm_head.weight`` [vocab, hidden]), in float32.

Loading attaches the copies again as the adapter's own (``lora.own_full_copy``), never over the base weights,
so a loaded actor leaves the reference policy untouched.

The directory is written under a temporary name and renamed at the end, so a crash never leaves a
complete-looking checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from reclm_jax.atomic import replace_dir, temp_dir
from reclm_jax.errors import UserError
from reclm_jax.models.hf_loading import read_safetensors_header
from reclm_jax.models.layer_stack import take_layer
from reclm_jax.models.lora import LoraConfig, add_lora, adapter_layers, full_copy_layers, layer_linears, own_full_copy
from reclm_jax.models.safetensors_writer import TensorSpec, write_safetensors

ADAPTER_JSON = "lora_adapter.json"
ADAPTER_WEIGHTS = "lora_adapter.safetensors"
FORMAT = "reclm_jax.lora"


def host_array(x) -> np.ndarray:
    """``x`` as a full numpy array. An array spread over several hosts is gathered (a collective: every process
    must call it); anything this process holds whole, numpy included, is just read."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_adapter(path: str | Path, model: nnx.Module, name: str = "default", *, config: LoraConfig | None = None,
                 base_model: str | None = None) -> Path:
    """Writes adapter ``name`` of ``model`` (LoRA factors and owned full kernel copies) to ``path``.

    Tensors are named and ordered by the unrolled model's modules, so a layer stack (``scan_layers``) writes the
    same files."""
    path = Path(path)
    mods = adapter_layers(model, name)
    owned = full_copy_layers(model, name)
    if config is not None:
        cfg = config
    elif mods:
        first = next(iter(mods.values()))[0]
        a = first.lora[name]["a"][...]
        scale, dropout = first.adapters[name]
        cfg = LoraConfig(rank=a.shape[-1], alpha=scale * a.shape[-1], dropout=dropout, targets=tuple(mods),
                         param_dtype=str(a.dtype))
    else:  # full copies only: the LoRA fields are placeholders; param_dtype is the copies' (loading uses it)
        cfg = LoraConfig(targets=(), param_dtype=str(next(iter(owned.values()))[0].full[name][...].dtype))

    def spec(key, var, layer):
        return TensorSpec(key, var[...].shape[-2:][::-1], np.dtype(np.float32),
                          lambda: host_array(take_layer(var[...], layer)).T.astype(np.float32))

    specs = []
    for mod, (lin, layer) in mods.items():
        specs.append(spec(f"{mod}.lora_A.weight", lin.lora[name]["a"], layer))
        specs.append(spec(f"{mod}.lora_B.weight", lin.lora[name]["b"], layer))
    for mod, (lin, layer) in owned.items():
        specs.append(spec(f"{mod}.weight", lin.full[name], layer))
    meta = {"format": FORMAT, "version": 1, "name": name, **dataclasses.asdict(cfg), "modules": list(mods),
            "full_tune": sorted(f"{mod}.weight" for mod in owned), "base_model": base_model}
    meta["targets"] = list(cfg.targets)

    tmp = temp_dir(path)
    write_safetensors(tmp / ADAPTER_WEIGHTS, specs)
    (tmp / ADAPTER_JSON).write_text(json.dumps(meta, indent=2))
    return replace_dir(tmp, path)


def read_adapter_meta(path: str | Path) -> dict:
    """The parsed ``lora_adapter.json`` of an adapter checkpoint (``UserError`` if it is not one)."""
    f = Path(path) / ADAPTER_JSON
    if not f.is_file():
        raise UserError(f"{path}: not a reclm-jax adapter checkpoint (no {ADAPTER_JSON})")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: not valid JSON ({e.msg})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{f}: 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def adapter_config(meta: dict) -> LoraConfig:
    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    kwargs = {k: v for k, v in meta.items() if k in fields}
    kwargs["targets"] = tuple(kwargs.get("targets", ()))
    return LoraConfig(**kwargs)


def load_adapter(path: str | Path, model: nnx.Module, name: str | None = None) -> str:
    """Attaches the adapter saved at ``path`` to ``model`` (as ``name``, default its saved name), its full
    kernel copies included (as the adapter's own; the base weights are not touched). Returns the adapter name."""
    path = Path(path)
    meta = read_adapter_meta(path)
    name = name or meta["name"]
    weights_file = path / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise UserError(f"{path}: missing {ADAPTER_WEIGHTS}")
    refs = read_safetensors_header(weights_file)
    cfg = adapter_config(meta)
    # Values per variable (a layer stack's variable gets one per layer, in layer order), assigned at the end.
    values: dict[int, tuple[nnx.Variable, list]] = {}

    def read(var, layer, key, what="tensor"):
        if key not in refs:
            raise UserError(f"{weights_file}: missing {what} {key}")
        values.setdefault(id(var), (var, []))[1].append((layer, key, refs[key].memmap().T))

    if meta["modules"]:  # an adapter may own only full copies: then there is no LoRA factor to attach
        add_lora(model, cfg, name, modules=list(meta["modules"]))
        for mod, (lin, layer) in adapter_layers(model, name).items():
            for part, suffix in (("a", "lora_A"), ("b", "lora_B")):
                read(lin.lora[name][part], layer, f"{mod}.{suffix}.weight")
    linears = layer_linears(model)
    full = [key[: -len(".weight")] if key.endswith(".weight") else None for key in meta.get("full_tune") or ()]
    for key, mod in zip(meta.get("full_tune") or (), full):
        if mod not in linears:
            raise UserError(f"{path / ADAPTER_JSON}: full_tune entry {key!r} is not the weight of a linear module "
                            f"of this model (only linear kernels can be fully tuned per adapter)")
    if full:
        own_full_copy(model, name, tuple(full), param_dtype=cfg.param_dtype)
    for key, mod in zip(meta.get("full_tune") or (), full):
        lin, layer = linears[mod]
        read(lin.full[name], layer, key, "full-tuned tensor")
    for var, parts in values.values():
        _assign(var, parts, weights_file)
    return name


def _assign(var: nnx.Variable, parts: list, file: Path) -> None:
    """Sets ``var`` from ``parts`` [(layer, key, value)]: one value (layer None), or one per layer of a stack."""
    old = var[...]
    want = tuple(old.shape) if parts[0][0] is None else tuple(old.shape[1:])
    for _, key, value in parts:
        if tuple(value.shape) != want:
            raise UserError(f"{file}: tensor {key} has shape {list(value.shape)}, the model needs {list(want)}")
    parts = sorted(parts, key=lambda p: p[0] or 0)
    value = parts[0][2] if parts[0][0] is None else np.stack([p[2] for p in parts])
    new = np.asarray(value, dtype=old.dtype)
    sharding = getattr(old, "sharding", None)
    var.set_value(jax.device_put(new, sharding) if isinstance(sharding, NamedSharding) else jax.numpy.asarray(new))

