"""The RL stage's configuration (frozen dataclasses; YAML + overrides are read in ``reclm_jax.rl.__main__``).

Defaults are the paper run's (spec §10.8, ``NR-20.1 SN-2 LR-5e-06 KLC-0.3 EW-0.01 RW-True VFC-0.1 KLT-0.05
LRP-2.0 GAMMA-0.99 GAS-4 LB-1 RA-0.5 FG-True LM-True``, with the audit's corrections) unless a comment says
otherwise. Conversions to the pure-math configs of ``advantages``/``losses``/``grpo``/``kl_control`` are the
methods below, so the trainer and the tests build them one way.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from reclm_jax.models.lora import ALL_LINEARS, LoraConfig
from reclm_jax.models.sharding import MeshConfig
from reclm_jax.train.distributed import DistributedConfig
from reclm_jax.rl.advantages import AdvantageConfig, Whitening
from reclm_jax.rl.grpo import GRPOConfig
from reclm_jax.rl.kl_control import KLControlConfig
from reclm_jax.rl.losses import PPOLossConfig
from reclm_jax.train.backbone import ModelSettings
from reclm_jax.train.optim import OptimConfig

# The original's adapters: r 4, alpha 2, no dropout, every linear but lm_head (which the actor fully tunes).
ORIGINAL_ADAPTER = LoraConfig(rank=4, alpha=2.0, dropout=0.0, targets=ALL_LINEARS)


@dataclasses.dataclass(frozen=True)
class AdapterSettings:
    actor: LoraConfig = ORIGINAL_ADAPTER
    critic: LoraConfig = ORIGINAL_ADAPTER  # PPO only; GRPO has no critic
    # LM-True: the actor owns a fully trained copy of lm_head (the reference and the critic keep the frozen one).
    lm_head_full_tune: bool = True
    value_head_inner: int = 64  # Linear(hidden, 64) -> GELU -> Linear(64, 1), trained (the original never did)


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    prompts: int = 8  # prompts per iteration, global (the original: --batch_size 8 per process)
    sample_num: int = 2  # responses per prompt (SN-2); GRPO's group size
    greedy: bool = True  # the first response of each prompt is greedy (the original); GRPO usually wants False
    temperature: float = 0.7
    top_k: int = 20
    top_p: float = 1.0
    max_new_tokens: int = 512  # the original's gen_max_length
    max_prompt_length: int = 512  # prompts are left-truncated to this (the policy sees exactly these tokens)
    prompt_buckets: tuple[int, ...] = (128, 256, 384, 512)
    response_buckets: tuple[int, ...] = ()  # () = powers of two >= 16
    # What PPO trains on: "rendered" (the original, spec §10.3) = the parsed list re-rendered canonically as SFT's
    # labels ("1. A\n 2. B\n" + EOS) and tokenized; "sampled" = the tokens the policy sampled. The prompt is the
    # one the policy saw either way (audit R5). Non-list rewards (the toy problem) want "sampled".
    trajectory: Literal["rendered", "sampled"] = "rendered"
    # Sample every response under its sample's catalogue constraint (reclm_jax.decoding; needs data.source tasks
    # and data.idx): only real, distinct items that obey the instruction. PPO / GRPO still learn the model's own,
    # unconstrained distribution: the log-probs, ratios, KL and entropy are recomputed by the stats pass over the
    # trajectory tokens without the mask; the constraint is part of the environment (docs/differences.md).
    constrained: bool = False


@dataclasses.dataclass(frozen=True)
class PPOSettings:
    epochs: int = 4  # PPO epochs over each rollout batch
    mini_batch_size: int = 4  # sequences per optimiser step (GAS-4 on one GPU: 4 sequences per step)
    micro_batch_size: int = 0  # sequences per forward/backward (0 = the whole mini-batch); must divide it
    policy_kl_threshold: float = 0.05  # KLT: stop the epochs once an epoch's mean policy KL exceeds it (<= 0: off)
    gamma: float = 0.99
    lam: float = 1.0
    kl: KLControlConfig = KLControlConfig()  # KLC-0.3, fixed (or kind: adaptive, target, horizon)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    # RW-True: rewards divided by their std (no mean shift); advantages always whitened (centred and scaled).
    reward_whitening: Literal["none", "batch", "rows", "running"] = "batch"
    advantage_whitening: Literal["none", "batch", "rows", "running"] = "batch"
    whitening_rows: int = 16  # block size of the "rows" scope (16 = the paper's per-process batch)
    clip_ratio: float = 0.2
    clip_ratio_high: float | None = None
    value_clip: float | None = 0.2
    vf_coef: float = 0.1  # VFC-0.1
    entropy_coef: float = 0.01  # EW-0.01
    normalisation: Literal["sequence", "token"] = "sequence"  # the original: token mean per sequence (R4)
    logprob_chunk: int = 128  # positions per LM-head chunk of the log-prob passes

    def advantage_config(self) -> AdvantageConfig:
        return AdvantageConfig(
            gamma=self.gamma, lam=self.lam, kl_estimator=self.kl_estimator,
            reward_whitening=Whitening(scope=self.reward_whitening, rows=self.whitening_rows, shift_mean=False),
            advantage_whitening=Whitening(scope=self.advantage_whitening, rows=self.whitening_rows,
                                          shift_mean=True))

    def loss_config(self) -> PPOLossConfig:
        return PPOLossConfig(clip_ratio=self.clip_ratio, clip_ratio_high=self.clip_ratio_high,
                             value_clip=self.value_clip, vf_coef=self.vf_coef, entropy_coef=self.entropy_coef,
                             normalisation=self.normalisation)


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """GRPO's own settings; epochs, mini-batches, clip ranges, normalisation and the early stop are ``ppo``'s."""

    kl_coef: float = 0.04
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    scale_by_std: bool = True
    eps: float = 1e-4
    # The sequence reward R_i: "last" = the reward on the response's last token (NR-20's list reward, x10), with
    # the other tokens' rewards as item rewards; "sum" = all of its per-token rewards added up.
    outcome: Literal["last", "sum"] = "last"
    item_weight: float = 0.0  # > 0: item rewards as token-level (process) advantages too (outcome "last" only)

    def loss_config(self, ppo: PPOSettings) -> GRPOConfig:
        return GRPOConfig(clip_ratio=ppo.clip_ratio, clip_ratio_high=ppo.clip_ratio_high, kl_coef=self.kl_coef,
                          kl_estimator=self.kl_estimator, entropy_coef=self.entropy_coef,
                          normalisation=ppo.normalisation, scale_by_std=self.scale_by_std, eps=self.eps,
                          item_weight=self.item_weight)


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    # nr20: the paper's NR-20.1 (``rl.reward``; needs a teacher); toy_tokens: +1 on every response token whose id
    # is a multiple of toy_modulus (``rl.toy``: tests and smoke runs, no data or teacher).
    kind: Literal["nr20", "toy_tokens"] = "nr20"
    alpha: float = 0.5  # RA-0.5
    vague_mapping: bool = False  # VM-False
    toy_modulus: int = 4


@dataclasses.dataclass(frozen=True)
class DataSettings:
    # tasks: RL samples from the task layer (dynamic, teacher-labelled), or train_data_file; toy: synthetic prompts.
    source: Literal["tasks", "toy"] = "tasks"
    train_tasks: tuple[str, ...] = ("RLSeqRec", "RL+PersonalControlRec", "RL-PersonalControlRec",
                                    "RLPersonalCategoryRateLP", "RLPersonalCategoryRateMP",
                                    "RLPersonalCategoryRateEP")
    val_tasks: tuple[str, ...] = ("RLSeqRec", "RL+PersonalControlRec", "RL-PersonalControlRec",
                                  "RLPersonalCategoryRateLP_20", "RLPersonalCategoryRateMP_30",
                                  "RLPersonalCategoryRateEP_50", "RLItemCount")
    item_index: str = "title64_t"
    chat_template: Literal["llama-2", "hf", "none"] = "hf"
    idx: bool = True  # lists are numbered "1. ..." (the scripts' --idx): prompts, rewards, rendered trajectories
    topk: int = 10
    candidate_num: int = 10
    val_num_per_task: int = 320
    keep_held_out: bool = False
    # Static mode: RL_dataset_{train,val}.pickle of `python -m reclm_jax.data.process --train_stage RL`, whose
    # episodes replace the dynamic ones (train_tasks / val_tasks are then unused). Written with this run's seed,
    # tasks, item_index, chat template, tokenizer (--tokenizer = model.path), topk and val_num_per_task, they hold
    # exactly the samples the dynamic pipeline builds. data_path and the teacher are still needed (the reward).
    train_data_file: str = ""
    val_data_file: str = ""
    chunk: int = 256  # samples built per batched teacher call
    toy_prompts: int = 64  # toy source: train prompts per episode (validation: 8 more)


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
    checkpoint: str = ""  # a teacher training run's output_dir (in-process teacher)
    port: int = 0  # or an HTTP teacher service on this port
    hosts: str = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    episodes: int = 2  # passes over the train prompts (the original's --num_episodes 2)
    max_iterations: int = -1  # stop after this many iterations (-1: all episodes); the LR schedule spans them
    time_budget_s: float = 0.0  # stop cleanly (checkpoint, validate, save) after this many seconds; 0 = none
    seed: int = 0
    log_every: int = 1
    val_every: int = 100  # iterations between validations (the original's --val_save_step 100); 0 = end only
    val_before: bool = True  # validate the SFT model first (the original's --dry)
    val_batch_size: int = 16  # rows per validation decode, per process
    val_constrained: bool = False  # validation decodes under the catalogue constraints (as SFT's; data.source tasks)
    save_every: int = 100
    keep_checkpoints: int = 3


@dataclasses.dataclass(frozen=True)
class RLConfig:
    data_path: str = ""  # raw dataset folder (data.source: tasks)
    output_dir: str = "runs/rl"
    algorithm: Literal["ppo", "grpo"] = "ppo"
    resume: bool = False
    model: ModelSettings = ModelSettings()  # the merged SFT folder: the frozen backbone and reference policy
    adapters: AdapterSettings = AdapterSettings()
    rollout: RolloutSettings = RolloutSettings()
    ppo: PPOSettings = PPOSettings()
    grpo: GRPOSettings = GRPOSettings()
    # LR-5e-06, WD-0.0, clip 0.5; warm-up 50 iterations then power-2 decay over the run (one LR per iteration).
    optim: OptimConfig = OptimConfig(lr=5e-6, weight_decay=0.0, clip_grad_norm=0.5, warmup_steps=50)
    reward: RewardSettings = RewardSettings()
    data: DataSettings = DataSettings()
    teacher: TeacherSettings = TeacherSettings()
    train: TrainSettings = TrainSettings()
    mesh: MeshConfig = MeshConfig()
    distributed: DistributedConfig = DistributedConfig()  # multi-host launch (train/distributed.py)

    @property
    def uses_critic(self) -> bool:
        return self.algorithm == "ppo"
