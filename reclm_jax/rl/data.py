"""Where RL prompts come from: the task layer's RL tasks (dynamic, teacher-labelled), a stored
``RL_dataset_train.pickle`` (static), or the toy problem; plus the validation samples and the reward.

A ``PromptSource`` has a fixed number of prompts per episode and builds any of them on demand from (episode,
index), so the run's data position is two integers (episode, prompts taken in it) and a resumed run sees the
same prompts. Each episode visits the prompts in the order ``data.pipeline.shard_indices`` gives for
(seed, episode); an iteration takes the next ``rollout.prompts`` of them (the global batch) and each process
builds its own consecutive share.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from reclm_jax.data.pipeline import PipelineConfig, load_static, shard_indices, tokenize_sample
from reclm_jax.errors import UserError
from reclm_jax.rl.config import RLConfig


class PromptSource(Protocol):
    def __len__(self) -> int: ...

    def take(self, episode: int, indices: Sequence[int]) -> list[dict]: ...


class ListSource:
    """Fixed samples, the same every episode (the toy problem, tests)."""

    def __init__(self, samples: Sequence[dict]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def take(self, episode: int, indices: Sequence[int]) -> list[dict]:
        return [self.samples[int(i)] for i in indices]


class StaticSource:
    """Stored epochs (``python -m reclm_jax.data.process --train_stage RL``); episode e reads epoch e % n."""

    def __init__(self, epochs: list[list[dict]]):
        if not epochs or not epochs[0]:
            raise UserError("the RL train data file holds no samples")
        self.epochs = epochs

    def __len__(self) -> int:
        return min(len(e) for e in self.epochs)

    def take(self, episode: int, indices: Sequence[int]) -> list[dict]:
        epoch = self.epochs[episode % len(self.epochs)]
        return [epoch[int(i)] for i in indices]


class TaskSource:
    """RL train samples built by the task layer from (seed, episode, index), teacher lists in one call per batch."""

    def __init__(self, builder: Any):
        self.builder = builder

    def __len__(self) -> int:
        return len(self.builder)

    def take(self, episode: int, indices: Sequence[int]) -> list[dict]:
        return self.builder.build([int(i) for i in indices], epoch=episode)


def episode_order(n: int, seed: int, episode: int) -> np.ndarray:
    """The global visiting order of an episode's ``n`` prompts (every process computes the same)."""
    return shard_indices(n, seed, episode, 0, 1, shuffle=True)


def prompt_ids(samples: Sequence[dict], tokenizer: Any, cfg: RLConfig) -> list[list[int]]:
    """The prompts' token ids as the policy sees them: BOS as SFT adds it, left-truncated to
    ``rollout.max_prompt_length`` (and the largest prompt bucket) keeping the leading specials."""
    r = cfg.rollout
    pipe = PipelineConfig(max_prompt_length=r.max_prompt_length, prompt_buckets=r.prompt_buckets, with_output=False)
    return [tokenize_sample(s, tokenizer, pipe).prompt for s in samples]


def _static(path: str, key: str) -> list[list[dict]]:
    try:
        return load_static(path)
    except UserError as e:
        raise UserError(f"{key}: {e}") from None


class RLData:
    """The run's train prompts, validation samples and scorer, from ``cfg.data`` / ``cfg.reward``."""

    def __init__(self, cfg: RLConfig, tokenizer: Any):
        self.cfg = cfg
        d = cfg.data
        self.tokenizer = tokenizer
        self.ctx = self.teacher = None
        if d.source == "toy":
            from reclm_jax.rl.toy import toy_samples

            self.source: PromptSource = ListSource(toy_samples(tokenizer, d.toy_prompts, cfg.train.seed, "train"))
            self._val = toy_samples(tokenizer, 8, cfg.train.seed, "val") if d.val_tasks else []
            return
        if not cfg.data_path:
            raise UserError("data.source tasks needs data_path (a raw dataset folder); data.source=toy needs none")
        from reclm_jax.data.samples import SampleBuilder
        from reclm_jax.data.task_setup import build_task_context
        from reclm_jax.data.tasks import TaskSettings
        from reclm_jax.teacher.connect import connect_teacher

        settings = TaskSettings(topk=d.topk, candidate_num=d.candidate_num, idx=d.idx,
                                val_num_per_task=d.val_num_per_task, max_prompt_length=cfg.rollout.max_prompt_length,
                                keep_held_out=d.keep_held_out)
        self.ctx, self.index = build_task_context(cfg.data_path, d.item_index, tokenizer, d.chat_template, settings)
        t = cfg.teacher
        self.teacher = connect_teacher(t.checkpoint, t.port, t.hosts, data_path=cfg.data_path, dataset=self.ctx.raw,
                                       keys=("teacher.checkpoint", "teacher.port", "teacher.hosts"))
        if self.teacher is None and cfg.reward.kind == "nr20":
            raise UserError("the NR-20.1 reward ranks items with the teacher: set teacher.checkpoint (a teacher run "
                            "folder) or teacher.port")
        if d.train_data_file:
            self.source = StaticSource(_static(d.train_data_file, "data.train_data_file"))
        else:
            self.source = TaskSource(SampleBuilder(self.ctx, list(d.train_tasks), "train", self.teacher,
                                                   cfg.train.seed))
        if d.val_data_file:
            self._val = _static(d.val_data_file, "data.val_data_file")[0]
        elif d.val_tasks:
            self._val = SampleBuilder(self.ctx, list(d.val_tasks), "val", self.teacher, cfg.train.seed).epoch(0)
        else:
            self._val = []

    def val_samples(self) -> list[dict]:
        return self._val

    def scorer(self):
        r = self.cfg.reward
        if r.kind == "toy_tokens":
            from reclm_jax.rl.toy import TokenModulusReward

            return TokenModulusReward(r.toy_modulus)
        if self.ctx is None:
            raise UserError("reward.kind nr20 needs the task data (data.source: tasks); the toy source pairs with "
                            "reward.kind=toy_tokens")
        from reclm_jax.rl.scoring import nr20_scorer

        return nr20_scorer(self.ctx, self.teacher, self.tokenizer, r.alpha, r.vague_mapping)
