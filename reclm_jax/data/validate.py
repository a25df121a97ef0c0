"""``python -m reclm_jax.data.validate``: kept as an entry point (older scripts use it); the command lives in
``reclm_jax.datasets.validate``."""

from reclm_jax.cli import run_main
from reclm_jax.datasets.validate import main

if __name__ == "__main__":
    run_main(main)
