"""RL on the task layer's RL samples with the NR-20.1 reward (tiny dataset, tiny teacher, tiny model): the scorer
puts the rewards where ``rl.token_rewards`` says, and a short PPO run trains, validates per task and keeps the best
actor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reclm_jax.config import load_config
from reclm_jax.rl.config import RLConfig
from reclm_jax.rl.trainer import RLTrainer

CONFIG = str(Path(__file__).parents[2] / "configs" / "rl_tiny.yaml")


def _cfg(world, out, *extra) -> RLConfig:
    model, data, teacher = world
    return load_config(RLConfig, CONFIG, [
        f"model.path={model}", f"output_dir={out}", f"data_path={data}", f"teacher.checkpoint={teacher}",
        "data.source=tasks", "reward.kind=nr20", "data.item_index=title", "data.topk=3",
        "data.train_tasks=[RLSeqRec,RL+PersonalControlRec]", "data.val_tasks=[RLSeqRec,RL-PersonalControlRec]",
        "data.val_num_per_task=2", "rollout.prompts=4", "rollout.max_prompt_length=256",
        "rollout.prompt_buckets=[256]", "rollout.trajectory=rendered", "ppo.mini_batch_size=4", "ppo.epochs=1",
        *extra])


@pytest.fixture(scope="module")
def world(tiny_llama_dir, tiny_dataset_dir, tiny_teacher_dir):
    return tiny_llama_dir, tiny_dataset_dir, tiny_teacher_dir


def test_nr20_scorer_places_item_and_list_rewards(world, tmp_path):
    from reclm_jax.rl.data import RLData
    from reclm_jax.models.tokenizer import load_tokenizer
    from reclm_jax.rl.token_rewards import decode_response, token_rewards

    cfg = _cfg(world, tmp_path)
    tok = load_tokenizer(world[0])
    data = RLData(cfg, tok)
    scorer = data.scorer()
    assert scorer.selection == "last"
    sample = data.source.take(0, [0])[0]
    titles = [data.ctx.title(i) for i in data.ctx.items[:2]]
    text = f"1. {titles[0]}\n2. {titles[1]}\n3. Not A Real Film (1901)\n"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    (got,) = scorer([sample], [text], [ids])
    assert got.shape == (len(ids),) and got.dtype == np.float32
    (reward,) = scorer.model.score([(sample["task"], sample["input_field_data"], text)])
    want = token_rewards(decode_response(tok, ids), reward.item_rewards, reward.list_reward, length=len(ids))
    np.testing.assert_array_equal(got, want)
    assert got[-1] == pytest.approx(reward.list_reward)  # on the EOS
    assert reward.item_rewards[2] == -1.0 and np.count_nonzero(got[:-1]) == 3  # one reward per line end


def test_ppo_on_rl_tasks_trains_validates_and_keeps_the_best(world, tmp_path):
    trainer = RLTrainer(_cfg(world, tmp_path, "train.max_iterations=2", "train.val_every=2",
                             "train.val_before=true"), progress=False)
    summary = trainer.run()
    assert summary["iterations"] == 2
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0, 2]  # before training, then at iteration 2
    assert {"RLSeqRec/reward_last", "RL-PersonalControlRec/reward_last"} <= set(val[0])
    for r in val:  # the task metrics of SFT's validation, per task, with sane values
        for task in ("RLSeqRec", "RL-PersonalControlRec"):
            assert r[f"{task}/Count"] == 2
            assert 0.0 <= r[f"{task}/NDCG"] <= r[f"{task}/Recall"] <= 1.0
            assert 0.0 <= r[f"{task}/NonExistRate"] <= 3 and 0.0 <= r[f"{task}/RepeatRate"] <= 3
            assert 0.0 <= r[f"{task}/CorrectCount"] <= 1.0 and np.isfinite(r[f"{task}/RewardSum"])
        assert "RL-PersonalControlRec/SRTargetCategoryRate" in r and "RLSeqRec/SRTargetCategoryRate" not in r
        assert r["mean_NDCG"] == pytest.approx(np.mean([r["RLSeqRec/NDCG"], r["RL-PersonalControlRec/NDCG"]]))
    assert all(np.isfinite(r["reward"]) and np.isfinite(r["loss"]) for r in train)
    assert {"reward/RLSeqRec", "reward/RL+PersonalControlRec"} <= set(train[0])  # per-task train rewards
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["after"]["selection"] == "reward_last"
    assert {"results", "ratios", "mean_NDCG", "mean_reward"} <= set(metrics["before"]) == set(metrics["after"])
    assert metrics["after"]["results"]["RLSeqRec"]["NDCG"] == pytest.approx(val[-1]["RLSeqRec/NDCG"])
    assert metrics["before"]["mean_reward"] == pytest.approx(val[0]["mean_reward"])
    assert (tmp_path / "best_adapter" / "lora_adapter.safetensors").is_file()


def test_rendered_trajectories_are_the_canonical_lists(world, tmp_path):
    from reclm_jax.rl.data import prompt_ids

    trainer = RLTrainer(_cfg(world, tmp_path), progress=False)
    tok, eos = trainer.tokenizer, trainer.tokenizer.eos_token_id
    want = tok("1. Heat (1995)\n 2. Fargo (1996)\n" + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert trainer.rollout.render("1. Heat (1995)\n\n2.  Fargo (1996)  \n") == want
    assert trainer.rollout.render("no list here") == tok("1. no list here\n" + tok.eos_token,
                                                           add_special_tokens=False)["input_ids"]
    assert trainer.rollout.render("") == [eos]
    samples = trainer.source.take(0, [0, 1, 2, 3])
    traj = trainer.rollout.collect(trainer.trainable, trainer.frozen, samples,
                                   prompt_ids(samples, tok, trainer.cfg), iteration=1)
    assert all(r[-1] == eos for r in traj.response_ids)
    sampled, _ = trainer.rollout.responses(prompt_ids(samples, tok, trainer.cfg), 1)  # the same draws again
    assert traj.response_ids == [trainer.rollout.render(t) for t in trainer.rollout.decode(sampled)]
    assert traj.texts == trainer.rollout.decode(traj.response_ids)


def test_validation_metrics_are_the_original_metrics_of_each_greedy_response(world, tmp_path):
    """Each sample decoded alone (greedy rows do not depend on their batch), scored by ``eval.metrics.Metrics``
    with its NR-20.1 list reward as RewardSum: the validation's per-task figures. (The random tiny model writes
    no titles, so the list metrics are 0 here; tests/eval scores hand-made lists through the same
    ``generation_metrics``.)"""
    from reclm_jax.eval.metrics import Metrics
    from reclm_jax.eval.parsing import parse_list
    from reclm_jax.rl.data import prompt_ids
    from reclm_jax.rl.rollout import GREEDY

    trainer = RLTrainer(_cfg(world, tmp_path, "train.val_batch_size=4"), progress=False)
    samples = trainer.data.val_samples()
    res = trainer.validate(samples, None, "reference", log=None)
    ctx, tok = trainer.data.ctx, trainer.tokenizer
    want = Metrics(sorted({s["task"] for s in samples}), ctx.index, ctx.raw.category2item)
    for s, ids in zip(samples, prompt_ids(samples, tok, trainer.cfg)):
        (resp,), _ = trainer.rollout.generate([ids], sampling=GREEDY, adapter=None)
        text = tok.decode(resp, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        (reward,) = trainer.scorer.model.score([(s["task"], s["input_field_data"], text)])
        want.add_sample(s["task"], s["input_field_data"], parse_list(text), s["output_text"], reward.list_reward)
    for task, row in want.results().items():
        got = res["results"][task]
        for name, value in row.items():
            assert got[name] == pytest.approx(value, abs=1e-6), (task, name)
    for task, row in want.ratios().items():
        assert res["ratios"][task] == pytest.approx(row)
    assert set(res["results"]) == {"RLSeqRec", "RL-PersonalControlRec"}


CONSTRAINED_TASKS = ["RLSeqRec", "RL+PersonalControlRec", "RL-PersonalControlRec", "RLPersonalCategoryRateMP"]


def _one_sample_per_task(trainer, tasks):
    datums = trainer.source.builder.datums
    return trainer.source.take(0, [next(i for i, d in enumerate(datums) if d.task == t) for t in tasks])


def test_constrained_rollouts_sample_only_lists_that_obey_their_samples(world, tmp_path):
    """``rollout.constrained``: sampled rows (temperature, top-k) of one batch, each under its own sample's rule,
    are lists of distinct catalogue items that obey it (``decoding.check``); the rendered trajectory is the
    sampled tokens themselves (a constrained list is already canonical), so PPO trains on what was sampled."""
    from reclm_jax.decoding import constraints_for_samples
    from reclm_jax.decoding.check import violations
    from reclm_jax.eval.parsing import parse_list
    from reclm_jax.rl.data import prompt_ids

    trainer = RLTrainer(_cfg(world, tmp_path, "rollout.constrained=true", "rollout.greedy=false",
                             "rollout.max_new_tokens=64", f"data.train_tasks=[{','.join(CONSTRAINED_TASKS)}]"),
                        progress=False)
    samples = _one_sample_per_task(trainer, CONSTRAINED_TASKS)
    ids = prompt_ids(samples, trainer.tokenizer, trainer.cfg)
    traj = trainer.rollout.collect(trainer.trainable, trainer.frozen, samples, ids, iteration=1, stats=False)
    assert traj.stopped.all() and [s["task"] for s in traj.samples] == [t for t in CONSTRAINED_TASKS for _ in "ab"]
    rules = constraints_for_samples(traj.samples)
    assert rules[2].category_mode == "only" and rules[4].category_mode == "exclude" and rules[6].c_min > 0
    for text, rule in zip(traj.texts, rules):
        titles = parse_list(text)
        assert titles and not violations(titles, rule, trainer.catalogue, trainer.data.ctx.raw.item2category), text
    sampled, _ = trainer.rollout.responses(ids, 1, constraints_for_samples(samples))  # the same draws again
    assert traj.response_ids == sampled


@pytest.mark.slow
def test_ppo_on_constrained_rollouts_trains_and_validates_constrained(world, tmp_path):
    """One PPO iteration on constrained rollouts (rendered trajectories, greedy and sampled rows), and validation
    under the same constraints before and after it: the metrics of lists that obey their rules."""
    trainer = RLTrainer(_cfg(world, tmp_path, "rollout.constrained=true", "train.val_constrained=true",
                             "rollout.max_new_tokens=64", "train.max_iterations=1", "train.val_before=true"),
                        progress=False)
    assert trainer.run()["iterations"] == 1
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    (train,) = [r for r in rows if r["kind"] == "train"]
    assert train["stopped"] == 1.0 and np.isfinite(train["loss"]) and train["updates"] >= 1
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0]  # the final validation is not logged, it lands in metrics.json
    after = json.loads((tmp_path / "metrics.json").read_text())["after"]["results"]
    for res in (val[0], {f"{t}/{k}": v for t, row in after.items() for k, v in row.items()}):
        for task in ("RLSeqRec", "RL-PersonalControlRec"):
            assert res[f"{task}/NonExistRate"] == res[f"{task}/RepeatRate"] == res[f"{task}/InHistoryRate"] == 0.0
            assert res[f"{task}/CorrectCount"] == 1.0
        assert res["RL-PersonalControlRec/TargetCategoryRate"] == 0.0
