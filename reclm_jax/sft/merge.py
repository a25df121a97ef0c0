"""``python -m reclm_jax.sft.merge --run DIR [--which best|final] [--out DIR] [--format merged|peft]``.

Merges an SFT run's adapter into its base model and writes the HF folder that vLLM and transformers serve
(the original's ``--train_stage SFT_Merge``). The base model is read from the run's saved ``config.yaml``;
the default output is ``<run>/merged`` (or ``<run>/peft``).
"""

from __future__ import annotations

from reclm_jax.cli import run_main
from reclm_jax.sft.config import SFTConfig
from reclm_jax.train.merge_run import merge_run_main


def main(argv=None) -> int:
    return merge_run_main(argv, stage="sft", config_cls=SFTConfig, what="adapter", doc=__doc__)


if __name__ == "__main__":
    run_main(main)
