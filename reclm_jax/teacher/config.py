"""Typed configuration of the SASRec teacher (model sizes, training schedule, run folders).

Defaults reproduce the original's UniRec SASRec: 128 dims, 2 post-LN layers, 2 heads, inner size 256,
dropout 0.5, history window 10, Adam lr 1e-3, batch 1024, early stop after 10 epochs without a better
valid NDCG@10, LR halved after 1 epoch of plateau.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from reclm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    dim: int = 128  # embedding = hidden size (tied input/output item embeddings)
    num_layers: int = 2
    num_heads: int = 2
    inner_dim: int = 256  # FFN hidden size
    dropout: float = 0.5  # embedding, attention-prob, residual and FFN dropout
    window: int = 10  # history window (max_seq_len); longer histories use their last `window` items
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    # Products of the dense layers and the item scores: float32, or bfloat16 accumulated in float32 (about twice
    # the matmul rate on CPUs with AVX512-BF16; parameters, activations and the optimiser stay float32), or auto:
    # bfloat16 where the products have a bf16 dot instruction (GPUs, TPUs, AVX512-BF16 CPUs), else float32 (on
    # other CPUs XLA emulates bf16 dots, more slowly than its f32 ones). A run records the one it used.
    matmul_dtype: Literal["auto", "float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        if self.matmul_dtype not in ("auto", "float32", "bfloat16"):
            raise UserError(f"model.matmul_dtype must be auto, float32 or bfloat16, got {self.matmul_dtype!r}")
        if self.dim % self.num_heads:
            raise UserError(f"model.dim ({self.dim}) must be divisible by model.num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout ({self.dropout}) must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TeacherTrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 added to Adam's gradients (the original's torch Adam weight_decay)
    batch_size: int = 1024
    eval_batch_size: int = 1024
    max_epochs: int = 100
    early_stop_patience: int = 10  # epochs without a better valid NDCG@10
    lr_plateau_patience: int = 1  # epochs without improvement before the LR is multiplied by lr_factor
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    seed: int = 2022
    max_minutes: float | None = None  # wall-clock budget, checked after every steps_per_call steps
    steps_per_call: int = 32  # optimiser steps per dispatch (one jitted loop); the budget is checked between
    progress: bool = True  # tqdm progress bar


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    data_path: str = ""  # raw dataset folder (the four pickles)
    output_dir: str = ""  # run folder: config.yaml, items.json, best/ checkpoint, metrics.json, log.jsonl, tensorboard/
    model: SASRecConfig = dataclasses.field(default_factory=SASRecConfig)
    train: TeacherTrainConfig = dataclasses.field(default_factory=TeacherTrainConfig)


def resolve_matmul_dtype(value: str) -> str:
    """``SASRecConfig.matmul_dtype`` -> "float32" or "bfloat16" ("auto" by the machine, see the field)."""
    if value != "auto":
        return value
    from reclm_jax.models.native_kernels import has_bf16_dot

    return "bfloat16" if has_bf16_dot() else "float32"
