"""Golden tests: every task's prompt and label, for seed 0 on the tiny dataset, equal strings written out here
from the spec (template text typed by hand; labels recomputed from direct teacher calls and the spec rules).
The random draws a sample made (window, k, template, category, intention) are read back from it and checked to
lie in their allowed ranges; everything else must match exactly."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest

from reclm_jax.data.samples import SampleBuilder
from reclm_jax.data.tasks.share_chat_gpt import load_share_chat

SYS = "You are an expert recommender engine. "
GEN = "Please generate a recommendation list with {k} different items. "
SEL = "The candidate items are: {c}. Please select a recommendation list with {k} different items from candidate items. "
PLUS = ["I like '{c}' products", "Please recommend some '{c}' items", "I'm interested in '{c}'",
        "I would like to buy some '{c}' products", "I would like to browse some '{c}' products",
        "I prefer in '{c}' items"]
MINUS = ["I don't like '{c}' products", "Please exclude any '{c}' item", "I'm not interested in '{c}'",
         "Don't recommend me any '{c}' products", "I don't want to browse any '{c}' product", "I hate '{c}' items"]
PCR_U = ("You need to generate a recommendation list simultaneously considering user's preference inferred from "
         "historical interactions and user's intention. If user's preference is conflict with his intention, you "
         "should comply with his intention. ")
TEST_RATE_U = ("You need to generate a recommendation list simultaneously considering user's preference from "
               "historical interactions, and user's intention. ")
TEST_RATE_A = "Ok, I will consider user's preference and intention. "


def l2(u1: str, a1: str, inst: str, sys: str = SYS) -> str:
    return f"[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{u1} [/INST] {a1} </s><s>[INST] {inst} [/INST]"


def chatml(u1: str, a1: str, inst: str) -> str:
    return (f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n{u1}<|im_end|>\n<|im_start|>assistant\n{a1}"
            f"<|im_end|>\n<|im_start|>user\n{inst}<|im_end|>\n<|im_start|>assistant\n")


class Data:
    def __init__(self, d):
        load = lambda n: pickle.load(open(d / n, "rb"))  # noqa: E731
        self.meta, self.seq, self.cat = load("meta.pickle"), load("sequential.pickle"), load("category.pickle")
        self.ranking = load("ranking_candidate.pickle")
        self.users = list(self.seq)
        self.item_cats = {}
        for c, items in self.cat.items():
            for i in items:
                self.item_cats.setdefault(i, []).append(c)

    def t(self, i):
        return self.meta[i]["title"]

    def hist(self, items):
        return " \u2192 ".join(f"'{self.t(i)}'" for i in items)

    def cands(self, items):
        return ", ".join(f"'{self.t(i)}'" for i in items)

    def out(self, items):
        return "\n ".join(f"{n + 1}. {self.t(i)}" for n, i in enumerate(items)) + "\n</s>"

    def max_cats(self, items, target, cap=None):
        counts = {c: sum(i in self.cat[c] for i in items) for c in self.cat if target not in self.cat[c]}
        best = max(counts.values()) if cap is None else min(cap, max(counts.values()))
        return [c for c, n in counts.items() if n >= best]


@pytest.fixture(scope="module")
def data(tiny_dataset_dir):
    return Data(tiny_dataset_dir)


def top(teacher, hist, k, cat=None, exclude=()):
    if k == 0:
        return []
    row = teacher.topk([hist], k + len(exclude), None if cat is None else [cat])[0]
    return [i for i in row if i not in exclude][:k]


def check_train_window(data, f):
    seq = data.seq[f["user"]][:-2]
    pos = seq.index(f["target_item"])
    h = f["sub_sequential"]
    assert 1 <= pos and 1 <= len(h) <= min(pos, 10) and h == seq[pos - len(h):pos]
    assert f["history"] == data.hist(h) and f["target_item_title"] == data.t(f["target_item"])


def samples(make_ctx, teacher, tasks, mode, seed=0, **kw):
    return SampleBuilder(make_ctx(**kw), tasks, mode, teacher, seed).epoch(0)


def test_sft_seqrec(make_ctx, teacher, data):
    seen = Counter()
    for s in samples(make_ctx, teacher, ["SFTSeqRec"], "train"):
        f = s["input_field_data"]
        check_train_window(data, f)
        k, t, held = f["item_count"], f["target_item"], tuple(data.seq[f["user"]][-2:])
        assert 1 <= k <= 10 and f["target_category"] == data.item_cats[t][-1]
        label = ([t] + [i for i in top(teacher, f["sub_sequential"], k, exclude=held) if i != t])[:k]
        assert s["output_text"] == data.out(label)
        inst_head = f"The historical interactions are provided as follows: {f['history']}. "
        if f["candidate_items"]:
            seen["select"] += 1
            c = f["candidate_items"]
            assert len(c) == 10 and set(label) <= set(c) and not set(c) & set(held)
            assert f["candidate_titles"] == data.cands(c)
            expected = l2("You need to select a recommendation list considering user's preference from historical "
                          "interactions. ", "Ok, I will do it considering user's preference.",
                          inst_head + SEL.format(c=data.cands(c), k=k))
        else:
            seen["generate"] += 1
            expected = l2("You need to generate a recommendation list considering user's preference from "
                          "historical interactions. ", "Ok, I will consider user's preference. ",
                          inst_head + GEN.format(k=k))
        assert s["input_text"] == expected
    assert seen["select"] > 5 and seen["generate"] > 5


def test_sft_seqrec_hf_chat_format(make_ctx, teacher, data, tiny_tokenizer):
    for s in samples(make_ctx, teacher, ["SFTSeqRec"], "train", chat="hf", tokenizer=tiny_tokenizer,
                     eos="<|im_end|>")[:10]:
        f = s["input_field_data"]
        if f["candidate_items"]:
            continue
        expected = chatml("You need to generate a recommendation list considering user's preference from historical "
                          "interactions. ", "Ok, I will consider user's preference. ",
                          f"The historical interactions are provided as follows: {f['history']}. "
                          + GEN.format(k=f["item_count"]))
        assert s["input_text"] == expected
        assert s["output_text"].endswith("\n<|im_end|>")


def test_sft_seqrec_palr(make_ctx, teacher, data):
    for s in samples(make_ctx, None, ["SFTSeqRecPALR"], "train"):
        f = s["input_field_data"]
        check_train_window(data, f)
        seq = data.seq[f["user"]]
        pos = seq.index(f["target_item"])
        assert 1 <= f["item_count"] <= min(len(seq) - pos - 2, 10)
        assert s["output_text"] == data.out(seq[pos:pos + f["item_count"]])


def test_sft_personal_control_rec(make_ctx, teacher, data):
    seen = Counter()
    for s in samples(make_ctx, teacher, ["SFTPersonalControlRec"], "train"):
        f = s["input_field_data"]
        check_train_window(data, f)
        k, c, t, h = f["item_count"], f["target_category"], f["target_item"], f["sub_sequential"]
        held = tuple(data.seq[f["user"]][-2:])
        plus = f["synthetic_intention"] in [p.format(c=c) for p in PLUS]
        if plus:
            assert 1 <= k <= min(10, len(data.cat[c]))
        else:
            assert f["synthetic_intention"] in [m.format(c=c) for m in MINUS]
            assert c in data.max_cats(top(teacher, h, 10, exclude=held), t)
            assert 1 <= k <= min(10, len(data.meta) - len(data.cat[c]))
        seen[plus] += 1
        label = top(teacher, h, k, ("+" if plus else "-") + c, exclude=held)
        if t in label:
            label = [t] + [i for i in label if i != t]
        assert s["output_text"] == data.out(label)
        inst = f"Here is user's historical interactions: {f['history']}, and user's intention: " \
               f"{f['synthetic_intention']}. "
        if f["candidate_items"]:
            expected = l2("You need to select a recommendation list from candidate items simultaneously considering "
                          "user's preference inferred from historical interactions and user's intention. If user's "
                          "preference is conflict with his intention, you should comply with his intention. ",
                          "Ok, I will do it considering user's preference, intention and candidate items. ",
                          inst + SEL.format(c=data.cands(f["candidate_items"]), k=k))
        else:
            expected = l2(PCR_U, "Ok, I will do it considering user's preference and intention. ",
                          inst + GEN.format(k=k))
        assert s["input_text"] == expected
    assert seen[True] > 5 and seen[False] > 5


def test_sft_control_rec_re(make_ctx, data):
    seen = Counter()
    out = samples(make_ctx, None, ["SFTControlRec_re"], "train")
    assert len(out) == len(data.meta)  # every tiny item has a category
    for s, item in zip(out, data.meta):
        f = s["input_field_data"]
        title = data.t(item)
        if "item" in f:
            seen["reverse"] += 1
            assert f == {"item": title}
            assert s["input_text"] == l2("You need to answer user's question. ", "Ok, I will do it. ",
                                         f'What is the category of "{title}"? ')
            assert s["output_text"] in [f'The category of "{title}" is "{c}</s>".' for c in data.item_cats[item]]
            continue
        seen["list"] += 1
        c = f["target_category"]
        assert f["item_count"] == 1 and s["output_text"] == data.out([item])
        allowed = PLUS if item in data.cat[c] else MINUS
        assert f["synthetic_intention"] in [p.format(c=c) for p in allowed]
        inst = f"Here is user's intention: {f['synthetic_intention']}. "
        if f["candidate_items"]:
            expected = l2("You need to select a recommendation list complying user's intention from candidate items. ",
                          "Ok, I will do it considering user's intention and candidate items. ",
                          inst + SEL.format(c=data.cands(f["candidate_items"]), k=1))
        else:
            expected = l2("You need to generate a recommendation list complying user's intention. ",
                          "Ok, I will do it considering user's intention. ", inst + GEN.format(k=1))
        assert s["input_text"] == expected
    assert seen["reverse"] > 5 and seen["list"] > 5


def test_sft_personal_category_rate(make_ctx, teacher, data):
    for s in samples(make_ctx, teacher, ["SFTPersonalCategoryRate"], "train"):
        f = s["input_field_data"]
        check_train_window(data, f)
        c, t_count, h = f["target_category"], f["category_count"], f["sub_sequential"]
        held = tuple(data.seq[f["user"]][-2:])
        assert f["item_count"] == 10 and f["category_proportion"] == f"{t_count}0%"
        inside, outside = top(teacher, h, 10, "+" + c, held), top(teacher, h, 10, "-" + c, held)
        label_items = [data.t(i) for i in data.meta]
        body = s["input_text"].split("and user's intention: ")[1]
        if body.startswith("I like") and "proportion" in body:
            variant = "LP"
            intent = (f"I like '{c}' items, but in the recommendation list, the proportion of '{c}' items should be "
                      f"less than {t_count}0%. ")
        elif "proportion" in body:
            variant = "MP"
            intent = (f"I don't like '{c}' items, but in the recommendation list, the proportion of '{c}' items "
                      f"should be more than {t_count}0%. ")
        elif body.startswith("I like"):
            variant = "LC"
            intent = f"I like '{c}' items, but the recommendation list should containing less than {t_count} '{c}' items. "
        else:
            variant = "MC"
            intent = (f"I don't like '{c}' items, but the recommendation list should containing more than {t_count} "
                      f"'{c}' items. ")
        options = (t_count - 1, t_count) if variant[0] == "L" else (t_count, t_count + 1)
        lines = s["output_text"][:-len("\n</s>")].split("\n ")
        got = sorted(line.split(". ", 1)[1] for line in lines)
        assert any(got == sorted(data.t(i) for i in inside[:n] + outside[:10 - n]) for n in options if n >= 0)
        assert len(label_items) == len(data.meta)
        expected = l2("You need to generate a recommendation list simultaneously considering user's preference "
                      "inferred from historical interactions and user's intention. ",
                      "Ok, I will do it considering user's preference and intention. ",
                      f"Here is user's historical interactions: {f['history']}, and user's intention: " + intent
                      + GEN.format(k=10))
        assert s["input_text"] == expected


def test_sft_category_rate(make_ctx, data):
    out = samples(make_ctx, None, ["SFTCategoryRate"], "train")
    assert len(out) == 4 * len(data.cat)
    for s in out:
        f = s["input_field_data"]
        c, n = f["target_category"], f["category_count"]
        items = [next(i for i in data.meta if data.t(i) == line.split(". ", 1)[1])
                 for line in s["output_text"][:-len("\n</s>")].split("\n ")]
        assert len(set(items)) == 10
        n_in = sum(i in data.cat[c] for i in items)
        body = s["input_text"].split("Here is user's intention: ")[1]
        assert n_in in ((n - 1, n) if body.startswith("I like") else (n, n + 1))


def test_sft_val_tasks_exact(make_ctx, teacher, data):
    tasks = ["SFTTestSeqRec", "SFTTestItemCount", "SFTTestSeqRanking", "SFT+TestPersonalControlRec",
             "SFT-TestPersonalControlRec", "SFTTestPersonalCategoryRateLP1_20", "SFTTestPersonalCategoryRateLP_50",
             "SFTTestPersonalCategoryRateMP_30", "SFTTestPersonalCategoryRateEP_30"]
    out = samples(make_ctx, teacher, tasks, "val", val_num_per_task=4)
    assert len(out) == 4 * len(tasks)
    for n, s in enumerate(out):
        task = tasks[n // 4]
        user = data.users[n]  # task j takes users [4j, 4j+4)
        seq = data.seq[user]
        h, target = seq[-12:-2], seq[-2]
        f = s["input_field_data"]
        assert (s["task"], f["user"], f["sub_sequential"], f["target_item"]) == (task, user, h, target)
        assert s["output_text"] == data.t(target)
        hist = data.hist(h)
        last = data.item_cats[target][-1]
        sr = top(teacher, h, 10)
        if task in ("SFTTestSeqRec", "SFTTestItemCount"):
            k = 10 if task == "SFTTestSeqRec" else 11 + n % 5
            expected = l2("You need to generate a recommendation list considering user's preference from historical "
                          "interactions. ", "Ok, I will consider user's preference. ",
                          f"The historical interactions are provided as follows: {hist}. " + GEN.format(k=k))
        elif task == "SFTTestSeqRanking":
            cands = data.ranking[user][:9]
            cands.insert(n % 10, target)
            assert f["candidate_items"] == cands
            expected = l2("You need to select a recommendation list complying user's intention from candidate items. ",
                          "Ok, I will do it considering user's preference and candidate items. ",
                          f"The historical interactions are provided as follows: {hist}. "
                          + SEL.format(c=data.cands(cands), k=10))
        elif "ControlRec" in task:
            plus = task.startswith("SFT+")
            c = last if plus else data.max_cats(sr, target)[-1]
            assert f["SeqRec_Result"] == sr and f["target_category"] == c
            assert f["synthetic_intention"] in [p.format(c=c) for p in (PLUS if plus else MINUS)]
            expected = l2(PCR_U, "Ok, I will do it considering user's preference and intention. ",
                          f"Here is user's historical interactions: {hist}, and user's intention: "
                          f"{f['synthetic_intention']}. " + GEN.format(k=10))
        else:
            variant, p = task[len("SFTTestPersonalCategoryRate"):].split("_")
            c = data.max_cats(sr, target)[-1] if variant.startswith("LP") else last
            assert (f["target_category"], f["category_count"], f["category_proportion"]) == (c, int(p) // 10, f"{p}%")
            intent = {
                "LP": f"I like '{c}' items, but in the recommendation list, the proportion of '{c}' items should be "
                      f"less than {p}%. ",
                "LP1": f"In the recommendation list, the proportion of '{c}' items should be less than {p}%. ",
                "MP": f"In the recommendation list, the proportion of '{c}' items should be more than {p}%. ",
                "EP": f"In the recommendation list, the proportion of '{c}' items should be approximately {p}%. ",
            }[variant]
            expected = l2(TEST_RATE_U, TEST_RATE_A, f"Here is user's historical interactions: {hist}, and user's "
                                                    f"intention: " + intent + GEN.format(k=10))
        assert s["input_text"] == expected, task


def test_sft_test_mode_uses_model_results_and_last_item(make_ctx, teacher, data):
    u0 = data.users[0]
    results = {u0: [data.t(data.seq[u0][0]), "Not A Real Title"]}
    with pytest.warns(UserWarning, match="teacher"):  # the other users have no stored result
        out = samples(make_ctx, teacher, ["SFT-TestPersonalControlRec"], "test", seqrec_results=results)
    assert len(out) == len(data.users)
    f = out[0]["input_field_data"]
    assert f["target_item"] == data.seq[u0][-1] and f["sub_sequential"] == data.seq[u0][-11:-1]
    assert f["SeqRec_Result"] == [data.seq[u0][0], "None"]


def test_rl_train_tasks(make_ctx, teacher, data):
    tasks = ["RLSeqRec", "RL+PersonalControlRec", "RL-PersonalControlRec", "RLPersonalCategoryRateLP",
             "RLPersonalCategoryRateMP", "RLPersonalCategoryRateEP", "RLSeqRanking"]
    out = samples(make_ctx, teacher, tasks, "train")
    assert len(out) == len(tasks) * len(data.users)
    for s in out:
        f, task = s["input_field_data"], s["task"]
        check_train_window(data, f)
        k, t, held = f["item_count"], f["target_item"], tuple(data.seq[f["user"]][-2:])
        assert 6 <= k <= 10 and s["output_text"] == data.t(t)
        hist = f["history"]
        if task == "RLSeqRec":
            assert s["input_text"] == l2(
                "You need to generate a recommendation list considering user's preference from historical "
                "interactions. ", "Ok, I will consider user's preference. ",
                f"The historical interactions are provided as follows: {hist}. " + GEN.format(k=k))
        elif task == "RLSeqRanking":
            c = f["candidate_items"]
            assert t in c and k + 1 <= len(c) <= 11 and not set(c) & set(held)
        elif "ControlRec" in task:
            sr = top(teacher, f["sub_sequential"], k, exclude=held)
            assert f["SeqRec_Result"] == sr
            c = f["target_category"]
            if task.startswith("RL+"):
                assert c in data.item_cats[t] and f["synthetic_intention"] in [p.format(c=c) for p in PLUS]
            else:
                assert c in data.max_cats(sr, t, cap=2) and f["synthetic_intention"] in [m.format(c=c) for m in MINUS]
            assert s["input_text"] == l2(PCR_U, "Ok, I will do it considering user's preference and intention. ",
                                         f"Here is user's historical interactions: {hist}, and user's intention: "
                                         f"{f['synthetic_intention']}. " + GEN.format(k=k))
        else:
            variant = task[-2:]
            c, n = f["target_category"], f["category_count"]
            m = min(len(data.cat[c]), k)
            assert 0 <= n <= m and f["category_proportion"] == f"{int(n / k * 10) * 10}%"
            assert c in (data.item_cats[t] if variant != "LP" else data.max_cats(f["SeqRec_Result"], t, cap=2))
            word = {"LP": "less than", "MP": "more than", "EP": "approximately"}[variant]
            assert s["input_text"] == l2(TEST_RATE_U, TEST_RATE_A,
                                         f"Here is user's historical interactions: {hist}, and user's intention: In "
                                         f"the recommendation list, the proportion of '{c}' items should be {word} "
                                         f"{f['category_proportion']}. " + GEN.format(k=k))


def test_rl_val_slices_and_item_count(make_ctx, teacher, data):
    tasks = ["RLSeqRec", "RLItemCount", "RLPersonalCategoryRateLP_20", "RLPersonalCategoryRateEP_50", "RLSeqRanking"]
    out = samples(make_ctx, teacher, tasks, "val")
    slices = {"RLSeqRec": 0, "RLItemCount": 5, "RLPersonalCategoryRateLP_20": 3, "RLPersonalCategoryRateEP_50": 3,
              "RLSeqRanking": 4}
    for n, s in enumerate(out):
        task = tasks[n // 5]
        f = s["input_field_data"]
        assert f["user"] == data.users[5 * slices[task] + n % 5]
        if task == "RLItemCount":
            assert f["item_count"] == 11 + n % 5
        if task == "RLPersonalCategoryRateLP_20":
            assert (f["category_count"], f["category_proportion"]) == (2, "20%")
            assert "I like '" in s["input_text"]  # val LP uses the LP (not LP1) phrasing
        if task == "RLPersonalCategoryRateEP_50":
            assert (f["category_count"], f["target_category"]) == (5, data.item_cats[f["target_item"]][-1])


def test_share_chat_gpt(make_ctx, data, share_gpt_file):
    share = load_share_chat(share_gpt_file)
    assert len(share) == 2 and share.skipped == 1
    out = samples(make_ctx, None, ["SFTSeqRecPALR", "ShareChatGPT"], "train", share_chat=share,
                  share_chat_gpt_ratio=0.5)
    chats = [s for s in out if s["task"] == "ShareChatGPT"]
    assert len(chats) == int(0.5 * len(data.users)) and len(out) == len(data.users) + len(chats)
    sys = "You are a helpful, respectful and honest assistant."
    allowed = {
        (f"[INST] <<SYS>>\n{sys}\n<</SYS>>\n\nHi there [/INST]", "Hello! How can I help?</s>"),
        (f"[INST] <<SYS>>\n{sys}\n<</SYS>>\n\nName a film. [/INST]", "Heat (1995).</s>"),
        (f"[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n2+2? [/INST]", "4</s>"),
    }
    got = {(s["input_text"], s["output_text"]) for s in chats}
    assert got <= allowed and len(got) >= 2
    assert all(s["input_field_data"] == {} for s in chats)


def test_test_mode_teacher_fallback_is_flagged(make_ctx, teacher, data):
    """T1: in the original, test-mode control tasks always read the model's own SeqRec result,
    ``ad4d270:sft/dataset.py:291-292``: ``SeqRec_Result = self.SFTTestSeqRec_Result[user]`` (no teacher call; a
    missing result crashes). reclm-jax falls back to the teacher's top-k; it must say so, per sample and once in
    the output."""
    u0 = data.users[0]
    results = {u0: [data.t(data.seq[u0][0])]}
    tasks = ["SFT-TestPersonalControlRec", "SFTTestPersonalCategoryRateEP_30", "RL-PersonalControlRec"]
    with pytest.warns(UserWarning, match="teacher"):
        out = samples(make_ctx, teacher, tasks, "test", seqrec_results=results)
    for s in out:
        f = s["input_field_data"]
        if f["user"] == u0:
            assert f["SeqRec_Source"] == "model" and f["SeqRec_Result"] == [data.seq[u0][0]]
        else:  # a user without a stored result: the teacher's list, flagged (was an empty list, unflagged)
            assert f["SeqRec_Source"] == "teacher"
            assert f["SeqRec_Result"] == top(teacher, f["sub_sequential"], 10)
    with pytest.warns(UserWarning, match="teacher"):
        out = samples(make_ctx, teacher, tasks[:1], "test")  # no results at all
    assert {s["input_field_data"]["SeqRec_Source"] for s in out} == {"teacher"}
