"""Export to HF: a merged model folder (sharded safetensors + index, configs, tokenizer) or a PEFT adapter.

Merged export computes each tensor (base weight plus the adapter's ``scale * A @ B``) on the device, copies
just that tensor to the host and streams it into the current shard file, so the host never holds the whole
model. Everything is written into ``<out>.partial`` and renamed to ``<out>`` at the end: an interrupted
export never looks complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from reclm_jax.atomic import replace_dir, temp_dir
from reclm_jax.errors import UserError
from reclm_jax.models.adapter_io import ADAPTER_WEIGHTS, host_array, load_adapter, read_adapter_meta
from reclm_jax.models.hf_loading import hf_key, load_llama, read_safetensors_header
from reclm_jax.models.linear import LoRAParam
from reclm_jax.models.llama_config import read_hf_config
from reclm_jax.models.layer_stack import take_layer, unrolled_items
from reclm_jax.models.lora import adapter_layers, full_copy_layers, layer_linears
from reclm_jax.models.safetensors_writer import TensorSpec, write_safetensors
from reclm_jax.models.sharding import path_name

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "added_tokens.json")
NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
             "float16": np.dtype(np.float16)}


def parse_size(text: str | int) -> int:
    """"2GB", "500MB", "64KB" or a byte count -> bytes (decimal units, as transformers)."""
    if isinstance(text, int):
        return text
    t = text.strip().upper()
    for unit, mult in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if t.endswith(unit):
            try:
                return int(float(t[: -len(unit)]) * mult)
            except ValueError:
                break
    try:
        return int(t)
    except ValueError:
        raise UserError(f"bad size {text!r}: use e.g. 2GB, 500MB or a byte count") from None


def merged_tensors(model: nnx.Module, adapter: str | None, dtype: np.dtype) -> tuple[list[TensorSpec], bool]:
    """Specs of every HF tensor of the model with ``adapter`` folded in, and whether embeddings stay tied.

    A kernel the adapter owns a full copy of is written from that copy (plus its LoRA delta, if any); a tied
    ``lm_head`` the adapter changes is written as an untied ``lm_head.weight``. A layer stack (``scan_layers``)
    gives the same tensors, names and order as the unrolled model, one layer at a time.
    """
    mods = adapter_layers(model, adapter) if adapter else {}
    owned = full_copy_layers(model, adapter) if adapter else {}
    tied = model.config.tie_word_embeddings and "lm_head" not in mods and "lm_head" not in owned
    linears = layer_linears(model)

    def effective(module: str, w: jax.Array) -> jax.Array:
        # w: the module's frozen [in, out] kernel -> what the adapter multiplies by, in w's dtype.
        lin, layer = linears.get(module, (None, None))
        if module in owned:
            w = take_layer(lin.full[adapter][...], layer).astype(w.dtype)
        if module in mods:
            w = (w.astype(jnp.float32) + lin.lora_delta(adapter, layer)).astype(w.dtype)
        return w

    specs = []
    frozen = nnx.to_flat_state(nnx.state(model, nnx.All(nnx.Param, nnx.Not(LoRAParam))))
    for path, var, layer in unrolled_items(frozen):
        key, transpose = hf_key(path)
        module = path_name(path).rsplit(".", 1)[0]
        is_kernel = path_name(path).endswith(".kernel")
        one = var[...].shape[1:] if layer is not None else var[...].shape
        shape = tuple(one[::-1] if transpose else one)

        def produce(var=var, module=module, transpose=transpose, is_kernel=is_kernel, layer=layer):
            w = take_layer(var[...], layer)
            w = effective(module, w) if is_kernel else w
            arr = host_array(w)
            return (arr.T if transpose else arr).astype(dtype)

        specs.append(TensorSpec(key, shape, dtype, produce))
    if model.config.tie_word_embeddings and not tied:
        # The adapter changed the head: write it as an untied lm_head (from embedding^T or the owned copy).
        emb = model.model.embed_tokens.weight

        def head():
            w = effective("lm_head", emb[...].T.astype(jnp.float32))
            return host_array(w).T.astype(dtype)

        specs.append(TensorSpec("lm_head.weight", tuple(emb[...].shape), dtype, head))
    return specs, tied


def plan_shards(specs: list[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Groups tensors in order into shards of at most ``max_bytes`` (a bigger tensor gets its own shard)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def _prepare_out(out: Path, overwrite: bool) -> Path:
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if occupied and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    return temp_dir(out, suffix=".partial")


def export_merged(model: nnx.Module, base_dir: str | Path, out: str | Path, *, adapter: str | None = None,
                  dtype: str | None = None, max_shard_size: str | int = "2GB", overwrite: bool = False,
                  progress: bool = True) -> Path:
    """Writes an HF Llama folder for ``model`` with ``adapter`` merged in.

    ``base_dir`` supplies config.json, generation_config.json and tokenizer files. ``dtype`` (float32,
    bfloat16, float16) defaults to the base checkpoint's. Shards are capped at ``max_shard_size``.
    """
    base_dir, out = Path(base_dir), Path(out)
    hf_cfg = read_hf_config(base_dir)
    dtype = dtype or hf_cfg.get("torch_dtype") or hf_cfg.get("dtype") or model.config.param_dtype
    if dtype not in NP_DTYPES:
        raise UserError(f"export dtype must be one of {', '.join(NP_DTYPES)}, got {dtype!r}")
    specs, tied = merged_tensors(model, adapter, NP_DTYPES[dtype])
    shards = plan_shards(specs, parse_size(max_shard_size))
    writer = jax.process_index() == 0  # every process computes (gathers need all), process 0 writes
    tmp = _prepare_out(out, overwrite) if writer else None
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    bar = tqdm(total=len(specs), desc=f"exporting {out.name}", leave=False, disable=not progress)
    for fname, shard in zip(names, shards):
        if writer:
            write_safetensors(tmp / fname, _counting(shard, bar))
        else:
            for s in shard:
                s.produce()
    bar.close()
    if not writer:
        return out
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(s.nbytes for s in specs)},
                 "weight_map": {s.name: fname for fname, shard in zip(names, shards) for s in shard}}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    hf_cfg = dict(hf_cfg, tie_word_embeddings=tied)
    hf_cfg["torch_dtype" if "dtype" not in hf_cfg else "dtype"] = dtype
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    gen = base_dir / "generation_config.json"
    if gen.is_file():
        shutil.copyfile(gen, tmp / "generation_config.json")
    else:
        (tmp / "generation_config.json").write_text(json.dumps(
            {k: hf_cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf_cfg}, indent=2))
    copy_tokenizer(base_dir, tmp)
    replace_dir(tmp, out)
    return out


def _counting(specs: list[TensorSpec], bar) -> list[TensorSpec]:
    def wrap(s: TensorSpec) -> TensorSpec:
        def produce():
            arr = s.produce()
            bar.update(1)
            return arr

        return s._replace(produce=produce)

    return [wrap(s) for s in specs]


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def export_peft(adapter_dir: str | Path, out: str | Path, *, base_model: str | None = None,
                overwrite: bool = False) -> Path:
    """Converts a reclm-jax adapter checkpoint into a PEFT LoRA folder (``adapter_config.json`` +
    ``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_{A,B}.weight``).

    PEFT's ``target_modules`` gets the exact module names, which PEFT matches as suffixes.
    """
    adapter_dir, out = Path(adapter_dir), Path(out)
    meta = read_adapter_meta(adapter_dir)
    if meta.get("full_tune"):
        raise UserError(f"{adapter_dir}: the adapter also fully tunes {meta['full_tune']}, which a PEFT LoRA "
                        f"file cannot carry; export with --format merged")
    refs = read_safetensors_header(adapter_dir / ADAPTER_WEIGHTS)
    tmp = _prepare_out(out, overwrite)
    specs = [TensorSpec(f"base_model.model.{k}", ref.shape, ref.dtype, lambda ref=ref: np.asarray(ref.memmap()))
             for k, ref in refs.items()]
    write_safetensors(tmp / "adapter_model.safetensors", specs)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model or meta.get("base_model"),
        "r": meta["rank"],
        "lora_alpha": meta["alpha"],
        "lora_dropout": meta["dropout"],
        "target_modules": list(meta["modules"]),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    replace_dir(tmp, out)
    return out


def export_adapter(base: str | Path, adapter: str | Path, out: str | Path, *, fmt: str = "merged",
                   dtype: str | None = None, max_shard_size: str = "2GB", overwrite: bool = False) -> Path:
    """Exports the adapter checkpoint ``adapter`` (``adapter_io.save_adapter``) trained on the HF folder ``base``:
    ``fmt="merged"``, a standalone HF folder with the adapter folded in; ``"peft"``, a PEFT adapter folder (plus
    the tokenizer). Used by ``python -m reclm_jax.export`` and ``python -m reclm_jax.sft.merge``."""
    base, adapter, out = Path(base), Path(adapter), Path(out)
    if fmt == "peft":
        export_peft(adapter, out, base_model=str(base), overwrite=overwrite)
        copy_tokenizer(base, out)
        return out
    if fmt != "merged":
        raise UserError(f"export format must be 'merged' or 'peft', got {fmt!r}")
    model = load_llama(base, param_dtype="float32")
    name = load_adapter(adapter, model)
    export_merged(model, base, out, adapter=name, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite)
    return out
