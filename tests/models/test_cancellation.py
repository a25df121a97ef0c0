"""Rows of a running Sampler call stopped from the host (``models/cancellation.py``)."""

import numpy as np
import pytest

from reclm_jax.models import cancellation
from reclm_jax.models.cancellation import POLL_STEPS
from reclm_jax.models.sampler import Sampler

LIMIT = 5 * POLL_STEPS  # rows run to this limit unless stopped (the tiny model has no stop ids)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(9)
    return [rng.integers(4, 500, n).tolist() for n in (5, 12, 8)]


class Poll:
    """A host check that flags ``rows`` from its ``start``-th question on, counting the questions."""

    def __init__(self, rows, start=1, fail=False):
        self.rows, self.start, self.fail, self.asked = set(rows), start, fail, 0

    def __call__(self):
        self.asked += 1
        if self.fail:
            raise RuntimeError("the check itself failed")
        return [self.asked >= self.start and i in self.rows for i in range(3)]


def test_flagged_rows_stop_at_the_next_poll_and_their_neighbours_are_unchanged(model, prompts):
    sampler = Sampler(model, pad_id=3)
    full = sampler(prompts, max_new_tokens=LIMIT)
    assert (full.lengths == LIMIT).all() and sampler.traces == 1
    poll = Poll(rows=[1], start=2)  # row 1 is flagged at the second question: step 2 * POLL_STEPS
    res = sampler(prompts, max_new_tokens=LIMIT, cancelled=poll)
    assert res.lengths.tolist() == [LIMIT, 2 * POLL_STEPS, LIMIT] and not res.stopped.any()
    assert res.tokens.tolist()[1][:2 * POLL_STEPS] == full.tokens.tolist()[1][:2 * POLL_STEPS]
    assert (res.tokens[1, 2 * POLL_STEPS:] == 3).all()  # the pad id after the row's end
    for i in (0, 2):
        assert res.token_lists()[i] == full.token_lists()[i]
        np.testing.assert_array_equal(res.logprobs[i], full.logprobs[i])
    # asked at steps 8, 16, ... while a row was live: 4 questions for 40 steps (step 0 comes from the prefill)
    assert poll.asked == (LIMIT - 1) // POLL_STEPS
    assert sampler.traces == 2  # a program of its own, reused by every call with a check
    again = sampler(prompts, max_new_tokens=LIMIT - 3, cancelled=Poll(rows=[]))
    assert sampler.traces == 2 and again.token_lists() == [t[:LIMIT - 3] for t in full.token_lists()]
    assert cancellation._POLLS == {}  # each call's check is forgotten when it returns


def test_a_call_whose_rows_are_all_flagged_ends_there(model, prompts):
    sampler = Sampler(model, pad_id=3)
    poll = Poll(rows=[0, 1, 2])
    res = sampler(prompts, max_new_tokens=LIMIT, cancelled=poll)
    assert res.lengths.tolist() == [POLL_STEPS] * 3 and poll.asked == 1


def test_a_failing_check_stops_nothing(model, prompts):
    sampler = Sampler(model, pad_id=3)
    full = sampler(prompts, max_new_tokens=LIMIT)
    poll = Poll(rows=[0, 1, 2], fail=True)
    res = sampler(prompts, max_new_tokens=LIMIT, cancelled=poll)
    assert poll.asked >= 1 and res.token_lists() == full.token_lists()
