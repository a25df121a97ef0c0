"""``python -m reclm_jax.sft.report RUN``: the before/after table of an SFT run's ``metrics.json`` (the shared
``reclm_jax.eval.compare`` with one run; ``python -m reclm_jax.eval.compare`` also sets runs side by side)."""

from __future__ import annotations

from reclm_jax.eval.compare import main as compare_main


def main(argv=None) -> int:
    return compare_main(argv, prog="python -m reclm_jax.sft.report")


if __name__ == "__main__":
    from reclm_jax.cli import run_main

    run_main(main)
