"""Files and folders that appear under their final name only when complete.

A reader (or a resumed run) that finds a name can trust its content: every writer goes through a temporary
sibling that is renamed at the end, so an interrupted run leaves at most a ``*.tmp*`` name behind, never a
half-written file under the real one.

    write_json_atomic(run / "metrics.json", report)
    tmp = temp_dir(out)              # fresh sibling folder, stale leftovers removed
    ...write into tmp...
    replace_dir(tmp, out)            # out now holds exactly what was written to tmp

A run killed between the two renames of ``replace_dir`` leaves the previous content only as ``<out>.old``;
``recover_dir(out)`` renames it back. ``temp_dir`` and ``replace_dir`` call it first, and a reader of a folder that
``replace_dir`` writes calls it before looking for the folder.
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
            # On disk before the rename: otherwise a crash soon after it can leave the final name with an empty
            # or partial file (the rename may reach the disk before the data does).
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    """Makes the renames inside ``directory`` durable, where the OS allows it (not on Windows, nor on every
    filesystem): best effort, never an error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _old(final: Path) -> Path:
    return final.with_name(final.name + ".old")


def recover_dir(final: str | Path) -> bool:
    """Puts back what an interrupted ``replace_dir`` left only under ``<final>.old`` (killed between renaming the
    previous ``final`` away and renaming the new one in): when ``final`` is missing and ``<final>.old`` exists,
    renames it to ``final``. Returns whether it did. Readers call it before looking for ``final``; a ``.old``
    beside an existing ``final`` is a leftover that the next ``replace_dir`` removes."""
    final = Path(final)
    old = _old(final)
    if _exists(final) or not _exists(old):
        return False
    try:
        old.rename(final)
    except OSError:  # another process recovered it (or replaced final) first
        return False
    return True


def temp_dir(final: str | Path, suffix: str = ".tmp", create: bool = True) -> Path:
    """The temporary sibling ``<final><suffix>`` for building ``final``: leftovers of an interrupted run are
    removed (an interrupted ``replace_dir``'s ``final`` is recovered first, see ``recover_dir``); created (with
    parents) unless ``create`` is False (writers such as Orbax that want to make it)."""
    final = Path(final)
    recover_dir(final)
    tmp = final.with_name(final.name + suffix)
    _remove(tmp)
    if create:
        tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Renames the finished folder ``tmp`` to ``final``, replacing whatever ``final`` was (folder or file).

    The old ``final`` is first renamed to ``<final>.old`` and deleted only after the swap, so at every moment
    either the old or the new content is complete under one of the two names (``recover_dir`` puts ``.old``
    back if the process dies in between). Returns ``final``."""
    tmp, final = Path(tmp), Path(final)
    old = _old(final)
    recover_dir(final)  # a previous interrupted swap: its .old is the only copy of final, not a leftover
    _remove(old)
    for attempt in range(3):
        if _exists(final):
            final.rename(old)
        try:
            tmp.rename(final)
            break
        except OSError:
            if not _exists(final):  # a real failure: put the previous content back under its name
                recover_dir(final)
                raise
            if attempt == 2:
                raise
            # A reader's recover_dir renamed .old back between the two renames: swap again.
    _remove(old)
    return final
