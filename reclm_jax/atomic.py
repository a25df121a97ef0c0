"""Files and folders that appear under their final name only when complete.

A reader (or a resumed run) that finds a name can trust its content: every writer goes through a temporary
sibling that is renamed at the end, so an interrupted run leaves at most a ``*.tmp*`` name behind, never a
half-written file under the real one.

    write_json_atomic(run / "metrics.json", report)
    tmp = temp_dir(out)              # fresh sibling folder, stale leftovers removed
    ...write into tmp...
    replace_dir(tmp, out)            # out now holds exactly what was written to tmp
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """``open(path, mode)`` that writes ``<path>.tmp<pid>`` and renames it over ``path`` when the block ends
    without an exception (the temp file is removed otherwise). The pid keeps concurrent writers apart."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with open_atomic(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Writes ``obj`` as indented JSON to ``path`` atomically; returns ``path``."""
    return write_text_atomic(path, json.dumps(obj, indent=indent))


def write_pickle_atomic(path: str | Path, obj: Any) -> Path:
    """Pickles ``obj`` (highest protocol) to ``path`` atomically; returns ``path``."""
    with open_atomic(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return Path(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def temp_dir(final: str | Path, suffix: str = ".tmp", create: bool = True) -> Path:
    """The temporary sibling ``<final><suffix>`` for building ``final``: leftovers of an interrupted run are
    removed; created (with parents) unless ``create`` is False (writers such as Orbax that want to make it)."""
    final = Path(final)
    tmp = final.with_name(final.name + suffix)
    _remove(tmp)
    if create:
        tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Renames the finished folder ``tmp`` to ``final``, replacing whatever ``final`` was (folder or file).

    The old ``final`` is first renamed to ``<final>.old`` and deleted only after the swap, so at every moment
    either the old or the new content is complete under one of the two names. Returns ``final``."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + ".old")
    _remove(old)
    if final.exists() or final.is_symlink():
        final.rename(old)
    tmp.rename(final)
    _remove(old)
    return final
