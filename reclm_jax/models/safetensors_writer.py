"""Streams tensors into a safetensors file one at a time: the header is computed from shapes up front,
then each tensor is produced, written and dropped, so host memory never holds more than one tensor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import ml_dtypes
import numpy as np

DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(ml_dtypes.bfloat16): "BF16",
               np.dtype(np.float64): "F64", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32"}


class TensorSpec(NamedTuple):
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]  # called once, when the tensor is written

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def write_safetensors(path: str | Path, tensors: Iterable[TensorSpec], metadata: dict | None = None) -> None:
    """Writes ``tensors`` to ``path`` in the safetensors format (``metadata`` defaults to format=pt)."""
    tensors = list(tensors)
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": DTYPE_NAMES[np.dtype(t.dtype)], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for t in tensors:
            arr = np.ascontiguousarray(t.produce(), dtype=t.dtype)
            if arr.shape != tuple(t.shape):
                raise ValueError(f"{t.name}: produced shape {arr.shape}, declared {t.shape}")
            f.write(arr.tobytes())
