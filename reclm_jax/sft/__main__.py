"""``python -m reclm_jax.sft --config configs/sft_X.yaml key=value ...``: LoRA SFT (see ``trainer.py``)."""

from __future__ import annotations

from reclm_jax.cli import run_main
from reclm_jax.config import load_config, parse_stage_args
from reclm_jax.train.distributed import initialize
from reclm_jax.sft.config import SFTConfig
from reclm_jax.eval.compare import before_after_table
from reclm_jax.xla_flags import apply_xla_flags


def main() -> int:
    path, overrides = parse_stage_args(prog="python -m reclm_jax.sft")
    cfg = load_config(SFTConfig, path, overrides)
    apply_xla_flags(cfg.mesh.xla_flags)  # the mesh preset's flags: before JAX starts its backend
    initialize(cfg.distributed)  # before anything touches a device: the other hosts' devices join the mesh
    import jax

    from reclm_jax.sft.trainer import SFTTrainer  # imports jax: after the config is known to be valid

    summary = SFTTrainer(cfg).run()
    if jax.process_index():  # the primary process reports; the others have written nothing
        return 0
    print(f"\nSFT finished: {summary['steps']} steps, adapter in {cfg.output_dir}/adapter")
    if "after" in summary:
        print(before_after_table(summary.get("before"), summary["after"]))
    return 0


if __name__ == "__main__":
    run_main(main)
