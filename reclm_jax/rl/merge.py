"""``python -m reclm_jax.rl.merge --run DIR [--which best|final] [--out DIR] [--format merged|peft]``.

Merges an RL run's actor (its LoRA factors and its own ``lm_head`` copy; never the critic or the value head)
into the run's backbone, the merged SFT folder read from the run's ``config.yaml``, and writes the HF folder that
vLLM and transformers serve (the original's ``--train_stage RL_Merge``). Default output: ``<run>/merged``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reclm_jax.cli import run_main
from reclm_jax.config import CONFIG_FILENAME, load_config
from reclm_jax.errors import UserError
from reclm_jax.rl.config import RLConfig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.rl.merge", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the RL run's output_dir")
    p.add_argument("--which", choices=("best", "final"), default="best",
                   help="the best validation actor (falls back to the final one when there was no validation)")
    p.add_argument("--out", default=None)
    p.add_argument("--format", choices=("merged", "peft"), default="merged")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not (run / CONFIG_FILENAME).is_file():
        raise UserError(f"--run {run}: no {CONFIG_FILENAME}; is it an RL output_dir?")
    cfg = load_config(RLConfig, run / CONFIG_FILENAME)
    adapter = run / ("best_adapter" if args.which == "best" else "adapter")
    if args.which == "best" and not adapter.is_dir():
        adapter = run / "adapter"
    if not adapter.is_dir():
        raise UserError(f"{run}: no trained actor yet (looked for best_adapter/ and adapter/)")
    from reclm_jax.models.hf_export import export_adapter
    from reclm_jax.train.backbone import resolve_model_path

    out = Path(args.out or run / ("merged" if args.format == "merged" else "peft"))
    export_adapter(resolve_model_path(cfg.model.path), adapter, out, fmt=args.format, dtype=args.dtype,
                   overwrite=args.overwrite)
    print(f"wrote {args.format} export of the actor to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
