"""configs/rl_llama2_7b_paper.yaml holds every setting of the paper run's name, each checked against the value the
name itself spells (parsed here), not against the YAML; and it builds an RLConfig the trainer accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reclm_jax.config import load_config
from reclm_jax.errors import UserError
from reclm_jax.rl.config import RLConfig
from reclm_jax.rl.trainer import RLTrainer

CONFIG = Path(__file__).parents[2] / "configs" / "rl_llama2_7b_paper.yaml"
# The run's name as the original's main.py builds it (scripts/rl_merge.sh at ad4d270, spec 10.8).
RUN_NAME = ("RL_Total_train_LM-True_VM-False_NR-20.1_SN-2_Q-False_T6_FG-True_LR-5e-06_LDO-0.0_WD-0.0_KLC-0.3_"
            "EW-0.01_RS-False_RW-True_VFC-0.1_KLT-0.05_LRP-2.0_GAMMA-0.99_GAS-4_LB-1_RA_0.5_")
REQUIRED = ["data_path=/data/ml-1m", "teacher.checkpoint=/runs/teacher"]


def decode(name: str) -> dict[str, str]:
    """{part: value} of a run name: "KEY-VALUE" parts, "RA_0.5" (the original's typo) and "T6" (task count)."""
    parts = {}
    for m in re.finditer(r"(?:^|_)([A-Z]+)[-_](True|False|[0-9][^_]*)(?=_)", name):
        parts[m.group(1)] = m.group(2)
    t = re.search(r"_T(\d+)_", name)
    parts["T"] = t.group(1)
    return parts


def as_bool(s: str) -> bool:
    assert s in ("True", "False")
    return s == "True"


@pytest.fixture(scope="module")
def cfg() -> RLConfig:
    return load_config(RLConfig, CONFIG, REQUIRED)


def test_the_name_decodes_into_every_part():
    parts = decode(RUN_NAME)
    assert set(parts) == {"LM", "VM", "NR", "SN", "Q", "T", "FG", "LR", "LDO", "WD", "KLC", "EW", "RS", "RW", "VFC",
                          "KLT", "LRP", "GAMMA", "GAS", "LB", "RA"}
    assert parts["RA"] == "0.5" and parts["LR"] == "5e-06" and parts["T"] == "6"


def test_every_name_setting_is_in_the_config(cfg):
    n = decode(RUN_NAME)
    p, o, r, a = cfg.ppo, cfg.optim, cfg.reward, cfg.adapters
    assert a.lm_head_full_tune is as_bool(n["LM"])
    assert r.vague_mapping is as_bool(n["VM"])
    assert n["NR"] == "20.1" and r.kind == "nr20"
    assert cfg.rollout.sample_num == int(n["SN"])
    assert not as_bool(n["Q"]) and cfg.model.param_dtype == "bfloat16"  # no 4-bit quantisation
    assert len(cfg.data.train_tasks) == int(n["T"])
    assert as_bool(n["FG"]) and r.kind == "nr20"  # NR-20.1 always places item rewards on line ends
    assert o.lr == float(n["LR"])
    assert a.actor.dropout == a.critic.dropout == float(n["LDO"])
    assert o.weight_decay == float(n["WD"])
    assert p.kl.kind == "fixed" and p.kl.coef == float(n["KLC"])
    assert p.entropy_coef == float(n["EW"])
    assert not as_bool(n["RS"]) and p.reward_whitening != "running"  # no running-moment reward scaling
    assert as_bool(n["RW"]) and p.reward_whitening != "none"
    assert p.vf_coef == float(n["VFC"])
    assert p.policy_kl_threshold == float(n["KLT"])
    assert o.power == float(n["LRP"])
    assert p.gamma == float(n["GAMMA"])
    assert p.mini_batch_size == int(n["GAS"])  # sequences per optimiser step (one GPU)
    assert int(n["LB"]) == 1  # one update per rollout batch: the only mode reclm-jax has
    assert r.alpha == float(n["RA"])


def test_the_scripts_other_settings(cfg):
    # scripts/single_gpu_rl_train.sh and the original's hard-coded values (spec 10.1-10.7, audit R1 and R4).
    assert (cfg.adapters.actor.rank, cfg.adapters.actor.alpha) == (4, 2) == (cfg.adapters.critic.rank,
                                                                             cfg.adapters.critic.alpha)
    assert "lm_head" not in cfg.adapters.actor.targets
    assert cfg.rollout.prompts == 8 and cfg.rollout.greedy
    assert (cfg.rollout.temperature, cfg.rollout.top_k, cfg.rollout.top_p) == (0.7, 20, 1.0)
    assert cfg.rollout.max_new_tokens == 512 and cfg.rollout.max_prompt_length == 512
    assert cfg.rollout.trajectory == "rendered"
    assert cfg.ppo.epochs == 4 and cfg.ppo.lam == 1.0 and cfg.ppo.kl_estimator == "k1"
    assert cfg.ppo.clip_ratio == 0.2 and cfg.ppo.value_clip == 0.2
    # R1: whitening over the 16 rows of one process's rollout, = 8 prompts x 2 responses.
    assert cfg.ppo.reward_whitening == cfg.ppo.advantage_whitening == "rows"
    assert cfg.ppo.whitening_rows == cfg.rollout.prompts * cfg.rollout.sample_num == 16
    assert cfg.ppo.normalisation == "sequence"
    assert cfg.optim.clip_grad_norm == 0.5 and cfg.optim.warmup_steps == 50 and cfg.optim.lr_end == 1e-7
    assert (cfg.optim.b1, cfg.optim.b2, cfg.optim.eps) == (0.9, 0.999, 1e-5)
    assert cfg.data.chat_template == "llama-2" and cfg.data.item_index == "title64_t" and cfg.data.idx
    assert cfg.data.topk == 10 and cfg.data.val_num_per_task == 320
    assert len(cfg.data.val_tasks) == 7 and "RLItemCount" in cfg.data.val_tasks
    assert cfg.train.episodes == 2 and cfg.train.val_every == cfg.train.save_every == 100
    assert cfg.train.seed == 0 and cfg.algorithm == "ppo" and cfg.uses_critic


def test_it_builds_a_valid_config_and_needs_its_paths():
    cfg = load_config(RLConfig, CONFIG, REQUIRED)
    RLTrainer._check(cfg)  # the trainer's own consistency checks (batch sizes, whitening blocks, ...)
    with pytest.raises(UserError, match="data_path"):
        load_config(RLConfig, CONFIG, REQUIRED[1:])
