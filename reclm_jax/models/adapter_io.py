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
from reclm_jax.models.lora import (LoraConfig, add_lora, adapter_modules, full_copy_modules, linear_modules,
                                   own_full_copy)
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
    """Writes adapter ``name`` of ``model`` (LoRA factors and owned full kernel copies) to ``path``."""
    path = Path(path)
    mods = adapter_modules(model, name)
    owned = full_copy_modules(model, name)
    if config is not None:
        cfg = config
    elif mods:
        first = next(iter(mods.values()))
        a = first.lora[name]["a"][...]
        scale, dropout = first.adapters[name]
        cfg = LoraConfig(rank=a.shape[1], alpha=scale * a.shape[1], dropout=dropout, targets=tuple(mods),
                         param_dtype=str(a.dtype))
    else:  # full copies only: the LoRA fields are placeholders; param_dtype is the copies' (loading uses it)
        cfg = LoraConfig(targets=(), param_dtype=str(next(iter(owned.values())).full[name][...].dtype))
    specs = []
    for mod, lin in mods.items():
        a, b = lin.lora[name]["a"], lin.lora[name]["b"]
        specs.append(TensorSpec(f"{mod}.lora_A.weight", a[...].shape[::-1], np.dtype(np.float32),
                                lambda a=a: host_array(a[...]).T.astype(np.float32)))
        specs.append(TensorSpec(f"{mod}.lora_B.weight", b[...].shape[::-1], np.dtype(np.float32),
                                lambda b=b: host_array(b[...]).T.astype(np.float32)))
    for mod, lin in owned.items():
        var = lin.full[name]
        specs.append(TensorSpec(f"{mod}.weight", var[...].shape[::-1], np.dtype(np.float32),
                                lambda v=var: host_array(v[...]).T.astype(np.float32)))
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
    mods = {}
    if meta["modules"]:  # an adapter may own only full copies: then there is no LoRA factor to attach
        add_lora(model, cfg, name, modules=list(meta["modules"]))
        mods = adapter_modules(model, name)
    for mod, lin in mods.items():
        for part, suffix in (("a", "lora_A"), ("b", "lora_B")):
            key = f"{mod}.{suffix}.weight"
            if key not in refs:
                raise UserError(f"{weights_file}: missing tensor {key}")
            var = lin.lora[name][part]
            _assign(var, refs[key].memmap().T, weights_file, key)
    linears = linear_modules(model)
    for key in meta.get("full_tune") or ():
        mod = key[: -len(".weight")] if key.endswith(".weight") else None
        if mod not in linears:
            raise UserError(f"{path / ADAPTER_JSON}: full_tune entry {key!r} is not the weight of a linear module "
                            f"of this model (only linear kernels can be fully tuned per adapter)")
        if key not in refs:
            raise UserError(f"{weights_file}: missing full-tuned tensor {key}")
        own_full_copy(model, name, (mod,), param_dtype=cfg.param_dtype)
        _assign(linears[mod].full[name], refs[key].memmap().T, weights_file, key)
    return name


def _assign(var: nnx.Variable, value: np.ndarray, file: Path, key: str) -> None:
    old = var[...]
    if tuple(value.shape) != tuple(old.shape):
        raise UserError(f"{file}: tensor {key} has shape {list(value.shape)}, the model needs {list(old.shape)}")
    new = np.asarray(value, dtype=old.dtype)
    sharding = getattr(old, "sharding", None)
    var.set_value(jax.device_put(new, sharding) if isinstance(sharding, NamedSharding) else jax.numpy.asarray(new))

