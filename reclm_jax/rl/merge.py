"""``python -m reclm_jax.rl.merge --run DIR [--which best|final] [--out DIR] [--format merged|peft]``.

Merges an RL run's actor (its LoRA factors and its own ``lm_head`` copy; never the critic or the value head)
into the run's backbone, the merged SFT folder read from the run's ``config.yaml``, and writes the HF folder that
vLLM and transformers serve (the original's ``--train_stage RL_Merge``). Default output: ``<run>/merged``.
"""

from __future__ import annotations

from reclm_jax.cli import run_main
from reclm_jax.rl.config import RLConfig
from reclm_jax.train.merge_run import merge_run_main


def main(argv=None) -> int:
    return merge_run_main(argv, stage="rl", config_cls=RLConfig, what="actor", doc=__doc__)


if __name__ == "__main__":
    run_main(main)
