"""A small SASRec teacher trained in seconds on a tiny raw dataset, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

from reclm_jax.teacher.config import SASRecConfig, TeacherConfig, TeacherTrainConfig
from reclm_jax.teacher.train import train

TINY_MODEL = SASRecConfig(dim=32, num_layers=1, num_heads=2, inner_dim=64, dropout=0.1, window=10)


def tiny_teacher_config(data_dir: str | Path, out_dir: str | Path, seed: int = 0, epochs: int = 30) -> TeacherConfig:
    return TeacherConfig(
        data_path=str(data_dir),
        output_dir=str(out_dir),
        model=TINY_MODEL,
        train=TeacherTrainConfig(lr=5e-3, batch_size=256, eval_batch_size=256, max_epochs=epochs,
                                 early_stop_patience=epochs, lr_plateau_patience=3, seed=seed, progress=False),
    )


def train_tiny_teacher(data_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Trains a 1-layer, 32-dim SASRec on ``data_dir`` into ``out_dir`` (deterministic for a seed); returns
    ``out_dir``, ready for ``Teacher.from_checkpoint``."""
    train(tiny_teacher_config(data_dir, out_dir, seed))
    return Path(out_dir)
