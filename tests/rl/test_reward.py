"""NR-20.1 on hand-made outputs, against values computed by hand from section 10.4 + audit R3.

The catalogue: eight items with known teacher ranks. Item "1" ("Alpha") is the first meta item, i.e. the
original's sentinel for non-existent titles, so the tests can show it no longer leaks.
"""

from __future__ import annotations

import math

import pytest

from reclm_jax.data.item_index import ItemIndex
from reclm_jax.errors import UserError
from reclm_jax.rl.reward import RewardCatalogue, RewardModel, RewardSettings, ideal_dcg, nr20_reward, reward

TITLES = {"1": "Alpha", "2": "Bravo", "3": "Charlie", "4": "Delta", "5": "Echo", "6": "Foxtrot", "7": "Golf",
          "8": "Hotel"}
CATEGORIES = {"Drama": ["1", "2", "3", "8"], "Comedy": ["3", "4", "5"], "Horror": ["6", "7"]}
# The teacher's 0-based global rank of each item (whatever the history).
RANK = {"1": 4, "2": 0, "3": 1, "4": 7, "5": 2, "6": 3, "7": 5, "8": 6}
CATALOGUE = RewardCatalogue.build(ItemIndex(list(TITLES), list(TITLES.values()), "title"), CATEGORIES)


class FakeTeacher:
    """Answers ``ranking`` from RANK and records what it was asked."""

    def __init__(self):
        self.calls = []

    def topk(self, histories, k, target_categories=None, candidates=None, users=None):
        raise AssertionError("the reward never asks for top-k")

    def ranking(self, histories, candidates, users=None):
        self.calls.append((histories, candidates, users))
        return [[RANK[i] for i in c] for c in candidates]


def fields(k, target="2", history=("7",), **extra):
    return {"item_count": k, "user": "u1", "target_item": target, "sub_sequential": list(history), **extra}


def lines(*titles):
    return "\n ".join(f"{i + 1}. {t}" for i, t in enumerate(titles))


def score(task, f, text, teacher=None, **settings):
    return reward(task, f, text, CATALOGUE, teacher or FakeTeacher(), RewardSettings(**settings))


def f_rank(r):  # the rank score of a non-target item at teacher rank r: f(r + 1) with f(j) = 1/log2(j + 2)
    return 1 / math.log2(r + 3)


def test_ideal_dcg_values():
    # sum_{j<k} 1/log2(j+2)^2: 1 + 1/log2(3)^2 + 1/4 + ...
    assert ideal_dcg(3) == pytest.approx(1 + 1 / math.log2(3) ** 2 + 1 / 4)
    assert ideal_dcg(10) == pytest.approx(2.4949000379285335)
    assert ideal_dcg(11) == pytest.approx(2.5727092048570626)


def test_seqrec_target_nonexistent_sentinel_and_extra():
    teacher = FakeTeacher()
    # k = 3: the target first, a non-existent title, Alpha (the original's sentinel item), one line beyond k.
    r = score("RLSeqRec", fields(3), lines("Bravo", "Nope", "Alpha", "Echo"), teacher)
    assert r.titles == ["Bravo", "Nope", "Alpha", "Echo"]
    assert r.items == ["2", None, "1", "5"]
    # The original mapped "Nope" to item "1" and then scored the genuine Alpha as a repeat (-1).
    assert r.statuses == ["ok", "non_existent", "ok", "extra"]
    assert r.item_rewards == pytest.approx([1.0, -1.0, f_rank(4), -1.0])  # the target scores 1 whatever its rank
    assert r.task_scores is None
    corrected = 1.0 / math.log2(2) - 1.0 + f_rank(4) / math.log2(4) - 1.0
    assert r.corrected_scores == pytest.approx([1.0, -1.0, f_rank(4) / 2, -1.0])
    assert r.list_task_reward == 1.0  # target at position 0: 1/log2(2)
    assert r.list_reward == pytest.approx(10 * (0.5 * corrected / 1.6480723539417401 + 0.5 * 1.0))
    assert r.list_reward == pytest.approx(2.50649, abs=1e-5)
    # The non-existent title is never sent to the teacher (the original sent the sentinel in its place).
    assert teacher.calls == [([["7"]], [["2", "1", "5"]], ["u1"])]


def test_nonexistent_title_is_never_the_target():
    # Target "1" = the original's sentinel: there, "Nope" -> "1" was found by item_list.index(target) (L_task 1).
    r = score("RLSeqRec", fields(2, target="1"), lines("Nope", "Bravo"))
    assert r.items == [None, "2"] and r.list_task_reward == 0.0
    assert r.item_rewards == pytest.approx([-1.0, f_rank(0)])
    corrected = -1.0 + f_rank(0) / math.log2(3)
    assert r.list_reward == pytest.approx(10 * 0.5 * corrected / ideal_dcg(2))


def test_item_count_repeat_and_history():
    # k = 11 (RLItemCount's val k is topk + 1 + idx % 5). Golf is in the history; the target is absent.
    r = score("RLItemCount", fields(11), lines("Charlie", "Charlie", "Golf", "Delta"))
    assert r.statuses == ["ok", "repeat", "in_history", "ok"]
    assert r.item_rewards == pytest.approx([f_rank(1), -1.0, -1.0, f_rank(7)])
    assert r.item_rewards[0] == pytest.approx(0.5)  # 1/log2(4)
    corrected = f_rank(1) / 1 - 1 - 1 + f_rank(7) / math.log2(5)
    assert r.list_task_reward == 0.0
    assert r.list_reward == pytest.approx(10 * 0.5 * corrected / 2.5727092048570626)


def test_target_beyond_k_still_counts_for_the_list_task_reward():
    # As the original (item_list.index over every line): the extra line itself scores -1.
    r = score("RLSeqRec", fields(1), lines("Delta", "Bravo"))
    assert r.statuses == ["ok", "extra"]
    assert r.list_task_reward == pytest.approx(1 / math.log2(3))
    assert r.list_reward == pytest.approx(10 * (0.5 * (f_rank(7) - 1) / 1.0 + 0.5 / math.log2(3)))


def test_seqranking_candidates_and_in_list_ranks():
    teacher = FakeTeacher()
    f = fields(4, target="5", candidate_items=["5", "2", "4", "6"],
               candidate_titles="'Echo', 'Bravo', 'Delta', 'Foxtrot'")
    # Alpha exists but is no candidate; "Ech" is a substring of the joined candidates (the original let it pass,
    # scored as the sentinel item) but not a title.
    r = score("RLSeqRanking", f, lines("Foxtrot", "Alpha", "Echo", "Ech"), teacher)
    assert r.statuses == ["ok", "not_candidate", "ok", "non_existent"]
    assert teacher.calls[0][1] == [["6", "1", "5"]]
    assert r.teacher_ranks == [3, 4, 2, None]
    # In-list ranks over the mapped lines (global ranks 3, 4, 2): Foxtrot 1, Alpha 2, Echo 0.
    assert r.ranks == [1, 2, 0, None]
    assert r.item_rewards == pytest.approx([1 / math.log2(4), -1.0, 1.0, -1.0])  # Echo is the target
    corrected = 0.5 / 1 - 1 + 1.0 / math.log2(4) - 1
    assert r.list_task_reward == pytest.approx(1 / math.log2(4))  # target at position 2
    assert r.list_reward == pytest.approx(10 * (0.5 * corrected / 1.8335546516156849 + 0.5 * 0.5))
    assert r.list_reward == pytest.approx(-0.22695, abs=1e-5)


def test_plus_category():
    # C = Drama {1, 2, 3, 8}, k = 3. Alpha in C, Delta not, Alpha repeated, Hotel beyond k.
    r = score("RL+PersonalControlRec", fields(3, target_category="Drama"), lines("Alpha", "Delta", "Alpha", "Hotel"))
    assert r.statuses == ["ok", "ok", "repeat", "extra"]
    assert r.task_scores == [1.0, 0.0, -1.0, -1.0]
    assert r.item_rewards == pytest.approx([0.5 * f_rank(4) + 0.5, 0.5 * f_rank(7), -1.0, -1.0])
    assert (r.in_category_count, r.out_category_count) == (1, 1)
    assert r.list_task_reward == pytest.approx(1 / 3)  # 1 / (min(k, |C|) - in + 1) = 1 / (3 - 1 + 1)
    corrected = f_rank(4) + f_rank(7) / math.log2(3) - 2
    assert r.list_reward == pytest.approx(10 * (0.5 * corrected / ideal_dcg(3) + 0.5 / 3))


def test_plus_category_smaller_than_k():
    # |Horror| = 2 < k = 3: the target count is min(k, |C|) = 2, met by both Horror items.
    r = score("RL+PersonalControlRec", fields(3, history=(), target_category="Horror"),
              lines("Foxtrot", "Golf", "Bravo"))
    assert r.task_scores == [1.0, 1.0, 0.0] and r.list_task_reward == 1.0


def test_minus_category_with_history_item():
    r = score("RL-PersonalControlRec", fields(3, target_category="Drama"), lines("Delta", "Charlie", "Golf"))
    assert r.statuses == ["ok", "ok", "in_history"]
    assert r.task_scores == [1.0, 0.0, -1.0]  # Charlie is in Drama (and Comedy)
    assert r.item_rewards == pytest.approx([0.5 * f_rank(7) + 0.5, 0.5 * f_rank(1), -1.0])
    assert r.list_task_reward == pytest.approx(1 / 3)  # 1 / (k - out + 1)
    corrected = f_rank(7) + f_rank(1) / math.log2(3) - 1
    assert r.list_reward == pytest.approx(10 * (0.5 * corrected / ideal_dcg(3) + 0.5 / 3))


def test_category_rate_lp():
    # k = 4, count 2 (k - count = 2), C = Drama; a fifth line (the target) is beyond k.
    f = fields(4, target_category="Drama", category_count=2)
    r = score("RLPersonalCategoryRateLP", f, lines("Alpha", "Delta", "Echo", "Foxtrot", "Bravo"))
    # Alpha: in 1 < 2 -> 0.5; Delta, Echo: out of C -> 1; Foxtrot: out 3 > 2 -> 0.5.
    assert r.task_scores == [0.5, 1.0, 1.0, 0.5, -1.0]
    ranks = [f_rank(4), f_rank(7), f_rank(2), f_rank(3)]
    assert r.item_rewards == pytest.approx([0.5 * a + 0.5 * b for a, b in zip(ranks, r.task_scores[:4])] + [-1.0])
    assert r.list_task_reward == 1.0  # in 1 <= 2
    corrected = sum(x / math.log2(i + 2) for i, x in enumerate(ranks)) - 1
    assert r.list_reward == pytest.approx(10 * (0.5 * corrected / ideal_dcg(4) + 0.5))


def test_category_rate_mp():
    f = fields(4, target_category="Drama", category_count=2)
    r = score("RLPersonalCategoryRateMP_30", f, lines("Delta", "Alpha", "Echo", "Bravo"))
    # Delta: out 1 < 2 -> 0.5; Alpha: in C -> 1; Echo: out 2, not < 2 -> 0; Bravo (target) in C -> 1.
    assert r.task_scores == [0.5, 1.0, 0.0, 1.0]
    assert r.rank_scores == pytest.approx([f_rank(7), f_rank(4), f_rank(2), 1.0])
    assert r.list_task_reward == 1.0  # in 2 >= 2


def test_category_rate_mp_over_count():
    f = fields(5, target_category="Drama", category_count=1)
    r = score("RLPersonalCategoryRateMP", f, lines("Alpha", "Bravo", "Delta"))
    assert r.task_scores == [1.0, 0.5, 0.5]  # once in > count, every item scores 0.5


def test_category_rate_ep_and_generic_is_lp():
    f = fields(4, target_category="Drama", category_count=1)
    r = score("RLPersonalCategoryRateEP_50", f, lines("Delta", "Alpha", "Bravo", "Echo"))
    # Delta: out, in 0 < 1, out 1 <= 3 -> 0.5; Alpha: in 1 <= 1 -> 1; Bravo: in 2 > 1 -> 0; Echo: in 2 >= 1 -> 1.
    assert r.task_scores == [0.5, 1.0, 0.0, 1.0]
    assert r.list_task_reward == 0.5  # in 2 != 1: 1 / (|2 - 1| + 1)
    generic = score("RLPersonalCategoryRate", f, lines("Delta", "Alpha", "Bravo", "Echo"))
    lp = score("RLPersonalCategoryRateLP", f, lines("Delta", "Alpha", "Bravo", "Echo"))
    assert generic.item_rewards == lp.item_rewards and generic.list_reward == lp.list_reward


def test_empty_output_scores_as_one_nonexistent_line():
    teacher = FakeTeacher()
    r = score("RLSeqRec", fields(10), "", teacher)
    assert r.titles == [] and r.item_rewards == [] and teacher.calls == []
    assert r.list_reward == pytest.approx(10 * 0.5 * -1 / 2.4949000379285335)
    # LP with nothing listed: the count is met (0 <= 2), but the missing line still costs -1 in the ranking term.
    lp = score("RLPersonalCategoryRateLP", fields(4, target_category="Drama", category_count=2), " \n\n ")
    assert lp.list_task_reward == 1.0
    assert lp.list_reward == pytest.approx(10 * (0.5 * -1 / ideal_dcg(4) + 0.5))
    plus = score("RL+PersonalControlRec", fields(3, target_category="Drama"), "")
    assert plus.list_task_reward == pytest.approx(1 / 4)  # 1 / (min(3, 4) - 0 + 1)


def test_alpha_and_unnumbered_and_vague_mapping():
    f = fields(2, target_category="Drama")
    r = score("RL+PersonalControlRec", f, "Alpha\nDelta", alpha=0.25, idx=False)
    assert r.item_rewards == pytest.approx([0.25 * f_rank(4) + 0.75, 0.25 * f_rank(7)])
    assert score("RLSeqRec", fields(2), lines("Alpah")).statuses == ["non_existent"]  # VM-False: no mapping
    mapped = score("RLSeqRec", fields(2), lines("Alpah"), vague_mapping=True)
    assert mapped.titles == ["Alpha"] and mapped.items == ["1"] and mapped.statuses == ["ok"]


def test_batch_asks_the_teacher_once_and_matches_single_samples():
    teacher = FakeTeacher()
    model = RewardModel(CATALOGUE, teacher)
    samples = [("RLSeqRec", fields(3), lines("Bravo", "Delta")), ("RLSeqRec", fields(3), ""),
               ("RL-PersonalControlRec", fields(3, target_category="Drama"), lines("Echo"))]
    batch = model.score(samples)
    assert len(teacher.calls) == 1 and teacher.calls[0][1] == [["2", "4"], ["5"]]
    assert [b.list_reward for b in batch] == [score(*s).list_reward for s in samples]


def test_pure_function_takes_the_ranks():
    r = nr20_reward("RLSeqRec", fields(2), ["Delta", "Nope"], CATALOGUE, [7])
    assert r.item_rewards == pytest.approx([f_rank(7), -1.0])
    with pytest.raises(ValueError, match="2 teacher ranks for 1 listed items"):
        nr20_reward("RLSeqRec", fields(2), ["Delta", "Nope"], CATALOGUE, [7, 1])


@pytest.mark.parametrize("task, f, match", [
    ("SFTTestSeqRec", fields(3), "task 'SFTTestSeqRec' has no RL reward"),
    ("RLPersonalCategoryRateXX", fields(3), "expected RLPersonalCategoryRate"),
    ("RLSeqRec", {"item_count": 3, "sub_sequential": []}, "no 'target_item'"),
    ("RL+PersonalControlRec", fields(3), "no 'target_category'"),
    ("RLPersonalCategoryRateEP", fields(3, target_category="Drama"), "no 'category_count'"),
    ("RLSeqRanking", fields(3), "no 'candidate_items'"),
    ("RLSeqRec", fields(0), "'item_count' must be an integer >= 1"),
    ("RLSeqRec", dict(fields(3), sub_sequential="7"), "'sub_sequential' must be a list"),
])
def test_bad_fields_are_user_errors(task, f, match):
    with pytest.raises(UserError, match=match):
        score(task, f, lines("Bravo"))


def test_no_teacher_is_a_user_error_only_when_ranks_are_needed():
    assert reward("RLSeqRec", fields(3), "", CATALOGUE, None).list_reward < 0
    with pytest.raises(UserError, match="ranks items with the teacher"):
        reward("RLSeqRec", fields(3), lines("Bravo"), CATALOGUE, None)
