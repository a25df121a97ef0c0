"""The set-up scripts reject bad arguments before touching the virtual environment."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extra", ["--small", "test]", "a b"])
def test_setup_venv_rejects_what_is_not_an_extra(extra, tmp_path):
    # quickstart.sh once sourced setup_venv.sh bare, which handed it "--small" as the extra to install.
    res = subprocess.run(["bash", str(REPO / "scripts" / "setup_venv.sh"), extra], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": "python3"})
    assert res.returncode == 2 and "is not a pyproject extra" in res.stderr


def test_quickstart_rejects_unknown_arguments():
    res = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"), "--bogus"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "--bogus" in res.stderr
