"""Atomic writes: the final name holds either the old or the complete new content, never a partial one."""

from __future__ import annotations

import json
import pickle

import pytest

from reclm_jax.atomic import open_atomic, replace_dir, temp_dir, write_json_atomic, write_pickle_atomic


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
    final = tmp_path / "out"
    if old_is_file:
        final.write_text("a file in the way")
    else:
        final.mkdir()
        (final / "stale.txt").write_text("old")
    (tmp_path / "out.tmp").mkdir()
    (tmp_path / "out.tmp" / "left-over").write_text("from an interrupted run")
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
