"""Task samples -> constraints: the mapping from ``input_field_data`` per task name, and end to end on the tiny
dataset's test tasks (plus SeqRanking), where the constrained lists of a tiny random model score what the
constraints promise under the project's own metrics (``eval.metrics.Metrics``)."""

from __future__ import annotations

import pytest

from reclm_jax.decoding import ConstrainedCatalogue, ListConstraint, constraint_for_sample, constraints_for_samples

FIELDS = {"item_count": 10, "sub_sequential": ["1", "2"], "target_category": "Drama", "category_count": 3}


@pytest.mark.parametrize("task,mode,c_min,c_max", [
    ("SFTTestSeqRec", "none", 0, None), ("SFTTestItemCount", "none", 0, None),
    ("SFT+TestPersonalControlRec", "only", 0, None), ("RL-PersonalControlRec", "exclude", 0, None),
    ("SFTTestPersonalCategoryRateLP1_20", "none", 0, 3), ("SFTTestPersonalCategoryRateMP_30", "none", 3, None),
    ("SFTTestPersonalCategoryRateEP_30", "none", 2, 4), ("RLPersonalCategoryRate", "none", 0, 3)])
def test_task_rules(task, mode, c_min, c_max):
    c = constraint_for_sample(task, FIELDS)
    assert (c.k_min, c.k_max, c.exclude) == (10, 10, ("1", "2"))
    assert (c.category_mode, c.c_min, c.c_max) == (mode, c_min, c_max)
    assert c.category == (None if task in ("SFTTestSeqRec", "SFTTestItemCount") else "Drama")
    assert c.candidates is None


def test_ranking_and_free_length():
    c = constraint_for_sample("SFTTestSeqRanking", {**FIELDS, "candidate_items": ["7", "8"]})
    assert c.candidates == ("7", "8")
    free = constraint_for_sample("SFTSeqRec", {"sub_sequential": []})
    assert (free.k_min, free.k_max) == (1, None)


def test_test_tasks_score_their_constraints(tiny_dataset_dir, tiny_llama_dir, load_tok):
    from reclm_jax.data.chat import ChatFormat
    from reclm_jax.data.item_index import load_dataset
    from reclm_jax.data.tasks import TaskContext, TaskSettings
    from reclm_jax.eval.metrics import Metrics
    from reclm_jax.eval.parsing import parse_list
    from reclm_jax.eval.test_samples import TEST_TASKS, build_task_samples
    from reclm_jax.models.hf_loading import load_llama
    from reclm_jax.models.sampler import Sampler
    from reclm_jax.models.tokenizer import pad_token_id

    tok = load_tok("bpe")
    raw, index = load_dataset(tiny_dataset_dir, "title")
    ctx = TaskContext(raw, index, TaskSettings(topk=5, idx=True), ChatFormat("hf", tok), tok.eos_token)
    users = list(raw.sequential)[:4]
    seqrec = {u: [index.text[i] for i in raw.items[3 * j:3 * j + 5]] for j, u in enumerate(users)}
    samples = []
    for task in (*TEST_TASKS, "SFTTestSeqRanking"):
        samples += build_task_samples(ctx, task, max_users=4, seqrec_titles=seqrec, progress=False)
    cat = ConstrainedCatalogue.from_dataset(raw, index, tok, tok.eos_token, max_items=16)
    cons = constraints_for_samples(samples)
    sampler = Sampler(load_llama(tiny_llama_dir), pad_id=pad_token_id(tok), stop_ids=[tok.eos_token_id])
    prompts = [tok(s["input_text"], add_special_tokens=False)["input_ids"][-96:] for s in samples]
    metrics = Metrics(sorted({s["task"] for s in samples}), index, raw.category2item)
    for a in range(0, len(samples), 16):
        res = sampler(prompts[a:a + 16], max_new_tokens=160, rows=16, logits_processor=cat.processor,
                      processor_data=cat.processor_data(cons[a:a + 16]))
        for s, toks in zip(samples[a:a + 16], res.token_lists()):
            titles = parse_list(tok.decode(toks, skip_special_tokens=True))
            metrics.add_sample(s["task"], s["input_field_data"], titles, s["output_text"])
    res = metrics.results()
    for task, m in res.items():
        assert m["Count"] > 0
        assert (m["NonExistRate"], m["RepeatRate"], m["InHistoryRate"], m["CorrectCount"]) == (0, 0, 0, 1), task
    assert res["SFT+TestPersonalControlRec"]["TargetCategoryRate"] == 5
    assert res["SFT-TestPersonalControlRec"]["TargetCategoryRate"] == 0
    for task in ("SFTTestPersonalCategoryRateLP1_20", "SFTTestPersonalCategoryRateEP_30",
                 "SFTTestPersonalCategoryRateMP_30"):
        assert res[task]["CategoryRateCorrect"] == 1, task
    assert res["SFTTestSeqRanking"]["NotInCandidateRate"] == 0


def test_counts_the_catalogue_cannot_meet_are_lowered(make_catalogue):
    cat, items, titles, i2c, cats = make_catalogue("bpe", n=60, seed=0)
    members = [it for it in cat.items if "Drama" in i2c[it]]
    outside = [it for it in cat.items if "Drama" not in i2c[it]]
    cons = [ListConstraint(k_min=10, k_max=10, candidates=tuple(items[:6]), exclude=tuple(items[:2])),
            ListConstraint(k_min=50, k_max=50, category="Drama", category_mode="only", exclude=tuple(members[:3])),
            ListConstraint(k_min=10, k_max=10, category="Drama", c_max=1, exclude=tuple(outside[3:])),
            ListConstraint(k_min=3, k_max=3, candidates=("not-an-item",))]
    rows = cat.row_data(cons)["rows"]
    assert rows["k_max"].tolist() == [4, min(len(members) - 3, 16), 4, 0]
    assert rows["k_min"].tolist() == rows["k_max"].tolist()
    assert rows["c_max"][2] == 1
