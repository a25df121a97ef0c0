"""``python -m reclm_jax.eval.report`` on synthetic evaluated runs: its tables hold the runs' numbers in both
countings, the summary their headline metrics and failure totals, the examples are the same users across runs
and escaped, the plots are real images, mixed runs warn and keep their common tasks, and mistakes exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reclm_jax.errors import UserError
from reclm_jax.eval import report, report_browser
from reclm_jax.eval.report_tables import fmt
from reclm_jax.testing.eval_runs import TEST_TASKS, write_synthetic_run as make_run

TASKS = TEST_TASKS
HOSTILE = "<script>alert('x')</script> & \"Tom & Jerry\" <b>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [make_run(root, "base", "general_llm", 1, indices=range(0, 8)),
            make_run(root, "sft", "model", 2, indices=[1, 2, 3, 5, 6, 7], special={2: HOSTILE}),
            make_run(root, "teacher", "teacher", 3, indices=range(1, 8)),
            make_run(root, "popularity", "popularity", 4, outputs=False)]


@pytest.fixture(scope="module")
def built(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report"
    assert report.main([*map(str, runs), "--out", str(out), "--examples", "2", "--title", "T & <test>"]) == 0
    return out


def test_tables_hold_each_runs_scores_in_both_countings(runs, built):
    rep = json.loads((built / "report.json").read_text())
    labels = [r["label"] for r in rep["runs"]]
    assert labels == ["base", "sft", "teacher", "popularity"] and rep["tasks"] == list(TASKS)
    md = (built / "report.md").read_text()
    for run, label in zip(runs, labels):
        scores = json.loads((run / "scores.json").read_text())
        for counting in ("reclm", "original"):
            for t in TASKS:
                assert set(rep["tables"][counting][t]) >= set(scores[counting][t])
                for m, v in scores[counting][t].items():
                    assert rep["tables"][counting][t][m][label] == v
        for t in TASKS:
            assert rep["counts"][t][label] == scores["counts"][t]
    # The Markdown row of one metric lists every run's value in order, for each counting.
    sr = {c: [json.loads((r / "scores.json").read_text())[c]["SFTTestSeqRec"]["NDCG"] for r in runs]
          for c in ("reclm", "original")}
    for c in ("reclm", "original"):
        assert "| NDCG ↑ | " + " | ".join(fmt("NDCG", v) for v in sr[c]) + " |" in md
    assert md.count("ounting ours (") == len(TASKS) + 1 and md.count("ounting the original's (") == len(TASKS) + 1


def test_summary_has_headline_metrics_and_failure_totals(runs, built):
    rep = json.loads((built / "report.json").read_text())
    summary = rep["summary"]["reclm"]
    cols = [tuple(c) for c in summary["columns"]]
    assert cols[:2] == [("SFTTestSeqRec", "Recall"), ("SFTTestSeqRec", "NDCG")]
    assert ("SFT-TestPersonalControlRec", "TargetCategoryRate") in cols
    assert ("SFTTestPersonalCategoryRateMP_30", "CategoryRateCorrect") in cols
    assert ("SFTTestItemCount", "CorrectCount") in cols and cols[-2:] == [("", "failed"), ("", "samples")]
    for run, (label, row) in zip(runs, summary["rows"].items()):
        scores = json.loads((run / "scores.json").read_text())
        for (t, m), v in zip(cols[:-2], row):
            assert v == scores["reclm"][t][m]
        assert row[-2] == sum(scores["counts"][t]["failed"] for t in TASKS)
        assert row[-1] == sum(scores["counts"][t]["samples"] for t in TASKS)


def test_examples_are_the_first_samples_every_run_answered_and_escaped(built):
    rep = json.loads((built / "report.json").read_text())
    for t in TASKS:
        ex = rep["examples"][t]
        # base has 0..7, sft 1,2,3,5,6,7, teacher 1..7, popularity no outputs: common 1,2,3,...
        assert [e["index"] for e in ex["examples"]] == [1, 2] and ex["missing"] == ["popularity"]
        assert set(ex["examples"][0]["answers"]) == {"base", "sft", "teacher"}
        assert ex["examples"][0]["answers"]["sft"]["items"] == ["sft movie 1 & co", "other 1"]
    html = (built / "index.html").read_text()
    assert HOSTILE not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;Tom" in html
    assert "T &amp; &lt;test&gt;" in html and "sft movie 1 &amp; co" in html
    assert html.count("<script>") == 1  # the page's own check script only
    assert html.count("<details><summary>sample ") == 2 * len(TASKS)
    assert "http://" not in html.replace("http://x/v1", "") and "<link" not in html  # nothing external


def test_plots_are_images_with_content(built):
    import matplotlib.image as mpimg

    rep = json.loads((built / "report.json").read_text())
    assert set(rep["plots"]) == {"control", *TASKS}
    html = (built / "index.html").read_text()
    for rel in rep["plots"].values():
        img = mpimg.imread(built / rel)
        assert img.shape[1] == 1200 and img.shape[0] >= 400  # 12 in at 100 dpi
        assert img[..., :3].std() > 0.05  # not one colour
        assert f"src='{rel}'" in html


def test_runs_over_different_data_and_tasks_warn_and_keep_common_tasks(tmp_path, runs, capsys):
    other = make_run(tmp_path, "sft", "model", 9, tasks=TASKS[:3] + ("SFTTestSeqRanking",), data_path="/data/other",
                     complete=False)
    out = tmp_path / "rep"
    assert report.main([str(runs[0]), str(other), "--out", str(out), "--examples", "0"]) == 0
    err = capsys.readouterr().err
    assert "different datasets" in err and "SFTTestSeqRanking" in err and "sft: the run is not complete" in err
    rep = json.loads((out / "report.json").read_text())
    # datasets, base's and sft's extra tasks, sft incomplete; shown on the page too
    assert rep["tasks"] == list(TASKS[:3]) and len(rep["warnings"]) == 4
    html = (out / "index.html").read_text()
    assert all(w.replace("'", "&#x27;") in html for w in rep["warnings"])
    assert "SFTTestItemCount" not in html.split("<h2 id='runs'>")[1].split("Warnings")[0]
    assert all(not e["examples"] for e in rep["examples"].values())
    # Writing again replaces the report folder (it holds a report).
    assert report.main([str(other), str(other), "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in rep["runs"]] == ["sft", "sft (2)"]
    assert rep["tasks"] == list(TASKS[:3]) + ["SFTTestSeqRanking"]


def test_user_mistakes_raise_user_errors(tmp_path, runs):
    def fails(args, words):
        with pytest.raises(UserError) as e:
            report.main(args)
        assert words in str(e.value), str(e.value)

    out = str(tmp_path / "rep")
    fails([str(tmp_path / "missing"), "--out", out], "no such run folder")
    no_scores = make_run(tmp_path, "x", "model", 5)
    (no_scores / "scores.json").unlink()
    fails([str(no_scores), "--out", out], "no scores.json")
    bad = make_run(tmp_path, "y", "model", 6)
    (bad / "scores.json").write_text("{not json")
    fails([str(bad), "--out", out], "not valid JSON")
    (bad / "scores.json").write_text(json.dumps({"reclm": {"SFTTestSeqRec": [1]}, "original": {}, "counts": {}}))
    fails([str(bad), "--out", out], "reclm.SFTTestSeqRec is not a {metric: value} object")
    fails([str(runs[0] / "run.json"), "--out", out], "not a folder")
    fails([str(runs[0]), "--out", out, "--screenshot", "s.png", "--screenshot-height", "50"], "or 0: the whole")
    fails([str(runs[0]), "--out", str(tmp_path / "nowhere" / "rep")], "parent folder")
    fails([str(runs[0]), "--out", ""], "empty path")
    fails([str(runs[0]), "--out", str(runs[1])], "not a report")
    fails([str(runs[0]), "--out", str(runs[0] / "run.json")], "is a file")
    fails([str(runs[0]), "--out", out, "--examples", "-1"], "--examples")
    fails([str(runs[0]), "--out", out, "--screenshot", str(tmp_path / "no" / "a.png")], "does not exist")
    disjoint = make_run(tmp_path, "z", "model", 7, tasks=("SFTTestSeqRanking",))
    fails([str(runs[0]), str(disjoint), "--out", out], "share no scored task")
    assert not (tmp_path / "rep").exists()


def test_command_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "reclm_jax.eval.report", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such run folder"]


def test_screenshot_without_chromium_warns_and_keeps_the_report(tmp_path, runs, capsys, monkeypatch):
    monkeypatch.setenv(report_browser.ENV, str(tmp_path / "no-such-browser"))
    assert report_browser.find_browser() is None
    out = tmp_path / "rep"
    assert report.main([str(runs[1]), "--out", str(out), "--screenshot", str(tmp_path / "s.png"),
                        "--examples", "0"]) == 0
    assert "no Chromium found" in capsys.readouterr().err
    assert (out / "index.html").is_file() and not (tmp_path / "s.png").exists()
