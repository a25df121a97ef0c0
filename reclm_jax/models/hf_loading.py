"""Loads an HF Llama folder (safetensors, single file or sharded with an index) straight onto a device mesh.

The model is first built abstractly (``nnx.eval_shape``: shapes only, no memory). Every tensor is then
memory-mapped from its safetensors file and handed to ``jax.make_array_from_callback``, which reads just
the slice each device owns: host memory stays near one tensor, never the whole model, and on several hosts
each process reads only its own shards. A layer stack (``scan_layers``) is filled from the per-layer tensors the
same way: each device's slice of ``[L, ...]`` reads the layers it holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from reclm_jax.errors import UserError
from reclm_jax.models.layer_stack import is_stacked_path, unrolled_items
from reclm_jax.models.llama import LlamaForCausalLM
from reclm_jax.models.llama_config import LlamaConfig, from_hf_config
from reclm_jax.models.sharding import make_mesh, param_sharding, path_name

SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
# Buffers some exporters write that are not parameters (we compute RoPE frequencies from the config).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: file, byte offset of its data, dtype and shape."""

    file: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    def memmap(self) -> np.ndarray:
        """A read-only memory map of the tensor (no bytes are read until sliced)."""
        if not self.shape or 0 in self.shape:
            return np.zeros(self.shape, self.dtype)
        return np.memmap(self.file, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)


def read_safetensors_header(file: Path) -> dict[str, TensorRef]:
    """Parses one safetensors file's JSON header into ``TensorRef``s (``UserError`` if it is not one)."""
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise UserError(f"{file}: not a safetensors file (too short)")
        n = int.from_bytes(raw, "little")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{file}: not a safetensors file (bad header)") from None
    base = 8 + n
    refs = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise UserError(f"{file}: tensor {name} has unsupported dtype {info['dtype']}")
        start, _ = info["data_offsets"]
        refs[name] = TensorRef(file, base + start, np.dtype(SAFETENSORS_DTYPES[info["dtype"]]), tuple(info["shape"]))
    return refs


def checkpoint_tensors(model_dir: str | Path) -> dict[str, TensorRef]:
    """Every tensor of an HF folder: from ``model.safetensors`` or the shards named by its index."""
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise UserError(f"{index}: not a valid safetensors index (needs a 'weight_map')") from None
        refs: dict[str, TensorRef] = {}
        for fname in sorted(set(weight_map.values())):
            if not (d / fname).is_file():
                raise UserError(f"{index}: names shard {fname}, which is missing from {d}")
            refs.update(read_safetensors_header(d / fname))
        absent = [k for k in weight_map if k not in refs]
        if absent:
            raise UserError(f"{index}: tensor {absent[0]} is listed but not found in {weight_map[absent[0]]}")
        return refs
    single = d / "model.safetensors"
    if single.is_file():
        return read_safetensors_header(single)
    if (d / "pytorch_model.bin").is_file():
        raise UserError(f"{d}: only safetensors checkpoints are supported (found pytorch_model.bin)")
    raise UserError(f"{d}: no model.safetensors or model.safetensors.index.json")


def hf_key(path: tuple) -> tuple[str, bool]:
    """HF tensor name for an NNX parameter path, and whether it is stored transposed (kernels are [in, out])."""
    name = path_name(path)
    if name.endswith(".kernel"):
        return name[: -len(".kernel")] + ".weight", True
    return name, False


def abstract_model(cfg: LlamaConfig) -> LlamaForCausalLM:
    """The model with ``ShapeDtypeStruct`` leaves: costs no memory."""
    return nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))


def load_llama(model_dir: str | Path, *, mesh: Mesh | None = None, param_dtype: str | None = None,
               dtype: str = "float32", remat: bool = False, kernels: str = "auto", scan_layers: bool = False,
               progress: bool = True) -> LlamaForCausalLM:
    """Builds the model of an HF Llama folder with every parameter on its ``NamedSharding`` of ``mesh``.

    ``mesh`` defaults to all devices on the data axis (parameters replicated). ``param_dtype`` defaults to
    the checkpoint's dtype; ``dtype`` is the compute dtype. ``kernels`` ("auto", "xla", "cpu"; see
    ``kernels.py``) is resolved now and fixed in the model. ``scan_layers`` builds the layers as one scanned
    stack (``layer_stack.py``) from the same files. Raises ``UserError`` for missing or unexpected
    tensors, shape mismatches and unsupported configs, naming the file and tensor.
    """
    model_dir = Path(model_dir)
    cfg = from_hf_config(model_dir, param_dtype=param_dtype, dtype=dtype, remat=remat, kernels=kernels,
                         scan_layers=scan_layers)
    mesh = mesh if mesh is not None else make_mesh()
    refs = checkpoint_tensors(model_dir)
    graphdef, state = nnx.split(abstract_model(cfg))
    flat = list(nnx.to_flat_state(state))
    # HF tensor names per state entry: one, or a stack's one per layer (in layer order).
    keys: dict[tuple, list] = {}
    for unrolled, var, _ in unrolled_items(flat):
        keys.setdefault(id(var), []).append(hf_key(unrolled))

    wanted = {key for entry in keys.values() for key, _ in entry}
    missing = sorted(k for k in wanted if k not in refs)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{model_dir}: checkpoint lacks tensor {missing[0]}{more}")
    extra = sorted(k for k in refs if k not in wanted and not k.endswith(IGNORED_SUFFIXES)
                   and not (cfg.tie_word_embeddings and k == "lm_head.weight"))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UserError(f"{model_dir}: unexpected tensor {extra[0]} in {refs[extra[0]].file.name}{more}; "
                        f"is this a plain Llama checkpoint?")

    loaded = []
    for path, var in tqdm(flat, desc=f"loading {model_dir.name}", leave=False, disable=not progress):
        entries = keys[id(var)]
        stacked = is_stacked_path(tuple(path))
        want = tuple(var.get_value().shape)
        per_layer = want[1:] if stacked else want
        layer_refs = []
        for key, transpose in entries:
            ref = refs[key]
            have = ref.shape[::-1] if transpose else ref.shape
            if have != per_layer:
                raise UserError(f"{ref.file}: tensor {key} has shape {list(ref.shape)}, the config implies "
                                f"{list(per_layer[::-1] if transpose else per_layer)}")
            layer_refs.append(ref)
        sharding = param_sharding(path_name(path), want, mesh, cfg)
        transpose = entries[0][1]
        value = (load_stacked(layer_refs, transpose, var.get_value().dtype, sharding) if stacked
                 else load_tensor(layer_refs[0], transpose, var.get_value().dtype, sharding))
        loaded.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))


def load_tensor(ref: TensorRef, transpose: bool, dtype, sharding) -> jax.Array:
    """One checkpoint tensor as a global array on ``sharding``; each device's slice is read separately."""
    src = ref.memmap()
    view = src.T if transpose else src
    shape = view.shape

    def read(index):
        return np.ascontiguousarray(view[index]).astype(dtype, copy=False)

    return jax.make_array_from_callback(shape, sharding, read)


def load_stacked(refs: list[TensorRef], transpose: bool, dtype, sharding) -> jax.Array:
    """Tensors of one shape (a parameter of each layer, in layer order) as one global [L, ...] array on
    ``sharding``; each device reads only its slice of the layers it holds."""
    views = [r.memmap().T if transpose else r.memmap() for r in refs]
    shape = (len(views), *views[0].shape)

    def read(index):
        layers, rest = index[0], index[1:]
        return np.stack([np.ascontiguousarray(views[i][rest]).astype(dtype, copy=False)
                         for i in range(*layers.indices(len(views)))])

    return jax.make_array_from_callback(shape, sharding, read)
