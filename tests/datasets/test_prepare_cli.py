"""Both names of the prepare command run it (``reclm_jax.data.prepare`` is kept for older scripts)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["reclm_jax.datasets.prepare", "reclm_jax.data.prepare"])
def test_prepare_entry_points_parse_their_flags(module):
    r = subprocess.run([sys.executable, "-m", module, "--dataset", "ml-10m"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "invalid choice: 'ml-10m'" in r.stderr and "Traceback" not in r.stderr
