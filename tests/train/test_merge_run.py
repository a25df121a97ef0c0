"""The run-merge command both stages share (``train/merge_run.py``): its user errors name what is missing."""

import pytest

from reclm_jax.config import CONFIG_FILENAME, save_config
from reclm_jax.errors import UserError
from reclm_jax.rl import merge as rl_merge
from reclm_jax.rl.config import RLConfig
from reclm_jax.sft import merge as sft_merge
from reclm_jax.sft.config import SFTConfig


@pytest.mark.parametrize("stage, module, make, what", [
    ("SFT", sft_merge, lambda d: SFTConfig(data_path=str(d), output_dir=str(d)), "adapter"),
    ("RL", rl_merge, lambda d: RLConfig(), "actor")])
def test_missing_config_or_adapter_is_a_user_error(tmp_path, stage, module, make, what):
    with pytest.raises(UserError, match=f"no {CONFIG_FILENAME}; is it an {stage} output_dir"):
        module.main(["--run", str(tmp_path)])
    save_config(make(tmp_path), tmp_path)
    with pytest.raises(UserError, match=f"no trained {what} yet"):
        module.main(["--run", str(tmp_path), "--which", "final"])
