"""``python -m reclm_jax.rl.reward`` end to end on the tiny dataset with the tiny SASRec teacher."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from reclm_jax.data.samples import SampleBuilder
from reclm_jax.data.task_setup import build_task_context
from reclm_jax.data.tasks import TaskSettings
from reclm_jax.data.templates import render_output_list
from reclm_jax.errors import UserError
from reclm_jax.rl.reward import RewardCatalogue, RewardModel, main

TASKS = ["RLSeqRec", "RL+PersonalControlRec", "RL-PersonalControlRec", "RLPersonalCategoryRateLP_20",
         "RLPersonalCategoryRateMP_30", "RLPersonalCategoryRateEP_50", "RLItemCount", "RLSeqRanking"]


@pytest.fixture(scope="module")
def rl_lines(tiny_dataset_dir, teacher):
    """One RL val sample per task, answered by a hand-made list: the target, a title that does not exist, a
    history item, then the teacher's own list (or the candidates) up to k + 1 lines."""
    ctx, _ = build_task_context(tiny_dataset_dir, "title", None, "none", TaskSettings(val_num_per_task=1))
    samples = SampleBuilder(ctx, TASKS, "val", teacher, seed=0).epoch(0)
    lines = []
    for s in samples:
        f = s["input_field_data"]
        rest = f.get("SeqRec_Result") or f.get("candidate_items") or \
            teacher.topk([f["sub_sequential"]], f["item_count"])[0]
        titles = [f["target_item_title"], "Not A Real Movie (2099)", ctx.title(f["sub_sequential"][0])]
        titles += [ctx.title(i) for i in rest if i != f["target_item"]][:f["item_count"] + 1 - len(titles)]
        lines.append({"task": s["task"], "input_field_data": f, "output_text": render_output_list(titles, "\n")})
    assert sorted({x["task"] for x in lines}) == sorted(TASKS)
    return ctx, lines


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_cli_writes_rewards_and_terms(rl_lines, tiny_dataset_dir, tiny_teacher_dir, teacher, tmp_path):
    ctx, records = rl_lines
    src = _write(tmp_path / "samples.jsonl", records)
    out = tmp_path / "rewards.jsonl"
    assert main(["--data_path", str(tiny_dataset_dir), "--teacher_checkpoint", str(tiny_teacher_dir),
                 "--item_index", "title", "--input", str(src), "--output", str(out), "--batch", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(records)
    expected = RewardModel(RewardCatalogue.build(ctx.index, ctx.raw.category2item), teacher).score(
        [(r["task"], r["input_field_data"], r["output_text"]) for r in records])
    for rec, row, want in zip(records, rows, expected):
        assert {k: row[k] for k in rec} == rec  # the input line is kept as it was
        k = rec["input_field_data"]["item_count"]
        assert len(row["item_rewards"]) == len(row["titles"]) == len(row["items"]) == k + 1
        assert row["list_reward"] == pytest.approx(want.list_reward) and row["item_rewards"] == want.item_rewards
        assert row["items"][0] == rec["input_field_data"]["target_item"] and row["items"][1] is None
        statuses = row["terms"]["statuses"]
        # RLSeqRanking tests candidates first: the history item is no candidate.
        history = "not_candidate" if rec["task"] == "RLSeqRanking" else "in_history"
        assert statuses[1:3] == ["non_existent", history] and statuses[-1] == "extra"
        assert row["item_rewards"][1:3] == [-1.0, -1.0] and row["item_rewards"][-1] == -1.0
        if rec["task"] in ("RLSeqRec", "RLItemCount", "RLSeqRanking"):
            assert row["item_rewards"][0] == 1.0  # the target's rank score
    # One hand check against the teacher itself: an ok line of RLSeqRec scores 1/log2(r + 3) with its global rank.
    seqrec = next(i for i, r in enumerate(records) if r["task"] == "RLSeqRec")
    row, f = rows[seqrec], records[seqrec]["input_field_data"]
    j = row["terms"]["statuses"].index("ok", 1)
    (rank,) = teacher.ranking([f["sub_sequential"]], [[row["items"][j]]])[0]
    assert row["terms"]["teacher_ranks"][j] == rank
    assert row["item_rewards"][j] == pytest.approx(1 / math.log2(rank + 3))
    assert not list(tmp_path.glob("*.tmp*"))


def test_cli_bad_input_is_exit_2_naming_line_and_field(rl_lines, tiny_dataset_dir, tiny_teacher_dir, tmp_path):
    _, records = rl_lines
    common = ["--data_path", str(tiny_dataset_dir), "--teacher_checkpoint", str(tiny_teacher_dir),
              "--output", str(tmp_path / "out.jsonl")]
    bad = [records[0], {k: v for k, v in records[1].items() if k != "output_text"}]
    src = _write(tmp_path / "missing.jsonl", bad)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "reclm_jax.rl.reward", *common, "--input", str(src)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"error: {src}:2: missing field 'output_text' (each line needs task, " \
                               "input_field_data, output_text)"
    assert not (tmp_path / "out.jsonl").exists()
    # A field of input_field_data the task's reward needs, on line 3 (a blank line is skipped, but counted).
    rate = next(r for r in records if r["task"].startswith("RLPersonalCategoryRate"))
    broken = dict(rate, input_field_data={k: v for k, v in rate["input_field_data"].items() if k != "category_count"})
    src = tmp_path / "field.jsonl"
    src.write_text(json.dumps(records[0]) + "\n\n" + json.dumps(broken) + "\n")
    with pytest.raises(UserError, match=r"field\.jsonl:3: input_field_data has no 'category_count'"):
        main(common + ["--input", str(src)])
    with pytest.raises(UserError, match=r":1: field 'task' must be a JSON string"):
        main(common + ["--input", str(_write(tmp_path / "t.jsonl", [dict(records[0], task=3)]))])
    (tmp_path / "j.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match=r"j\.jsonl:1: not JSON"):
        main(common + ["--input", str(tmp_path / "j.jsonl")])
    with pytest.raises(UserError, match="give --teacher_checkpoint .* or --teacher_port"):
        main(["--data_path", str(tiny_dataset_dir), "--input", str(src), "--output", str(tmp_path / "o")])
