"""The evaluation client against a fake OpenAI server on loopback: requests as the original's, the seven tasks
with SeqRec first, failures counted (never a crash), the cache, resume after SIGKILL, the general-LLM path."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reclm_jax.data.templates import render_history
from reclm_jax.errors import UserError
from reclm_jax.eval import run_dir as rd
from reclm_jax.eval.client import EvalSettings, HttpAnswerer, evaluate
from reclm_jax.eval.completions import CompletionsClient, CompletionsConfig, ServerDown
from reclm_jax.eval.test_samples import TEST_TASKS, build_task_samples, needs_seqrec

REPO = Path(__file__).resolve().parents[2]
HIST = re.compile(r"(?:provided as follows: |Here is user's historical interactions: )(.*?)"
                  r"(?:\. Please generate|, and user's intention)", re.S)
K = re.compile(r"with (\d+) different items")


def text(t):
    return ("text", t)


def user_table(ctx, n):
    """history string -> (user, target title) for the first n users (the prompts' history is seq[-11:-1])."""
    table = {}
    for u in ctx.users[:n]:
        seq = ctx.sequential[u]
        table[render_history(ctx.titles(seq[-11:-1]))] = (u, ctx.title(seq[-1]))
    assert len(table) == n  # each history identifies its user
    return table


def right_list(ctx, target, k):
    fill = [t for t in ctx.index.titles if t != target][:k - 1]
    return [target] + fill


def correct_server(ctx, table, general=False, override=None):
    """Answers every prompt with a k-line list whose first line is the user's test target."""
    def answer(prompt, attempt):
        user, target = table[HIST.search(prompt).group(1)]
        if override is not None:
            special = override(prompt, user, attempt)
            if special is not None:
                return special
        titles = right_list(ctx, target, int(K.search(prompt).group(1)))
        if general:
            return text("\n".join(f"{i + 1}. {t} (Genre)" for i, t in enumerate(titles)))
        return text("\n ".join(f"{i + 1}. {t}" for i, t in enumerate(titles)))
    return answer


def settings(tmp_path, tasks=TEST_TASKS, n=8, kind="model", **kw):
    return EvalSettings(run_dir=tmp_path / "run", name="m", tasks=tuple(tasks), data_path="data", item_index="title",
                        kind=kind, max_users=n, progress=False, **kw)


def run(ctx, server, s, **cfg):
    client = CompletionsClient(CompletionsConfig(server.base_url, "fake", **{"backoff": 0.01, **cfg}))
    try:
        return evaluate(ctx, HttpAnswerer(client, s, "fake"), s, base_url=server.base_url, model_name="fake")
    finally:
        client.close()


def test_a_tasks_requests_overlap_the_slow_end_of_another_task(tmp_path, tiny_eval_ctx, fake_openai):
    """SeqRec's slowest answer does not hold up ItemCount (one wave of requests), but it does hold up I1+ and the
    other tasks built from SeqRec's lists."""
    ctx = tiny_eval_ctx
    table = user_table(ctx, 8)
    count_prompts = {x["input_text"] for x in build_task_samples(ctx, "SFTTestItemCount", max_users=8,
                                                                 progress=False)}
    first_user = ctx.users[0]
    count_seen, overlapped, seqrec_done = threading.Event(), [], threading.Event()
    late = []

    def override(prompt, user, attempt):
        if prompt in count_prompts:
            count_seen.set()
        elif "intention" not in prompt and "10 different items" in prompt and user == first_user:
            # SeqRec's answer for the first user waits until some ItemCount request has come in (10 s at most).
            overlapped.append(count_seen.wait(10))
            seqrec_done.set()
        elif prompt not in count_prompts and "intention" in prompt:
            late.append(seqrec_done.is_set())
        return None

    server = fake_openai(correct_server(ctx, table, override=override))
    s = settings(tmp_path)
    run(ctx, server, s, concurrency=2)
    assert overlapped == [True]
    assert late and all(late)


def test_seven_tasks_with_right_answers_score_perfectly_and_read_the_models_seqrec(tmp_path, tiny_eval_ctx,
                                                                                      fake_openai):
    ctx = tiny_eval_ctx
    table = user_table(ctx, 8)
    server = fake_openai(correct_server(ctx, table))
    s = settings(tmp_path)
    scores = run(ctx, server, s, max_tokens=77)
    assert list(scores["reclm"]) == list(TEST_TASKS)
    for counting in ("reclm", "original"):
        for task in TEST_TASKS:
            m = scores[counting][task]
            assert (m["Count"], m["Recall"], m["NDCG"], m["CorrectCount"], m["NonExistRate"]) == (8, 1, 1, 1, 0)
    # The original's request: greedy, no stop strings, the model named, 1024 -> here 77 max tokens.
    p = server.payloads[0]
    assert p["temperature"] == 0.0 and p["n"] == 1 and p["max_tokens"] == 77 and p["model"] == "fake"
    assert "stop" not in p
    # SeqRec (with ItemCount, which does not read its answers) is asked before every task that reads them.
    task_of = {r["input_text"]: t for t in TEST_TASKS for r in rd.load_run(s.run_dir).outputs(t)}
    asked = [task_of[q] for q in server.prompts]
    assert sorted(asked[:16]) == sorted(["SFTTestSeqRec"] * 8 + ["SFTTestItemCount"] * 8)
    assert all(needs_seqrec(t) for t in asked[16:]) and len(asked) == 7 * 8
    seqrec_prompts = [q for q, t in zip(server.prompts, asked) if t == "SFTTestSeqRec"]
    assert all("Please generate a recommendation list with 10 different items" in q for q in seqrec_prompts)
    assert all("intention" not in q for q in seqrec_prompts)
    # I1+ compares with the model's own SeqRec list: the fake's list for each user (target first + fillers).
    raw = ctx.raw
    expected_sr = 0
    for hist, (user, target) in table.items():
        target_item = ctx.sequential[user][-1]
        cat = raw.item2category[target_item][-1]
        expected_sr += sum(ctx.index.item_of(t) in set(raw.category2item[cat]) for t in right_list(ctx, target, 10))
    assert scores["reclm"]["SFT+TestPersonalControlRec"]["SRTargetCategoryRate"] == pytest.approx(expected_sr / 8)
    run_ = rd.load_run(s.run_dir)
    assert run_.complete and run_.kind == "model" and run_.tasks == list(TEST_TASKS)
    assert run_.scores == json.loads(json.dumps(scores))
    rows = run_.outputs("SFTTestItemCount")
    assert [r["index"] for r in rows] == list(range(8))
    assert [r["item_count"] for r in rows] == [11 + i % 5 for i in range(8)]  # k = topk + 1 + idx % 5
    assert all(r["items"][0] == r["target"] and all(r["exists"]) for r in rows)


def test_users_whose_seqrec_failed_get_no_control_samples(tmp_path, tiny_eval_ctx, fake_openai):
    """The original asks tasks 2-6 only for users whose SeqRec sample has an ``output_title_list``
    (``task_test.py:203-205``). It sets that key for every answered sample, also when the list is empty (a
    fine-tuned "" parses to [''], a general LLM's "" to []), and never for a failed request: a failed SeqRec
    gives no control sample, an answer without titles gives one whose SeqRec_Result is empty."""
    ctx = tiny_eval_ctx
    table = user_table(ctx, 6)
    users = ctx.users[:6]
    failing = {users[0], users[2]}
    no_titles = {users[1]: "", users[3]: "\n1. \n  \n"}  # answered, but the parsed list is empty

    def override(prompt, user, attempt):
        seqrec = "intention" not in prompt and "with 10 different" in prompt
        if seqrec and user in failing:
            return ("status", 500)
        if seqrec and user in no_titles:
            return text(no_titles[user])
        return None

    server = fake_openai(correct_server(ctx, table, override=override))
    s = settings(tmp_path, TEST_TASKS[:4], n=6)
    scores = run(ctx, server, s, retries=1)
    assert scores["counts"]["SFTTestSeqRec"] == {"samples": 6, "failed": 2, "empty": 2, "skipped_original": 2}
    assert scores["reclm"]["SFTTestSeqRec"]["Recall"] == pytest.approx(2 / 6)
    assert scores["original"]["SFTTestSeqRec"]["Recall"] == pytest.approx(2 / 4)  # the empty answers are scored
    answered = [u for u in users if u not in failing]
    for task in TEST_TASKS[1:4]:
        assert scores["counts"][task] == {"samples": 4, "failed": 0, "empty": 0, "skipped_original": 0}
        assert [r["user"] for r in rd.load_run(s.run_dir).outputs(task)] == answered
    # The SR baseline reads each user's own SeqRec list: the right list for users 4 and 5, nothing for 1 and 3.
    raw = ctx.raw
    sr = 0
    for user in users[4:]:
        cat = raw.item2category[ctx.sequential[user][-1]][-1]
        sr += sum(ctx.index.item_of(t) in set(raw.category2item[cat])
                  for t in right_list(ctx, ctx.title(ctx.sequential[user][-1]), 10))
    for counting in ("reclm", "original"):
        assert scores[counting]["SFT+TestPersonalControlRec"]["SRTargetCategoryRate"] == pytest.approx(sr / 4)


def test_garbage_errors_and_hangs_are_counted_failures(tmp_path, tiny_eval_ctx, fake_openai):
    ctx = tiny_eval_ctx
    table = user_table(ctx, 12)
    users = ctx.users[:12]
    behaviour = {users[1]: ("raw", b"<html>not json"), users[2]: ("text", ""), users[3]: ("status", 500),
                 users[4]: ("hang", 600.0), users[5]: ("json", {"no": "choices"}),
                 users[6]: ("json", {"choices": [{"text": None}]}), users[7]: ("status", 400),
                 users[8]: ("json", {"choices": []})}

    def override(prompt, user, attempt):
        if user == users[9] and attempt == 0:
            return ("status", 503)  # retried: the second attempt answers
        return behaviour.get(user)

    server = fake_openai(correct_server(ctx, table, override=override))
    s = settings(tmp_path, ["SFTTestSeqRec"], n=12)
    scores = run(ctx, server, s, timeout=3.0, retries=1)  # answers take far less, even on a busy machine
    c = scores["counts"]["SFTTestSeqRec"]
    # failed: garbage, 500, hang, no choices, null text, 400, empty choices; empty: the "" answer.
    assert c == {"samples": 12, "failed": 7, "empty": 1, "skipped_original": 7}
    assert scores["reclm"]["SFTTestSeqRec"]["Recall"] == pytest.approx(4 / 12)  # users 0, 9, 10, 11
    assert scores["original"]["SFTTestSeqRec"]["Count"] == 5  # the fine-tuned "" is scored, as the original
    assert scores["original"]["SFTTestSeqRec"]["Recall"] == pytest.approx(4 / 5)
    assert scores["reclm"]["SFTTestSeqRec"]["EmptyRate"] == pytest.approx(8 / 12)
    rows = {r["user"]: r for r in rd.load_run(s.run_dir).outputs("SFTTestSeqRec")}
    assert "timed out" in rows[users[4]]["error"] and "HTTP 500" in rows[users[3]]["error"]
    assert "malformed" in rows[users[1]]["error"] and rows[users[2]]["error"] is None
    assert server.attempts[next(q for q in server.prompts if HIST.search(q).group(1) in
                                [h for h, (u, _) in table.items() if u == users[7]])] == 1  # 400: not retried
    assert rows[users[9]]["error"] is None and rows[users[9]]["metrics"]["Recall"] == 1
    # A second run asks again for exactly the failed samples.
    before = len(server.prompts)
    run(ctx, server, s, timeout=3.0, retries=0)
    again = {table[HIST.search(q).group(1)][0] for q in server.prompts[before:]}
    assert again == {users[i] for i in (1, 3, 4, 5, 6, 7, 8)}


def test_no_server_or_only_failures_stop_with_a_clear_error(tmp_path, tiny_eval_ctx, fake_openai):
    ctx = tiny_eval_ctx
    dead = CompletionsConfig("http://127.0.0.1:9/v1", "fake")  # port 9 (discard): nothing listens
    s = settings(tmp_path, ["SFTTestSeqRec"], n=4)
    client = CompletionsClient(dead)
    with pytest.raises(UserError, match="cannot reach the server"):
        evaluate(ctx, HttpAnswerer(client, s, "fake"), s, base_url=dead.base_url, model_name="fake")
    server = fake_openai(lambda prompt, attempt: ("status", 500))
    with pytest.raises(ServerDown, match="3 requests in a row"):
        run(ctx, server, settings(tmp_path, ["SFTTestSeqRec"], n=12), retries=0, max_consecutive_failures=3,
            concurrency=1)
    with pytest.raises(UserError, match="not one of 4 requests got an answer"):
        run(ctx, server, settings(tmp_path, ["SFTTestSeqRec"], n=4, overwrite=True), retries=0,
            max_consecutive_failures=0)
    assert not rd.load_run(tmp_path / "run").complete


def test_cli_exits_2_when_the_server_is_down(tmp_path, tiny_dataset_dir):
    proc = subprocess.run([sys.executable, "-m", "reclm_jax.eval", "--base-url", "http://127.0.0.1:9/v1",
                           "--model-name", "m", "--data_path", str(tiny_dataset_dir), "--item_index", "title",
                           "--max_users", "2", "--output_dir", str(tmp_path / "r")],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error: cannot reach the server at http://127.0.0.1:9/v1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_general_llm_flattened_prompt_and_parser(tmp_path, tiny_eval_ctx, fake_openai):
    ctx = tiny_eval_ctx
    table = user_table(ctx, 5)
    u0 = ctx.users[0]

    def override(prompt, user, attempt):
        if user == u0 and "Notice! Do not explain" in prompt and "11 different" not in prompt:
            return text("Sorry, I cannot recommend anything.")  # no numbered line: skipped by the original
        return None

    server = fake_openai(correct_server(ctx, table, general=True, override=override))
    tasks = ["SFTTestSeqRec", "SFT+TestPersonalControlRec", "SFTTestItemCount"]
    s = settings(tmp_path, tasks, n=5, kind="general_llm")
    scores = run(ctx, server, s)
    seqrec = {r["input_text"] for r in rd.load_run(s.run_dir).outputs("SFTTestSeqRec")}
    first = next(q for q in server.prompts if q in seqrec)  # ItemCount's requests are sent alongside
    assert first.startswith("You are an expert recommender engine. You need to generate a recommendation list")
    assert first.endswith(" \nNotice! Do not explain the reason or include any other words.")
    assert "[INST]" not in first and "  " not in first.split(" \n")[0]
    control = [q for q in server.prompts if "intention" in q]
    assert control and all(q.endswith("1. title (category). Do not explain the reason or include any other words "
                                      "in the front of titles.") for q in control)
    # SeqRec keeps the "(Genre)" annotation (the original strips it only for the other tasks): no hit at all.
    assert scores["reclm"]["SFTTestSeqRec"]["Recall"] == 0
    assert scores["counts"]["SFTTestSeqRec"]["skipped_original"] == 1
    assert scores["original"]["SFTTestSeqRec"]["Count"] == 4
    for task in tasks[1:]:  # the annotation is dropped: every list is right
        assert scores["reclm"][task]["Recall"] == 1 and scores["reclm"][task]["CorrectCount"] == 1
    assert scores["counts"]["SFT+TestPersonalControlRec"]["samples"] == 5  # u0 was answered, if uselessly


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", JAX_PLATFORMS="cpu")
    return env


def _flaky_answer(ctx, table):
    """Deterministic: a right list, except HTTP 500 for every prompt whose hash is 0 mod 6."""
    right = correct_server(ctx, table)

    def answer(prompt, attempt):
        if int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % 6 == 0:
            return ("status", 500)
        return right(prompt, attempt)
    return answer


def test_resume_after_sigkill_asks_only_the_missing_samples(tmp_path, tiny_eval_ctx, tiny_dataset_dir,
                                                            fake_openai):
    ctx = tiny_eval_ctx
    n = 10
    table = user_table(ctx, n)
    server = fake_openai(_flaky_answer(ctx, table), delay=0.03)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "reclm_jax.eval", "--base-url", server.base_url, "--model-name", "fake",
           "--data_path", str(tiny_dataset_dir), "--item_index", "title", "--max_users", str(n),
           "--output_dir", str(out), "--concurrency", "2", "--retries", "0", "--json", str(tmp_path / "s.json")]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(server.prompts) < 25 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not rd.load_run(out).complete
    cached = {}
    for task in TEST_TASKS:
        for row in rd.read_outputs(out, task):
            if row["output_text"] is not None:
                cached[row["input_text"]] = row
    assert cached  # some answers made it to disk before the kill
    before = len(server.prompts)
    done = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    second = server.prompts[before:]
    assert not set(second) & set(cached)  # nothing answered before the kill is asked again
    # A reference run without a kill, against the same deterministic server.
    ref = run(ctx, server, EvalSettings(run_dir=tmp_path / "ref", name="m", tasks=TEST_TASKS, data_path="d",
                                        item_index="title", max_users=n, progress=False), retries=0)
    total = sum(c["samples"] for c in ref["counts"].values())
    failed = sum(c["failed"] for c in ref["counts"].values())
    assert len(second) == total - len(cached)
    assert failed > 0  # the hash rule fails some samples, which count and are asked again on resume
    got = json.loads((tmp_path / "s.json").read_text())
    assert got == json.loads(json.dumps(ref))
    assert rd.load_run(out).complete


def test_constrained_requests_carry_each_samples_constraint(tmp_path, tiny_eval_ctx, fake_openai):
    from reclm_jax.decoding import constraint_for_sample

    ctx = tiny_eval_ctx
    table = user_table(ctx, 3)
    server = fake_openai(correct_server(ctx, table))
    tasks = ["SFTTestSeqRec", "SFT-TestPersonalControlRec", "SFTTestPersonalCategoryRateMP_30"]
    s = settings(tmp_path, tasks, n=3, constrained=True)
    run(ctx, server, s)
    sent = [p["reclm_constraint"] for p in server.payloads]
    assert [json.loads(p["vllm_xargs"]["reclm_constraint"]) for p in server.payloads] == sent  # vLLM's plugin
    # SeqRec first; the two tasks built from its lists are asked together (their requests interleave).
    assert len(sent) == 9 and [c["task"] for c in sent[:3]] == ["SFTTestSeqRec"] * 3
    assert sorted(c["task"] for c in sent[3:]) == sorted(t for t in tasks[1:] for _ in range(3))
    for c in sent:  # the sample's fields as JSON: they give the rule the metrics score
        rule = constraint_for_sample(c["task"], c["input_field_data"])
        assert (rule.k_min, rule.k_max) == (10, 10) and rule.exclude == tuple(c["input_field_data"]["sub_sequential"])
        assert rule.category_mode == ("exclude" if c["task"].startswith("SFT-") else "none")
        assert rule.c_min == (c["input_field_data"]["category_count"] if "MP" in c["task"] else 0)
    assert rd.load_run(s.run_dir).info["constrained"] is True
    with pytest.raises(UserError, match="constrained"):  # the cached answers were made under constraints
        run(ctx, server, settings(tmp_path, tasks, n=3))
