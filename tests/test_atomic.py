"""Atomic writes: the final name holds either the old or the complete new content, never a partial one."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest

from reclm_jax.atomic import (open_atomic, recover_dir, replace_dir, temp_dir, write_json_atomic,
                              write_pickle_atomic, write_text_atomic)


def test_json_and_pickle_land_complete_without_leftovers(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": [1, 2]})
    write_pickle_atomic(tmp_path / "b.pickle", [{"k": "v"}])
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    assert pickle.loads((tmp_path / "b.pickle").read_bytes()) == [{"k": "v"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.pickle"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with open_atomic(path, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("old_is_file", [False, True])
def test_replace_dir_swaps_in_the_new_folder(tmp_path, old_is_file):
    final = _file_or_folder(tmp_path / "out", old_is_file, "stale.txt", "old")
    _folder(tmp_path / "out.tmp", "left-over", "from an interrupted run")
    tmp = temp_dir(final)  # removes the leftover
    assert list(tmp.iterdir()) == []
    (tmp / "new.txt").write_text("new")
    assert replace_dir(tmp, final) == final
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .tmp, no .old


def test_temp_dir_without_create_leaves_it_to_the_writer(tmp_path):
    (tmp_path / "best.tmp").mkdir()
    tmp = temp_dir(tmp_path / "best", create=False)
    assert tmp == tmp_path / "best.tmp" and not tmp.exists()


def test_data_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    calls = []
    real_fsync = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        calls.append((stat.S_ISDIR(st.st_mode), st.st_size, path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_text_atomic(path, "x" * 1000)
    # First the temp file, with all its (flushed) data, while the final name does not exist yet.
    assert calls[0] == (False, 1000, False)
    if os.name == "posix":  # then the folder, so that the rename itself is durable
        assert len(calls) == 2 and calls[1][0] and calls[1][2]
    assert path.read_text() == "x" * 1000


def test_a_folder_that_cannot_be_fsynced_is_not_an_error(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def no_dir_fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_dir_fsync)
    write_json_atomic(tmp_path / "a.json", [1])
    assert json.loads((tmp_path / "a.json").read_text()) == [1]


def _folder(path: Path, name: str, text: str) -> Path:
    path.mkdir()
    (path / name).write_text(text)
    return path


def _file_or_folder(path: Path, is_file: bool, name: str, text: str) -> Path:
    """A plain file holding ``text``, or a folder holding file ``name`` with ``text``."""
    if is_file:
        path.write_text(text)
        return path
    return _folder(path, name, text)


class Killed(BaseException):
    """The process dying at a given point (not an exception the code could handle)."""


def _kill_when_renaming_to(monkeypatch, target: Path) -> None:
    real_rename = Path.rename

    def rename(self, to):
        if Path(to) == target:
            raise Killed
        return real_rename(self, to)

    monkeypatch.setattr(Path, "rename", rename)


def test_a_swap_killed_between_its_renames_is_recovered(tmp_path, monkeypatch):
    final = _folder(tmp_path / "best", "params", "old")
    tmp = _folder(tmp_path / "best.tmp", "params", "new")
    with monkeypatch.context() as m:
        _kill_when_renaming_to(m, final)  # final -> best.old done, best.tmp -> final never happens
        with pytest.raises(Killed):
            replace_dir(tmp, final)
    assert not final.exists() and (tmp_path / "best.old" / "params").read_text() == "old"
    assert recover_dir(final) is True
    assert (final / "params").read_text() == "old" and not (tmp_path / "best.old").exists()
    assert recover_dir(final) is False  # nothing to do any more


def test_recover_dir_leaves_a_leftover_old_beside_an_existing_final(tmp_path):
    final = _folder(tmp_path / "best", "params", "new")
    _folder(tmp_path / "best.old", "params", "old")  # killed while deleting .old after a finished swap
    assert recover_dir(final) is False
    assert (final / "params").read_text() == "new"
    assert recover_dir(tmp_path / "never-written") is False


@pytest.mark.parametrize("old_is_file", [False, True])
def test_the_next_writer_recovers_before_it_starts(tmp_path, old_is_file):
    # Only best.old is left (an interrupted swap). The next run's temp_dir must not lose it: should that run
    # die before its own replace_dir, the previous content is still under the final name.
    old = _file_or_folder(tmp_path / "best.old", old_is_file, "params", "old")
    tmp = temp_dir(tmp_path / "best")
    assert (tmp_path / "best").exists() and not old.exists()
    (tmp / "params").write_text("new")
    replace_dir(tmp, tmp_path / "best")
    assert (tmp_path / "best" / "params").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_failed_replace_dir_keeps_the_content_of_an_interrupted_swap(tmp_path):
    final = tmp_path / "best"
    _folder(tmp_path / "best.old", "params", "old")  # the only copy left by an interrupted swap
    with pytest.raises(OSError):
        replace_dir(tmp_path / "best.tmp", final)  # the new folder is missing: the swap fails
    assert (final / "params").read_text() == "old" and not (tmp_path / "best.old").exists()


def test_a_failed_swap_puts_the_previous_content_back(tmp_path):
    final = _folder(tmp_path / "best", "params", "old")
    with pytest.raises(OSError):
        replace_dir(tmp_path / "missing.tmp", final)
    assert (final / "params").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_replace_dir_survives_a_reader_recovering_between_its_renames(tmp_path, monkeypatch):
    final = _folder(tmp_path / "best", "params", "old")
    tmp = _folder(tmp_path / "best.tmp", "params", "new")
    old = tmp_path / "best.old"
    real_rename = Path.rename
    raced = []

    def rename(self, to):
        result = real_rename(self, to)
        if Path(to) == old and not raced:  # a reader sees no best/ right after it was moved away
            raced.append(recover_dir(final))
        return result

    monkeypatch.setattr(Path, "rename", rename)
    replace_dir(tmp, final)
    assert raced == [True]
    assert (final / "params").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
