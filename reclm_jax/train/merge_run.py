"""The ``python -m reclm_jax.<stage>.merge --run DIR`` command every trainer shares.

A run folder holds its ``config.yaml`` (whose ``model.path`` names the base the adapters were trained on),
``best_adapter/`` (the best validation adapter) and ``adapter/`` (the latest). The command writes that adapter
merged into the base as an HF folder (what vLLM and transformers serve) or as a PEFT adapter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reclm_jax.config import CONFIG_FILENAME, load_config
from reclm_jax.errors import UserError


def merge_run_main(argv, *, stage: str, config_cls: type, what: str, doc: str) -> int:
    """Parses ``argv`` for stage ``stage`` ("sft", "rl"), whose run config is ``config_cls``; ``what`` names the
    exported adapter in messages ("adapter", "actor"); ``doc``: the stage command's docstring (help text)."""
    p = argparse.ArgumentParser(prog=f"python -m reclm_jax.{stage}.merge", description=doc.splitlines()[0])
    p.add_argument("--run", required=True, help=f"the {stage.upper()} run's output_dir")
    p.add_argument("--which", choices=("best", "final"), default="best",
                   help=f"the best validation {what} (falls back to the final one when there was no validation)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/merged or <run>/peft)")
    p.add_argument("--format", choices=("merged", "peft"), default="merged")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not (run / CONFIG_FILENAME).is_file():
        raise UserError(f"--run {run}: no {CONFIG_FILENAME}; is it an {stage.upper()} output_dir?")
    cfg = load_config(config_cls, run / CONFIG_FILENAME)
    adapter = run / ("best_adapter" if args.which == "best" else "adapter")
    if args.which == "best" and not adapter.is_dir():
        adapter = run / "adapter"
    if not adapter.is_dir():
        raise UserError(f"{run}: no trained {what} yet (looked for best_adapter/ and adapter/)")
    from reclm_jax.models.hf_export import export_adapter
    from reclm_jax.train.backbone import resolve_model_path

    out = Path(args.out or run / ("merged" if args.format == "merged" else "peft"))
    export_adapter(resolve_model_path(cfg.model.path), adapter, out, fmt=args.format, dtype=args.dtype,
                   overwrite=args.overwrite)
    print(f"wrote {args.format} export of the {what} to {out}", file=sys.stderr)
    return 0
