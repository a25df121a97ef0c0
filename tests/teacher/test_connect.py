"""connect_teacher: in-process teacher, HTTP client or None; contradictory settings are user errors."""

from __future__ import annotations

import pytest

from reclm_jax.datasets.raw import load_raw
from reclm_jax.errors import UserError
from reclm_jax.teacher.client import TeacherClient
from reclm_jax.teacher.connect import connect_teacher, split_hosts
from reclm_jax.teacher.teacher import Teacher


def test_nothing_configured_is_no_teacher():
    assert connect_teacher() is None and connect_teacher(hosts="") is None


def test_port_gives_a_client_over_every_host():
    c = connect_teacher(port=9000, hosts=" 10.0.0.2, 10.0.0.3:9100 ,")
    assert isinstance(c, TeacherClient) and c.urls == ["http://10.0.0.2:9000", "http://10.0.0.3:9100"]
    assert connect_teacher(port=9000, hosts=["h1"]).urls == ["http://h1:9000"]
    assert split_hosts(["a ", "", "b"]) == ["a", "b"]


def test_checkpoint_reuses_a_loaded_dataset(tiny_teacher_dir, tiny_dataset_dir, teacher, monkeypatch):
    raw = load_raw(tiny_dataset_dir, item_index="title")  # any item index: only items/categories/users count

    def no_second_read(*a, **k):
        raise AssertionError("the dataset was read again")

    monkeypatch.setattr("reclm_jax.teacher.teacher.load_raw", no_second_read)
    t = connect_teacher(checkpoint=str(tiny_teacher_dir), dataset=raw)
    assert isinstance(t, Teacher) and t.items == teacher.items and t.users == teacher.users
    assert t.topk([["1", "2"]], 5) == teacher.topk([["1", "2"]], 5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(checkpoint="run", port=12621), "give --teacher_checkpoint .* or --teacher_port .*, not both"),
    (dict(port=70000), "--teacher_port must be a TCP port"),
    (dict(port=-1), "--teacher_port must be a TCP port"),
    (dict(port=12621, hosts=" , "), "--backup_ip names no host"),
])
def test_bad_combinations_name_the_callers_keys(kwargs, message):
    with pytest.raises(UserError, match=message):
        connect_teacher(**kwargs, keys=("--teacher_checkpoint", "--teacher_port", "--backup_ip"))
