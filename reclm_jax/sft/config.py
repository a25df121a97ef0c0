"""The SFT stage's configuration (frozen dataclasses; YAML + overrides are read in ``reclm_jax.sft.__main__``)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from reclm_jax.models.lora import ALL_LINEARS, LoraConfig
from reclm_jax.models.sharding import MeshConfig
from reclm_jax.train.distributed import DistributedConfig
from reclm_jax.train.backbone import ModelSettings
from reclm_jax.train.optim import OptimConfig

# The original's defaults: every linear layer, lm_head included.
DEFAULT_TARGETS = ALL_LINEARS + ("lm_head",)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    train_tasks: tuple[str, ...] = ("SFTSeqRec", "SFTPersonalControlRec", "SFTControlRec_re",
                                    "SFTPersonalCategoryRate")
    # The original scripts' four (scripts/sft_train.sh:22); the best adapter has the best mean NDCG over them.
    val_tasks: tuple[str, ...] = ("SFTTestSeqRec", "SFT+TestPersonalControlRec", "SFT-TestPersonalControlRec",
                                  "SFTTestPersonalCategoryRateEP_50")
    item_index: str = "title64_t"
    chat_template: Literal["llama-2", "hf", "none"] = "hf"
    topk: int = 10
    candidate_num: int = 10
    val_num_per_task: int = 320
    share_chat_gpt_ratio: float = 0.0
    share_chat_gpt_path: str = ""
    keep_held_out: bool = False  # True reproduces the original (val/test targets may appear in train labels)
    train_data_file: str = ""  # static mode: SFT_dataset_train.pickle from `python -m reclm_jax.data.process`
    val_data_file: str = ""
    max_prompt_length: int = 512
    max_output_length: int = 512
    prompt_buckets: tuple[int, ...] = (128, 256, 384, 512)
    output_buckets: tuple[int, ...] = (64, 128, 256, 512)
    chunk: int = 256  # samples built per batched teacher call


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
    checkpoint: str = ""  # a teacher training run's output_dir (in-process teacher)
    port: int = 0  # or an HTTP teacher service (`python -m reclm_jax.teacher.serve`) on this port
    hosts: str = "127.0.0.1"  # comma-separated hosts, tried in order (the original's --backup_ip)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1
    max_steps: int = -1  # stop after this many optimiser steps (-1: run all epochs)
    # Stop cleanly (checkpoint, validate, save) after this many seconds; 0 = none. The LR schedule still spans
    # epochs / max_steps, so set max_steps to the steps the budget allows for a complete schedule.
    time_budget_s: float = 0.0
    batch_size: int = 8  # rows per micro-batch, global: summed over processes, split over the data axes
    grad_accum: int = 1  # micro-batches per optimiser step
    loss_weighting: Literal["sequence", "token"] = "sequence"
    seed: int = 0
    log_every: int = 10
    val_every: int = 0  # optimiser steps between validations; 0 = at the end of every epoch
    val_before: bool = True  # validate the base model first (the "before" column)
    # Rows per validation decode on each process: every process decodes the whole validation set (validation
    # is not split across processes yet), so unlike batch_size this is per process.
    val_batch_size: int = 16
    # <= 0: automatic, the tokens of the longest list the item index allows (data.item_index.longest_list_tokens);
    # a fixed length can cut 10-item lists of long titles (the original allows at least 512).
    val_max_new_tokens: int = 0
    # Decode validation under each sample's catalogue constraint (reclm_jax.decoding: real, distinct items that
    # obey the instruction), so NonExist and Repeat are 0 and the metrics measure which items the model picks.
    val_constrained: bool = False
    save_every: int = 100  # optimiser steps between checkpoints (and at the end)
    keep_checkpoints: int = 3


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    data_path: str
    output_dir: str
    resume: bool = False  # continue from output_dir's latest checkpoint
    model: ModelSettings = ModelSettings()
    lora: LoraConfig = LoraConfig(rank=16, alpha=8.0, dropout=0.1, targets=DEFAULT_TARGETS)
    optim: OptimConfig = OptimConfig()
    data: DataSettings = DataSettings()
    teacher: TeacherSettings = TeacherSettings()
    train: TrainSettings = TrainSettings()
    mesh: MeshConfig = MeshConfig()
    distributed: DistributedConfig = DistributedConfig()  # multi-host launch (train/distributed.py)
