"""Reading JSON-lines files that users hand to a command (samples, outputs, reward inputs), with errors that
name ``FILE:LINE``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from reclm_jax.errors import UserError


def iter_json_lines(path: str | Path, missing: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line of ``path``. ``UserError(missing)`` when there is no such
    file; ``UserError`` naming ``FILE:LINE`` for a line that is not JSON or not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise UserError(missing)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{n}: expected a JSON object")
            yield n, obj
