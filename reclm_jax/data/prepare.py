"""``python -m reclm_jax.data.prepare``: kept as an entry point (older scripts use it); the command lives in
``reclm_jax.datasets.prepare``."""

from reclm_jax.cli import run_main
from reclm_jax.datasets.prepare import main

if __name__ == "__main__":
    run_main(main)
