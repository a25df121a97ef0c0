"""The Llama architecture as a frozen dataclass, read from an HF ``config.json`` in either of its two forms.

transformers <= 4 writes ``rope_theta`` and ``rope_scaling`` at the top level; transformers 5 writes
``"rope_parameters": {"rope_type": ..., "rope_theta": ..., ...}``. Both describe the same thing and both
are read here, so RoPE settings (the most common source of silent conversion bugs) come from one place.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from reclm_jax.errors import UserError
from reclm_jax.models.kernels import KERNELS, resolve_kernels

SUPPORTED_MODEL_TYPES = ("llama",)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``rope_type`` "linear" divides positions by ``factor``; "llama3" rescales
    low frequencies by ``factor`` and smoothly interpolates between ``low_freq_factor`` and
    ``high_freq_factor`` wavelengths relative to ``original_max_position_embeddings``."""

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shapes and numerics of a Llama-family decoder (Llama-2, Llama-3.x, SmolLM2).

    ``param_dtype`` is how weights are stored; ``dtype`` is the compute dtype of matmuls and activations
    (norms and softmax always run in float32). ``remat`` recomputes each block's activations in the
    backward pass instead of keeping them. ``kernels`` picks the implementation of products and cache-free
    attention (``"xla"``, ``"cpu"``, or ``"auto"``, which ``from_hf_config`` and the model's constructor
    resolve to one of the two when the model is built; see ``kernels.py``). ``scan_layers`` stores the decoder
    layers as one stack (every parameter with a leading layer dim) run by ``jax.lax.scan``, so XLA compiles
    one layer instead of ``num_layers`` copies (see ``layer_stack.py``); names, files and results are those of
    the unrolled model.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    kernels: str = "auto"
    scan_layers: bool = False

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"num_attention_heads ({self.num_heads}) must be a multiple of "
                            f"num_key_value_heads ({self.num_kv_heads})")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in _DTYPES:
                raise UserError(f"{name} must be one of {', '.join(_DTYPES)}, got {getattr(self, name)!r}")
        if self.kernels not in KERNELS:
            raise UserError(f"kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}")

    @property
    def jnp_param_dtype(self):
        return _DTYPES[self.param_dtype]

    @property
    def jnp_dtype(self):
        return _DTYPES[self.dtype]

    def replace(self, **changes: Any) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)


def read_hf_config(model_dir: str | Path) -> dict:
    """The parsed ``config.json`` of an HF model folder (``UserError`` when missing or malformed)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir}: not an HF model folder (no config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _rope_settings(hf: dict, source: str) -> tuple[float, RopeScaling | None]:
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params:
        # transformers 5: one dict holding theta and (optionally) the scaling fields.
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = dict(params)
    else:
        theta = hf.get("rope_theta", 10000.0)
        scaling = dict(hf.get("rope_scaling") or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UserError(f"{source}: unsupported RoPE type {rope_type!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    if rope_type == "default":
        return float(theta), None
    if "factor" not in scaling:
        raise UserError(f"{source}: RoPE type {rope_type!r} needs a 'factor'")
    fields = {f.name for f in dataclasses.fields(RopeScaling)}
    kwargs = {k: v for k, v in scaling.items() if k in fields}
    kwargs["rope_type"] = rope_type
    if rope_type == "llama3" and "original_max_position_embeddings" not in kwargs:
        raise UserError(f"{source}: RoPE type 'llama3' needs 'original_max_position_embeddings'")
    return float(theta), RopeScaling(**kwargs)


def from_hf_config(hf: dict | str | Path, *, param_dtype: str | None = None, dtype: str = "float32",
                   remat: bool = False, kernels: str = "auto", scan_layers: bool = False,
                   source: str | None = None) -> LlamaConfig:
    """Builds a ``LlamaConfig`` from an HF config dict or a model folder.

    ``param_dtype`` defaults to the checkpoint's ``torch_dtype``/``dtype`` when it is one we support,
    else float32. ``kernels`` ("auto", "xla", "cpu") is resolved here, so the config holds "xla" or "cpu".
    """
    kernels = resolve_kernels(kernels)
    if not isinstance(hf, dict):
        source = source or str(Path(hf) / "config.json")
        hf = read_hf_config(hf)
    source = source or "config.json"
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"{source}: unsupported model_type {model_type!r}; reclm-jax implements "
                        f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama-2, Llama-3.x, SmolLM2)")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{source}: unsupported hidden_act {act!r} (Llama uses 'silu')")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in hf]
    if missing:
        raise UserError(f"{source}: missing key(s) {', '.join(missing)}")
    theta, scaling = _rope_settings(hf, source)
    num_heads = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
    eos = hf.get("eos_token_id")
    eos_ids = tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else ((int(eos),) if eos is not None else ())
    if param_dtype is None:
        stored = hf.get("torch_dtype") or hf.get("dtype")
        param_dtype = stored if stored in _DTYPES else "float32"
    return LlamaConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=hf.get("pad_token_id"),
        param_dtype=param_dtype,
        dtype=dtype,
        remat=remat,
        kernels=kernels,
        scan_layers=bool(scan_layers),
    )
