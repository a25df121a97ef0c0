"""``python -m reclm_jax.sft.merge --run DIR [--which best|final] [--out DIR] [--format merged|peft]``.

Merges an SFT run's adapter into its base model and writes the HF folder that vLLM and transformers serve
(the original's ``--train_stage SFT_Merge``). The base model is read from the run's saved ``config.yaml``;
the default output is ``<run>/merged`` (or ``<run>/peft``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reclm_jax.cli import run_main
from reclm_jax.config import CONFIG_FILENAME, load_config
from reclm_jax.errors import UserError
from reclm_jax.sft.config import SFTConfig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.sft.merge", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the SFT run's output_dir")
    p.add_argument("--which", choices=("best", "final"), default="best",
                   help="best validation adapter (falls back to final when there was no validation)")
    p.add_argument("--out", default=None)
    p.add_argument("--format", choices=("merged", "peft"), default="merged")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not (run / CONFIG_FILENAME).is_file():
        raise UserError(f"--run {run}: no {CONFIG_FILENAME}; is it an SFT output_dir?")
    cfg = load_config(SFTConfig, run / CONFIG_FILENAME)
    adapter = run / ("best_adapter" if args.which == "best" else "adapter")
    if args.which == "best" and not adapter.is_dir():
        adapter = run / "adapter"
    if not adapter.is_dir():
        raise UserError(f"{run}: no trained adapter yet (looked for best_adapter/ and adapter/)")
    from reclm_jax.models.hf_export import export_adapter
    from reclm_jax.train.backbone import resolve_model_path

    out = Path(args.out or run / ("merged" if args.format == "merged" else "peft"))
    export_adapter(resolve_model_path(cfg.model.path), adapter, out, fmt=args.format, dtype=args.dtype,
                   overwrite=args.overwrite)
    print(f"wrote {args.format} export to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
