"""The task layer's teacher protocol: the in-process Teacher and the HTTP client implement it identically."""

from __future__ import annotations

import inspect

import pytest

from reclm_jax.data.teacher_protocol import TeacherLike
from reclm_jax.teacher.client import TeacherClient
from reclm_jax.teacher.teacher import Teacher


def _params(fn):
    return [(p.name, p.default) for p in list(inspect.signature(fn).parameters.values())[1:]]


@pytest.mark.parametrize("method", ["topk", "ranking"])
def test_teacher_and_client_share_the_protocol_signatures(method):
    want = _params(getattr(TeacherLike, method))
    assert _params(getattr(Teacher, method)) == want
    assert _params(getattr(TeacherClient, method)) == want


def test_both_are_teacher_like(teacher):
    assert isinstance(teacher, TeacherLike) and isinstance(TeacherClient(port=1), TeacherLike)
    assert not isinstance(object(), TeacherLike)
