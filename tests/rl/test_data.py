"""RL prompts from the static files of ``python -m reclm_jax.data.process --train_stage RL`` (tiny dataset, tiny
teacher, tiny model): written with the run's settings, they hold exactly the samples the dynamic pipeline builds
(per episode, in the same order), so a run trains from them and sees the same first batch."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from reclm_jax.config import load_config
from reclm_jax.data.process import main as process_main
from reclm_jax.errors import UserError
from reclm_jax.models.tokenizer import load_tokenizer
from reclm_jax.rl.config import RLConfig
from reclm_jax.rl.data import RLData, StaticSource, TaskSource, episode_order
from reclm_jax.rl.trainer import RLTrainer

CONFIG = str(Path(__file__).parents[2] / "configs" / "rl_tiny.yaml")
TRAIN, VAL = "RLSeqRec,RL+PersonalControlRec", "RLSeqRec,RL-PersonalControlRec"


def _cfg(world, out, *extra) -> RLConfig:
    model, data, teacher = world
    return load_config(RLConfig, CONFIG, [
        f"model.path={model}", f"output_dir={out}", f"data_path={data}", f"teacher.checkpoint={teacher}",
        "data.source=tasks", "reward.kind=nr20", "data.item_index=title", "data.topk=3", "data.chat_template=hf",
        f"data.train_tasks=[{TRAIN}]", f"data.val_tasks=[{VAL}]", "data.val_num_per_task=2", "rollout.prompts=4",
        "rollout.max_prompt_length=256", "rollout.prompt_buckets=[256]", "rollout.trajectory=rendered",
        "ppo.mini_batch_size=4", "ppo.epochs=1", *extra])


@pytest.fixture(scope="module")
def world(tiny_llama_dir, tiny_dataset_dir, tiny_teacher_dir):
    return tiny_llama_dir, tiny_dataset_dir, tiny_teacher_dir


@pytest.fixture(scope="module")
def static_files(world, tmp_path_factory):
    """The RL pickles written with the settings of ``_cfg`` (seed 0, 2 episodes)."""
    model, data, teacher = world
    out = tmp_path_factory.mktemp("rl_static")
    assert process_main(["--data_path", str(data), "--output_dir", str(out), "--teacher_checkpoint", str(teacher),
                         "--train_stage", "RL", "--num_episodes", "2", "--idx", "--item_index", "title",
                         "--topk", "3", "--chat_template", "hf", "--tokenizer", str(model), "--max_token_length",
                         "256", "--RL_train_tasks", TRAIN, "--RL_val_tasks", VAL, "--val_num_per_task", "2"]) == 0
    return out / "RL_dataset_train.pickle", out / "RL_dataset_val.pickle"


def test_static_files_hold_the_dynamic_samples(world, static_files, tmp_path):
    train, val = static_files
    tok = load_tokenizer(world[0])
    dynamic = RLData(_cfg(world, tmp_path), tok)
    static = RLData(_cfg(world, tmp_path, f"data.train_data_file={train}", f"data.val_data_file={val}"), tok)
    assert isinstance(dynamic.source, TaskSource) and isinstance(static.source, StaticSource)
    assert len(static.source) == len(dynamic.source) == 2 * 40
    assert static.val_samples() == dynamic.val_samples() and len(static.val_samples()) == 2 * 2
    for episode in (0, 1):
        first = episode_order(len(static.source), 0, episode)[:4]  # an iteration's prompts
        assert static.source.take(episode, first) == dynamic.source.take(episode, first)
    assert pickle.load(open(train, "rb"))[0] != pickle.load(open(train, "rb"))[1]  # episodes differ


def test_a_run_from_static_files_trains_like_the_dynamic_one(world, static_files, tmp_path):
    train, val = static_files
    runs = {}
    for name, extra in (("dynamic", []), ("static", [f"data.train_data_file={train}", f"data.val_data_file={val}"])):
        out = tmp_path / name
        trainer = RLTrainer(_cfg(world, out, "train.max_iterations=1", "train.val_before=false", *extra),
                            progress=False)
        summary = trainer.run()
        assert summary["iterations"] == 1 and "after" in summary
        rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        runs[name] = [r for r in rows if r["kind"] == "train"][0]
    for key in ("reward", "kl", "loss", "value_loss"):  # the same prompts, weights and seeds: the same iteration
        assert np.isfinite(runs["static"][key])
        assert runs["static"][key] == pytest.approx(runs["dynamic"][key], abs=1e-6), key


def test_static_file_errors_name_the_file(world, tmp_path):
    tok = load_tokenizer(world[0])
    with pytest.raises(UserError, match="data.train_data_file: dataset file not found: .*nope.pickle"):
        RLData(_cfg(world, tmp_path, f"data.train_data_file={tmp_path / 'nope.pickle'}"), tok)
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(pickle.dumps({"not": "epochs"}))
    with pytest.raises(UserError, match="data.train_data_file: .*expected a list of epochs"):
        RLData(_cfg(world, tmp_path, f"data.train_data_file={bad}"), tok)
