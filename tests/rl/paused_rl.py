"""Run by test_cli.py: ``python paused_rl.py ITERATION CONFIG key=value ...`` trains like ``python -m reclm_jax.rl``
but sleeps after iteration ITERATION (its checkpoint and log line are written by then), so the test can kill the
process at a known point. The pause is a ``Hooks.after_step`` callable: the library reads no test-only setting."""

import sys

from reclm_jax.config import load_config
from reclm_jax.rl.config import RLConfig
from reclm_jax.rl.trainer import RLTrainer
from reclm_jax.train.cadence import Hooks, pause_at

if __name__ == "__main__":
    iteration, config, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    RLTrainer(load_config(RLConfig, config, overrides), progress=False,
              hooks=Hooks(after_step=[pause_at(iteration)])).run()
