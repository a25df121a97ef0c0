"""The teacher and popularity baselines as evaluated runs, scored by the test-stage scorer."""

from __future__ import annotations

from collections import Counter

import pytest

from reclm_jax.datasets.raw import load_raw
from reclm_jax.eval import run_dir as rd
from reclm_jax.eval.baselines import main as baselines_main
from reclm_jax.eval.test_samples import TEST_TASKS


@pytest.fixture(scope="module")
def teacher_run(tiny_dataset_dir, tiny_teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher_run")
    assert baselines_main(["--data_path", str(tiny_dataset_dir), "--item_index", "title", "--kind", "teacher",
                           "--teacher_checkpoint", str(tiny_teacher_dir), "--output_dir", str(out)]) == 0
    return rd.load_run(out)


def test_teacher_baseline_seqrec_equals_the_teachers_own_test_evaluation(teacher_run, tiny_teacher_dir):
    from reclm_jax.teacher.evaluate import evaluate_run

    own = evaluate_run(tiny_teacher_dir)["teacher"]["test"]
    got = teacher_run.scores["reclm"]["SFTTestSeqRec"]
    assert got["Count"] == 40
    assert got["Recall"] == pytest.approx(own["hr@10"]) and got["NDCG"] == pytest.approx(own["ndcg@10"])
    assert got["NonExistRate"] == got["RepeatRate"] == got["InHistoryRate"] == 0 and got["CorrectCount"] == 1
    assert teacher_run.kind == "teacher" and teacher_run.complete and teacher_run.tasks == list(TEST_TASKS)


def test_teacher_baseline_obeys_each_tasks_constraint(teacher_run, tiny_dataset_dir):
    raw = load_raw(tiny_dataset_dir, item_index="title")
    title2item = {m["title"]: i for i, m in raw.meta.items()}
    scores = teacher_run.scores["reclm"]
    assert scores["SFT-TestPersonalControlRec"]["TargetCategoryRate"] == 0
    for row in teacher_run.outputs("SFT+TestPersonalControlRec"):
        seen = set(raw.sequential[row["user"]][:-1])
        available = [i for i in raw.category2item[row["category"]] if i not in seen]
        inside = sum(title2item[t] in set(raw.category2item[row["category"]]) for t in row["items"])
        assert inside == min(10, len(available))
    for task in TEST_TASKS[3:6]:  # LP1_20 / EP_30 / MP_30: exactly category_count items of C
        assert scores[task]["CategoryRateCorrect"] == 1
        assert scores[task]["TargetCategoryRate"] == int(task.split("_")[1]) // 10
    for row in teacher_run.outputs("SFTTestItemCount"):
        assert len(row["items"]) == row["item_count"] == 11 + row["index"] % 5
    # Tasks 2-6 read the teacher's own SeqRec answers: I1-'s category is the most frequent category of that
    # list among those without the target (the last of ties, in category order).
    seqrec = {r["user"]: [title2item[t] for t in r["items"]] for r in teacher_run.outputs("SFTTestSeqRec")}
    for row in teacher_run.outputs("SFT-TestPersonalControlRec"):
        target = raw.sequential[row["user"]][-1]
        counts = {c: sum(i in set(m) for i in seqrec[row["user"]]) for c, m in raw.category2item.items()
                  if target not in m}
        best = max(counts.values())
        assert row["category"] == [c for c, n in counts.items() if n == best][-1]


def test_popularity_baseline_recommends_the_most_popular_unseen_items(tiny_dataset_dir, tmp_path):
    out = tmp_path / "pop"
    assert baselines_main(["--data_path", str(tiny_dataset_dir), "--item_index", "title", "--kind", "popularity",
                           "--output_dir", str(out), "--max_users", "7", "--tasks", "SFTTestSeqRec"]) == 0
    run = rd.load_run(out)
    raw = load_raw(tiny_dataset_dir, item_index="title")
    counts = Counter(i for seq in raw.sequential.values() for i in seq[:-2])  # training interactions
    position = {i: j for j, i in enumerate(raw.items)}
    ranked = sorted(raw.items, key=lambda i: (-counts[i], position[i]))
    rows = run.outputs("SFTTestSeqRec")
    assert len(rows) == 7 and run.kind == "popularity" and run.info["max_users"] == 7
    for row in rows:
        seen = set(raw.sequential[row["user"]][:-1])
        want = [raw.meta[i]["title"] for i in ranked if i not in seen][:10]
        assert row["items"] == want
