"""``python -m reclm_jax.data.process`` end to end on the tiny dataset."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from reclm_jax.data.process import main
from reclm_jax.errors import UserError


def test_sft_and_rl_pickles(tiny_dataset_dir, tiny_teacher_dir, tiny_tokenizer_dir, share_gpt_file, tmp_path):
    out = tmp_path / "out"
    common = ["--data_path", str(tiny_dataset_dir), "--output_dir", str(out), "--teacher_checkpoint",
              str(tiny_teacher_dir), "--idx", "--val_num_per_task", "4"]
    assert main(common + ["--train_stage", "SFT", "--epoch", "2", "--llama2_chat_template",
                          "--share_chat_gpt_ratio", "0.5", "--share_chat_gpt_path", str(share_gpt_file)]) == 0
    train = pickle.load(open(out / "SFT_dataset_train.pickle", "rb"))
    val = pickle.load(open(out / "SFT_dataset_val.pickle", "rb"))
    n_rec = 40 + 40 + 60 + 40  # SeqRec, PersonalControlRec, ControlRec_re (60 items), PersonalCategoryRate
    assert [len(e) for e in train] == [n_rec + n_rec // 2] * 2 and train[0] != train[1]
    assert set(train[0][0]) == {"input_text", "output_text", "task", "input_field_data"}
    assert train[0][-1]["task"] == "ShareChatGPT" and train[0][0]["output_text"].endswith("\n</s>")
    assert len(val) == 1 and len(val[0]) == 4 * 4
    assert not list(out.glob("*.tmp*"))
    assert main(common + ["--train_stage", "RL", "--num_episodes", "1", "--chat_template", "hf", "--tokenizer",
                          str(tiny_tokenizer_dir), "--item_index", "title_t"]) == 0
    rl = pickle.load(open(out / "RL_dataset_train.pickle", "rb"))
    assert len(rl) == 1 and len(rl[0]) == 6 * 40 and rl[0][0]["input_text"].startswith("<|im_start|>system")
    assert len(pickle.load(open(out / "RL_dataset_val.pickle", "rb"))[0]) == 7 * 4


def test_user_errors(tiny_dataset_dir, tiny_teacher_dir, tmp_path):
    with pytest.raises(UserError, match="ShareChatGPT needs a ShareGPT file"):
        main(["--data_path", str(tiny_dataset_dir), "--output_dir", str(tmp_path), "--teacher_checkpoint",
              str(tiny_teacher_dir), "--share_chat_gpt_ratio", "0.5", "--epoch", "1"])
    with pytest.raises(UserError, match="give --teacher_checkpoint .* or --teacher_port .*, not both"):
        main(["--data_path", str(tiny_dataset_dir), "--output_dir", str(tmp_path), "--teacher_checkpoint",
              str(tiny_teacher_dir), "--teacher_port", "12621"])
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "reclm_jax.data.process", "--data_path", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: dataset folder not found")
    assert "Traceback" not in r.stderr
