"""Export a trained adapter: ``python -m reclm_jax.export --base DIR --adapter CKPT --out DIR [--format merged|peft]``.

``merged`` writes a standalone HF Llama folder (sharded safetensors + index, config.json,
generation_config.json, tokenizer files) that transformers and vLLM load; ``peft`` writes
``adapter_config.json`` + ``adapter_model.safetensors`` for ``peft.PeftModel.from_pretrained(base, DIR)``.
``--adapter`` is a directory written by ``reclm_jax.models.adapter_io.save_adapter``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reclm_jax.cli import run_main
from reclm_jax.errors import UserError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.export", description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="HF folder of the base model the adapter was trained on")
    p.add_argument("--adapter", required=True, help="adapter checkpoint directory (save_adapter)")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--format", choices=("merged", "peft"), default="merged")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="merged weights dtype (default: the base checkpoint's)")
    p.add_argument("--max-shard-size", default="2GB", help="size cap per safetensors file, e.g. 2GB, 500MB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    base, adapter, out = Path(args.base), Path(args.adapter), Path(args.out)
    if not base.is_dir():
        raise UserError(f"--base {base}: no such directory")
    if not adapter.is_dir():
        raise UserError(f"--adapter {adapter}: no such directory")
    from reclm_jax.models.hf_export import export_adapter

    export_adapter(base, adapter, out, fmt=args.format, dtype=args.dtype, max_shard_size=args.max_shard_size,
                   overwrite=args.overwrite)
    print(f"wrote {args.format} export to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
