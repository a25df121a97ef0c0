"""Run by test_trainer.py: ``python paused_sft.py STEP CONFIG key=value ...`` trains like ``python -m reclm_jax.sft``
but sleeps after optimiser step STEP (its checkpoint and log line are written by then), so the test can kill the
process at a known point. The pause is a ``Hooks.after_step`` callable: the library reads no test-only setting."""

import sys

from reclm_jax.config import load_config
from reclm_jax.sft.config import SFTConfig
from reclm_jax.sft.trainer import SFTTrainer
from reclm_jax.train.cadence import Hooks, pause_at

if __name__ == "__main__":
    step, config, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    SFTTrainer(load_config(SFTConfig, config, overrides), progress=False,
               hooks=Hooks(after_step=[pause_at(step)])).run()
