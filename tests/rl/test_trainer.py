"""The RL loop in-process on a tiny model and the toy problem (+1 per response token whose id is a multiple of 4):
PPO and GRPO raise the reward with the KL bounded, the reference policy and the frozen backbone never move, the
critic adapter and the value head learn, and nothing recompiles across iterations."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from reclm_jax.config import load_config
from reclm_jax.errors import UserError
from reclm_jax.rl.config import RLConfig
from reclm_jax.rl.data import prompt_ids
from reclm_jax.rl.toy import toy_samples
from reclm_jax.rl.trainer import RLTrainer, mini_batch_rows
from reclm_jax.train.cadence import Hooks

CONFIG = str(Path(__file__).parents[2] / "configs" / "rl_tiny.yaml")
ITERATIONS = 20


def tiny_config(model_dir, out_dir, *extra) -> RLConfig:
    return load_config(RLConfig, CONFIG, [f"model.path={model_dir}", f"output_dir={out_dir}", *extra])


def _records(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def _probe(trainer: RLTrainer):
    """Log-probs and values of fixed responses to fixed prompts, in the rollout's shape (same program)."""
    r = trainer.cfg.rollout
    samples = toy_samples(trainer.tokenizer, r.prompts, seed=5, split="val")
    ids = prompt_ids(samples, trainer.tokenizer, trainer.cfg)
    rows = [q for q in ids for _ in range(r.sample_num)]
    responses = [[(7 * i + 3 * j) % 400 + 10 for j in range(r.max_new_tokens)] for i in range(len(rows))]
    traj = trainer.rollout.trajectories([samples[0]] * len(rows), rows, responses, [""] * len(rows),
                                        np.zeros(len(rows), bool))
    stats = trainer.rollout.stats(trainer.trainable, trainer.frozen, traj)
    return jax.device_get(stats), np.asarray(traj.action_mask)


def _named(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, path)): np.array(v) for path, v in nnx.to_flat_state(state)}


def _run(tiny_llama_dir, out, *extra):
    trainer = RLTrainer(tiny_config(tiny_llama_dir, out, f"train.max_iterations={ITERATIONS}", *extra),
                        progress=False, hooks=Hooks())
    init = jax.device_get(trainer.host_trainable())
    frozen = _named(jax.device_get(trainer.frozen))
    before = _probe(trainer)
    traces = {}
    trainer.hooks.after_step.append(lambda it: traces.__setitem__(it, trainer.traces()))
    summary = trainer.run()
    after = _probe(trainer)
    return {"trainer": trainer, "summary": summary, "init": init, "frozen": frozen, "before": before,
            "after": after, "traces": traces, "records": _records(out), "out": out}


@pytest.fixture(scope="module")
def ppo(tiny_llama_dir, tmp_path_factory):
    return _run(tiny_llama_dir, tmp_path_factory.mktemp("ppo"))


@pytest.fixture(scope="module")
def grpo(tiny_llama_dir, tmp_path_factory):
    return _run(tiny_llama_dir, tmp_path_factory.mktemp("grpo"), "algorithm=grpo", "rollout.greedy=false",
                "rollout.sample_num=4", "rollout.prompts=4", "grpo.outcome=sum")


def _check_learning(run):
    rewards = [r["reward"] for r in run["records"]]
    assert len(rewards) == ITERATIONS
    start, end = np.mean(rewards[:3]), np.mean(rewards[-5:])
    # 16 tokens per response, about 1 in 4 rewarded at the start; a clear rise, not noise
    assert end > 2 * start and end - start > 4, rewards
    kl = [r["kl_token"] for r in run["records"]]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # the untrained actor is the reference
    # Bounded: the KL-regularised optimum concentrates on the rewarded quarter of the vocabulary, ~log 4 per token.
    assert max(kl) < 1.6, kl
    assert np.mean(kl[-5:]) < 1.6


def test_ppo_raises_the_reward_with_bounded_kl(ppo):
    _check_learning(ppo)
    rec = ppo["records"][-1]
    for key in ("reward", "kl", "clip_frac", "value_loss", "entropy", "lr", "kl_coef", "time_rollout"):
        assert np.isfinite(rec[key])


def test_grpo_raises_the_reward_with_bounded_kl(grpo):
    _check_learning(grpo)
    assert "value_head" not in grpo["trainer"].trainable  # no critic
    assert "critic" not in json.dumps(sorted(_named(grpo["init"]["lora"])))


@pytest.mark.parametrize("name", ["ppo", "grpo"])
def test_reference_policy_and_backbone_never_move(name, request):
    run = request.getfixturevalue(name)
    (stats0, mask), (stats1, _) = run["before"], run["after"]
    np.testing.assert_array_equal(stats0.logp_ref, stats1.logp_ref)  # bit-identical reference log-probs
    assert np.max(np.abs(stats0.logp_old - stats1.logp_old)[mask]) > 1e-2  # while the actor moved
    frozen_now = _named(jax.device_get(run["trainer"].frozen))
    assert frozen_now.keys() == run["frozen"].keys()
    for k, v in run["frozen"].items():
        np.testing.assert_array_equal(frozen_now[k], v, err_msg=k)


def test_critic_adapter_and_value_head_receive_gradients(ppo):
    init, now = ppo["init"], jax.device_get(ppo["trainer"].host_trainable())
    lora0, lora1 = _named(init["lora"]), _named(now["lora"])
    critic_b = [k for k in lora0 if ".critic." in f".{k}." and k.endswith(".b")]
    assert critic_b and all(not lora0[k].any() for k in critic_b)  # B starts at zero ...
    assert all(np.abs(lora1[k]).max() > 0 for k in critic_b)  # ... and every one of them learned
    heads0, heads1 = _named(init["value_head"]), _named(now["value_head"])
    assert heads0 and all(np.abs(heads1[k] - heads0[k]).max() > 0 for k in heads0)
    actor_copy = [k for k in lora0 if "full" in k and "actor" in k]
    assert actor_copy and np.abs(lora1[actor_copy[0]] - lora0[actor_copy[0]]).max() > 0  # the actor's lm_head
    # the critic values changed with it
    assert np.max(np.abs(ppo["before"][0].values - ppo["after"][0].values)) > 1e-3


def test_scanned_layers_give_the_same_ppo_iterations(tiny_llama_dir, tmp_path):
    # model.scan_layers=true: actor, critic (LoRA on every layer of the stack), value head and the actor's own
    # lm_head on a scanned backbone; the rollout decodes through the stacked KV cache. Two iterations each (the
    # learning-rate schedule follows max_iterations, so the reference is a run of the same length).
    runs = {}
    for scan in ("false", "true"):
        out = tmp_path / scan
        trainer = RLTrainer(tiny_config(tiny_llama_dir, out, "train.max_iterations=2", f"model.scan_layers={scan}"),
                            progress=False, hooks=Hooks())
        assert trainer.backbone.model().config.scan_layers == (scan == "true")
        trainer.run()
        runs[scan] = (_records(out), json.loads((out / "adapter" / "lora_adapter.json").read_text()))
    (want, want_meta), (got, got_meta) = runs["false"], runs["true"]
    for key in ("reward", "kl", "loss", "pg_loss", "value_loss", "entropy", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=1e-4, atol=1e-6,
                                   err_msg=key)
    assert got_meta["modules"] == want_meta["modules"] and got_meta["full_tune"] == ["lm_head.weight"]


@pytest.mark.parametrize("name", ["ppo", "grpo"])
def test_no_recompilation_across_iterations(name, request):
    traces = request.getfixturevalue(name)["traces"]
    assert traces[3] == traces[ITERATIONS], traces
    t = traces[ITERATIONS]
    assert t["update"] == 1 and t["prepare"] == 1 and t["stats"] == 1
    greedy = name == "ppo"
    assert t["sampler"] == (2 if greedy else 1)  # one greedy + one sampled program, compiled once each


def test_outputs(ppo):
    out = ppo["out"]
    assert (out / "config.yaml").is_file()
    assert (out / "adapter" / "lora_adapter.safetensors").is_file()
    assert (out / "critic" / "value_head.safetensors").is_file()
    meta = json.loads((out / "adapter" / "lora_adapter.json").read_text())
    assert meta["name"] == "actor" and meta["full_tune"] == ["lm_head.weight"] and meta["rank"] == 4
    assert ppo["summary"]["iterations"] == ITERATIONS


def test_mini_batches_cover_every_row_once_per_epoch():
    rows, valid = mini_batch_rows(22, 8, 4, seed=0, iteration=3, epoch=1)
    assert rows.shape == (3, 2, 4) and valid.sum() == 22
    assert sorted(rows[valid].tolist()) == list(range(22))
    assert valid[-1].sum() == 6 and not valid.reshape(-1)[-2:].any()  # the last step is filled up
    again, _ = mini_batch_rows(22, 8, 4, seed=0, iteration=3, epoch=1)
    np.testing.assert_array_equal(rows, again)  # a resumed run shuffles the same way
    other, _ = mini_batch_rows(22, 8, 4, seed=0, iteration=3, epoch=2)
    assert not np.array_equal(rows, other)


def test_user_errors_before_loading(tmp_path):
    with pytest.raises(UserError, match="sample_num must be >= 2"):
        RLTrainer(tiny_config("/nonexistent", tmp_path, "algorithm=grpo", "rollout.sample_num=1"))
    with pytest.raises(UserError, match="must divide"):
        RLTrainer(tiny_config("/nonexistent", tmp_path, "ppo.mini_batch_size=8", "ppo.micro_batch_size=3"))
    with pytest.raises(UserError, match="rollout.constrained: constrained decoding needs a dataset's catalogue"):
        RLTrainer(tiny_config("/nonexistent", tmp_path, "rollout.constrained=true"))  # the toy problem has none
    with pytest.raises(UserError, match="train.val_constrained: constrained decoding writes numbered lists"):
        RLTrainer(tiny_config("/nonexistent", tmp_path, "train.val_constrained=true", "data.source=tasks",
                              "data.idx=false"))
