"""Sample dumps (``python -m reclm_jax.eval --dump_samples``) and ``python -m reclm_jax.eval.score`` on them."""

from __future__ import annotations

import json

import pytest

from reclm_jax.errors import UserError
from reclm_jax.eval import run_dir as rd
from reclm_jax.eval.__main__ import main as eval_main
from reclm_jax.eval.score import main as score_main


def dump(tmp_path, data, *extra, name="samples.jsonl"):
    path = tmp_path / name
    assert eval_main(["--dump_samples", str(path), "--data_path", str(data), "--item_index", "title", *extra]) == 0
    return [json.loads(line) for line in path.read_text().splitlines()], path


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dump_then_score_in_both_countings(tmp_path, tiny_dataset_dir):
    samples, path = dump(tmp_path, tiny_dataset_dir, "--tasks", "SFTTestItemCount,SFTTestSeqRec", "--max_users", "6")
    assert [s["task"] for s in samples] == ["SFTTestSeqRec"] * 6 + ["SFTTestItemCount"] * 6  # SeqRec first
    assert [s["index"] for s in samples] == list(range(12))
    assert all({"index", "task", "input_text", "input_field_data"} <= set(s) for s in samples)
    fields = samples[0]["input_field_data"]
    assert {"user", "target_item", "target_item_title", "sub_sequential", "history", "target_category",
            "item_count"} <= set(fields)
    assert samples[0]["input_text"].startswith("[INST] <<SYS>>")  # llama-2 without a tokenizer, as the original
    # Answers: the target alone (one line) for SeqRec samples 0-3, a failed one (null), one missing; every
    # ItemCount sample gets its target alone.
    outputs = [{"index": s["index"], "output_text": f"1. {s['input_field_data']['target_item_title']}"}
               for s in samples if s["index"] not in (4, 5)]
    outputs.append({"index": 4, "output_text": None, "error": "timeout"})
    out = write_lines(tmp_path / "outputs.jsonl", outputs)
    scores_file, run = tmp_path / "scores.json", tmp_path / "run"
    assert score_main(["--data_path", str(tiny_dataset_dir), "--item_index", "title", "--samples", str(path),
                       "--outputs", str(out), "--json", str(scores_file), "--output_dir", str(run)]) == 0
    scores = json.loads(scores_file.read_text())
    seq, ic = "SFTTestSeqRec", "SFTTestItemCount"
    assert scores["reclm"][seq]["Count"] == 6 and scores["reclm"][seq]["Recall"] == pytest.approx(4 / 6)
    assert scores["original"][seq]["Count"] == 4 and scores["original"][seq]["Recall"] == 1
    assert scores["reclm"][seq]["NDCG"] == pytest.approx(4 / 6) and scores["reclm"][seq]["CorrectCount"] == 0
    assert scores["reclm"][ic]["Recall"] == 1 and scores["original"][ic]["Count"] == 6
    assert scores["counts"][seq] == {"samples": 6, "failed": 2, "empty": 0, "skipped_original": 2}
    loaded = rd.load_run(run)
    assert loaded.complete and loaded.kind == "model" and loaded.tasks == [seq, ic] and loaded.scores == scores
    rows = loaded.outputs(seq)
    assert [r["error"] for r in rows][4:] == ["timeout", "no output"]


def test_score_rejects_bad_output_files(tmp_path, tiny_dataset_dir):
    _, path = dump(tmp_path, tiny_dataset_dir, "--tasks", "SFTTestSeqRec", "--max_users", "2")
    base = ["--data_path", str(tiny_dataset_dir), "--item_index", "title", "--samples", str(path), "--outputs"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"index": 0, "output_text": "1. A"}\n{"index": 0, "output_text": "1. B"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: index 0 appears twice"):
        score_main(base + [str(bad)])
    bad.write_text('{"index": 0, "output_text": "1. A"}\nnot json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not JSON"):
        score_main(base + [str(bad)])
    bad.write_text('{"index": 9, "output_text": "1. A"}\n')
    with pytest.raises(UserError, match="no sample has"):
        score_main(base + [str(bad)])
    bad.write_text('{"output_text": "1. A"}\n')
    with pytest.raises(UserError, match="missing index"):
        score_main(base + [str(bad)])


def test_general_llm_dump_flattens_prompts(tmp_path, tiny_dataset_dir):
    samples, _ = dump(tmp_path, tiny_dataset_dir, "--tasks", "SFTTestSeqRec", "--max_users", "2", "--general_llm")
    assert all(s["general_llm"] for s in samples)
    assert samples[0]["input_text"].startswith("You are an expert recommender engine. You need to generate")
    assert samples[0]["input_text"].endswith(" \nNotice! Do not explain the reason or include any other words.")


def test_dump_of_control_tasks_needs_seqrec_answers_or_a_teacher(tmp_path, tiny_dataset_dir, tiny_teacher_dir):
    with pytest.raises(UserError, match="--seqrec_outputs"):
        dump(tmp_path, tiny_dataset_dir, "--tasks", "SFT+TestPersonalControlRec", "--max_users", "3")
    seq, _ = dump(tmp_path, tiny_dataset_dir, "--tasks", "SFTTestSeqRec", "--max_users", "5", name="seq.jsonl")
    # A system answered SeqRec for users 0, 1 and 3 (user 2 failed, user 4 missing), with fixed titles.
    titles = [seq[j]["input_field_data"]["target_item_title"] for j in range(3)]
    answers = write_lines(tmp_path / "seq_out.jsonl",
                          [{"index": i, "output_text": "1. " + "\n 2. ".join(titles)} for i in (0, 1, 3)]
                          + [{"index": 2, "output_text": None}])
    samples, _ = dump(tmp_path, tiny_dataset_dir, "--tasks", "SFT+TestPersonalControlRec", "--max_users", "5",
                      "--seqrec_outputs", str(answers), name="ctrl.jsonl")
    users = [s["input_field_data"]["user"] for s in samples]
    assert users == [seq[i]["input_field_data"]["user"] for i in (0, 1, 3)]  # only answered users, in order
    items = [seq[j]["input_field_data"]["target_item"] for j in range(3)]
    assert all(s["input_field_data"]["SeqRec_Result"] == items for s in samples)
    assert all(s["input_field_data"]["SeqRec_Source"] == "model" for s in samples)
    with pytest.warns(UserWarning, match="comes from the teacher"):
        fallback, _ = dump(tmp_path, tiny_dataset_dir, "--tasks", "SFT-TestPersonalControlRec", "--max_users", "3",
                           "--teacher_checkpoint", str(tiny_teacher_dir), name="fb.jsonl")
    assert len(fallback) == 3 and all(s["input_field_data"]["SeqRec_Source"] == "teacher" for s in fallback)
    assert all(len(s["input_field_data"]["SeqRec_Result"]) == 10 for s in fallback)
