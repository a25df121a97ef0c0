"""Typed configuration: frozen dataclasses filled from a YAML file plus dotted command-line overrides.

Library code only ever sees the frozen dataclass instances. OmegaConf parses the YAML and the ``a.b=c``
overrides and resolves ``${...}`` interpolations; this module then builds the dataclass tree itself so that
every unknown key and every wrong type is reported with its full dotted name and the list of valid keys.

    cfg = load_config(SFTConfig, "configs/sft.yaml", ["train.lr=1e-4", "output_dir=runs/a"])
    save_config(cfg, cfg.output_dir)   # writes <output_dir>/config.yaml

A section may be given as the path of a YAML file holding that section's keys (a preset), on the command line
(``mesh=configs/mesh/gpu8_fsdp.yaml``) or in a config file (``mesh: configs/mesh/gpu8_fsdp.yaml``). The preset
replaces the whole section where it appears (keys it lacks take their defaults, not the earlier file's), later
overrides still apply on top (``mesh=configs/mesh/gpu8_fsdp.yaml mesh.tp=2``), and mistakes inside it are
reported with the preset's own file name.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reclm_jax.atomic import write_text_atomic
from reclm_jax.errors import UserError

T = TypeVar("T")

CONFIG_FILENAME = "config.yaml"
MISSING_MARK = "???"  # OmegaConf's "must be given" value
SECTION_FILE_SUFFIXES = (".yaml", ".yml")  # a string with one of these, given for a section, names a preset file


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Builds ``cls`` from the YAML file at ``path`` (optional) and ``key.sub=value`` overrides.

    Later sources win: dataclass defaults < YAML file < overrides. Raises ``UserError`` naming the file
    and the dotted key for unknown keys, wrong types, missing required values and malformed overrides.
    """
    source = str(path) if path is not None else "<defaults>"
    layers = []
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            loaded = OmegaConf.load(p)
        except (yaml.YAMLError, OmegaConfBaseException) as e:
            raise UserError(f"{p}: not valid YAML: {_one_line(e)}") from None
        if not isinstance(loaded, DictConfig):
            raise UserError(f"{p}: the top level must be a mapping of keys to values")
        layers.append(_expand_section_files(cls, loaded, str(p)))
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(f"bad override {item!r}: expected key=value, e.g. train.lr=1e-4")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        layer = OmegaConf.from_dotlist([])
        try:
            OmegaConf.update(layer, key.strip(), value, force_add=True)
        except OmegaConfBaseException as e:
            raise UserError(f"bad override {item!r}: {_one_line(e)}") from None
        layers.append(_expand_section_files(cls, layer, f"override {item!r}"))
    try:
        merged = OmegaConf.merge(*layers) if layers else OmegaConf.create({})
        data = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as e:
        raise UserError(f"{source}: {_one_line(e)}") from None
    if overrides:
        source = f"{source} (with command-line overrides)"
    return _build(cls, data, prefix="", source=source)


def config_to_dict(cfg: Any) -> dict:
    """Plain dict of a config dataclass tree (tuples become lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def save_config(cfg: Any, out_dir: str | Path) -> Path:
    """Writes the resolved config as ``<out_dir>/config.yaml`` (atomically) and returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILENAME
    return write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _expand_section_files(cls: type, layer: DictConfig, where: str) -> DictConfig:
    """``layer`` with every section given as a YAML file path replaced by that file's section, in full."""
    data = OmegaConf.to_container(layer, resolve=False)
    expanded = _expand_mapping(cls, data, "", where, None)
    return layer if expanded is data else OmegaConf.create(expanded)


def _expand_mapping(cls: type, data: Any, prefix: str, where: str, base: Any) -> Any:
    """``data`` (a plain mapping for ``cls``) with preset paths expanded; the same object when none is found."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return data
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    out = data
    for name, value in data.items():
        f = fields.get(name)
        if f is None or not dataclasses.is_dataclass(hints[name]):
            continue  # unknown keys are reported by _build, with the list of valid ones
        default = _field_default(f, base)
        default = default if dataclasses.is_dataclass(default) else None
        if isinstance(value, str) and value.endswith(SECTION_FILE_SUFFIXES):
            new = config_to_dict(_load_section_file(hints[name], value, prefix + name, where, default))
        else:
            new = _expand_mapping(hints[name], value, prefix + name + ".", where, default)
        if new is not value:
            out = dict(out) if out is data else out
            out[name] = new
    return out


def _load_section_file(cls: type[T], path: str, key: str, where: str, base: Any) -> T:
    """Section ``key`` (of type ``cls``) built from the preset file at ``path`` that ``where`` names."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{where}: '{key}' names the preset file {p}, which does not exist")
    try:
        loaded = OmegaConf.load(p)
        data = OmegaConf.to_container(loaded, resolve=True)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise UserError(f"{p}: not valid YAML: {_one_line(e)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a preset for '{key}' must be a mapping of its keys ({_type_name(cls)} of "
                        f"{', '.join(f.name for f in dataclasses.fields(cls))})")
    return _build(cls, data, prefix=key + ".", source=f"{p} (preset for '{key}')", base=base)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, typing.Sequence):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _field_default(f: dataclasses.Field, base: Any) -> Any:
    """The value a field keeps when the sources do not set it: ``base``'s (the enclosing default instance), else
    the field's own default; ``dataclasses.MISSING`` when it has none."""
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _build(cls: type, data: Any, prefix: str, source: str, base: Any = None) -> Any:
    """``cls`` from the mapping ``data``; keys it lacks keep their defaults. ``base``: the default instance of
    this (nested) config, whose values are those defaults, so a config whose default for a section differs from
    the section class's own (e.g. ``LoraConfig(rank=16, dropout=0.1)``) keeps it when one key is overridden."""
    where = prefix.rstrip(".") or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: '{where}' must be a mapping or the path of a YAML file holding one, "
                        f"got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise UserError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; valid keys"
            f"{' under ' + repr(prefix.rstrip('.')) if prefix else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name in data:
            if isinstance(data[name], str) and data[name] == MISSING_MARK:
                raise UserError(f"{source}: key '{key}' must be set (it is {MISSING_MARK} in the file); "
                                f"add {key}=... to the command line")
            default = _field_default(f, base)
            if dataclasses.is_dataclass(hints[name]) and dataclasses.is_dataclass(default):
                kwargs[name] = _build(hints[name], data[name], key + ".", source, base=default)
            else:
                kwargs[name] = _coerce(hints[name], data[name], key, source)
        elif base is not None:
            kwargs[name] = getattr(base, name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{source}: missing required key '{key}' ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except UserError as e:  # a config's own check (__post_init__): say which file or overrides set it
        raise UserError(f"{source}: {e}") from None


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    """Checks ``value`` against annotation ``tp``; converts lists to tuples and ints to floats."""

    def fail() -> typing.NoReturn:
        raise UserError(f"{source}: key '{key}' expects {_type_name(tp)}, got {value!r}")

    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            fail()
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key, source)
            except UserError:
                continue
        fail()
    if origin is Literal:
        if value in get_args(tp):
            return value
        fail()
    if origin in (tuple, list, typing.Sequence) or tp in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            fail()
        args = [a for a in get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is not list and tp is not list else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            fail()
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                fail()
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a numeric user id or port written without quotes
        fail()
    if tp is Path:
        if isinstance(value, str):
            return Path(value)
        fail()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    fail()


def parse_stage_args(argv: typing.Sequence[str] | None = None, prog: str | None = None,
                     description: str = "") -> tuple[str | None, list[str]]:
    """Splits ``--config FILE key=value ...`` into (config path, overrides).

    ``--help`` prints usage (and ``description``) and exits 0; anything else that is neither ``--config`` nor
    ``key=value`` is a ``UserError``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    path: str | None = None
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            print(f"usage: {prog or 'python -m reclm_jax.<stage>'} [--config FILE.yaml] [key=value ...]")
            if description:
                print("\n" + description.strip())
            raise SystemExit(0)
        if a == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a file path")
            path = argv[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif "=" in a and not a.startswith("-"):
            overrides.append(a)
        else:
            raise UserError(f"unexpected argument {a!r}: use --config FILE and key=value overrides")
        i += 1
    return path, overrides
