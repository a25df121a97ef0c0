"""The evaluated-run folder: round trip, a cache cut by a kill, errors that name the file."""

from __future__ import annotations

import json

import pytest

from reclm_jax.errors import UserError
from reclm_jax.eval import run_dir as rd


def test_round_trip(tmp_path):
    info = rd.make_info("sft", "model", "http://x/v1", "data", "title64_t", ["SFTTestSeqRec", "SFTTestItemCount"],
                        100, model_name="merged")
    rd.write_info(tmp_path, info)
    scores = {"reclm": {"SFTTestSeqRec": {"NDCG": 0.5}}, "original": {"SFTTestSeqRec": {"NDCG": 0.6}},
              "counts": {"SFTTestSeqRec": {"samples": 2, "failed": 1, "skipped_original": 1}}}
    rd.write_scores(tmp_path, scores)
    rows = [{"index": 1, "task": "SFT+TestPersonalControlRec", "input_text": "p", "output_text": "1. Ä",
             "error": None, "items": ["Ä"]}]
    rd.write_outputs(tmp_path, "SFT+TestPersonalControlRec", rows)
    run = rd.load_run(tmp_path)
    assert run.name == "sft" and run.kind == "model" and run.tasks == ["SFTTestSeqRec", "SFTTestItemCount"]
    assert not run.complete and run.info["model_name"] == "merged" and run.info["max_users"] == 100
    assert run.info["created"].endswith("+00:00")
    assert run.scores == scores
    assert run.outputs("SFT+TestPersonalControlRec") == rows and run.outputs("SFTTestItemCount") == []
    assert (tmp_path / "outputs" / "SFT+TestPersonalControlRec.jsonl").exists()
    with pytest.raises(ValueError):
        rd.make_info("x", "human", None, "d", "title", [], None)


def test_a_line_cut_by_a_kill_is_dropped_and_repaired(tmp_path):
    with rd.OutputAppender(tmp_path, "T") as out:
        out.append({"index": 0, "output_text": "a"})
    with open(rd.outputs_path(tmp_path, "T"), "a") as f:
        f.write('{"index": 1, "output_te')  # the writer died here
    assert rd.read_outputs(tmp_path, "T") == [{"index": 0, "output_text": "a"}]
    with rd.OutputAppender(tmp_path, "T") as out:
        out.append({"index": 2, "output_text": "c"})
    assert [r["index"] for r in rd.read_outputs(tmp_path, "T")] == [0, 2]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="not an evaluated run"):
        rd.load_run(tmp_path)
    (tmp_path / "run.json").write_text("{oops")
    with pytest.raises(UserError, match="run.json: not valid JSON"):
        rd.load_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(UserError, match="missing kind, tasks"):
        rd.load_run(tmp_path)
    path = rd.outputs_path(tmp_path, "T")
    path.parent.mkdir()
    path.write_text('{"index": 0}\ngarbage\n')
    with pytest.raises(UserError, match=r"T.jsonl:2"):
        rd.read_outputs(tmp_path, "T")
