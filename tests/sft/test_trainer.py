"""The SFT command end to end on the tiny world: exact resume after SIGKILL, the same loss curve on an
8-device mesh, and a merged export equal to the trained adapter model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

CONFIG = str(Path(__file__).parents[2] / "configs" / "sft_tiny.yaml")
RUN = ["train.max_steps=8", "train.save_every=2", "lora.dropout=0.1", "data.val_tasks=[]", "data.topk=3"]


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _sft(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "reclm_jax.sft", "--config", CONFIG, *args], env=env,
                          capture_output=True, text=True, timeout=600, **kw)


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def _adapter(run_dir: Path) -> dict:
    return load_file(str(run_dir / "adapter" / "lora_adapter.safetensors"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("sft_ref")
    r = _sft(tiny_overrides(out, *RUN), _env())
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_run_outputs(reference_run):
    assert (reference_run / "config.yaml").is_file()
    assert len(_losses(reference_run)) == 8
    steps = sorted(int(p.name) for p in (reference_run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 8 and len(steps) <= 3  # keep_checkpoints


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(reference_run, tmp_path, tiny_overrides):
    args = tiny_overrides(tmp_path, *RUN)
    # The run pauses after step 5 through the trainer's after_step hook (see paused_sft.py).
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("paused_sft.py")), "5", CONFIG, *args],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 500
        while time.time() < deadline:  # step 5 is logged after checkpoint 4 was written
            log = tmp_path / "log.jsonl"
            if log.is_file() and any(json.loads(x).get("step") == 5 for x in log.read_text().splitlines()):
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("the run never reached step 5")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "adapter").exists()
    r = _sft(args + ["resume=true"], _env())
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = _adapter(reference_run), _adapter(tmp_path)
    assert set(ref) == set(got)
    diff = max(float(np.max(np.abs(ref[k] - got[k]))) for k in ref)
    assert diff <= 1e-6
    assert max(float(np.max(np.abs(v))) for k, v in ref.items() if "lora_B" in k) > 0  # training happened
    # the resumed run continued from checkpoint 4 (a fresh start would log steps 1.. again)
    steps = [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 5, 6, 7, 8]
    # steps 5.. were run twice (once before the kill); the resumed run logs the same losses for them
    np.testing.assert_allclose(_losses(tmp_path)[-4:], _losses(reference_run)[-4:], atol=1e-6)


def test_eight_device_mesh_gives_the_same_loss_curve(reference_run, tmp_path, tiny_overrides):
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = _sft(tiny_overrides(tmp_path, *RUN, "mesh.data=2", "mesh.fsdp=2", "mesh.tp=2"), env)
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_allclose(_losses(tmp_path), _losses(reference_run), atol=1e-4)


def test_scanned_layers_train_the_same_run(reference_run, tmp_path, tiny_overrides):
    # model.scan_layers=true from the command line: the same losses (LoRA dropout 0.1 draws the same masks) and
    # an adapter file with the unrolled run's tensor names.
    r = _sft(tiny_overrides(tmp_path, *RUN, "model.scan_layers=true"), _env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "scan_layers: true" in (tmp_path / "config.yaml").read_text()
    np.testing.assert_allclose(_losses(tmp_path), _losses(reference_run), atol=1e-5)
    ref, got = _adapter(reference_run), _adapter(tmp_path)
    assert list(got) == list(ref)
    assert max(float(np.max(np.abs(ref[k] - got[k]))) for k in ref) <= 1e-5


def test_merged_export_equals_the_trained_adapter_model(reference_run, tmp_path, sft_world):
    from reclm_jax.models.adapter_io import load_adapter
    from reclm_jax.models.hf_loading import load_llama

    out = tmp_path / "merged"
    r = subprocess.run([sys.executable, "-m", "reclm_jax.export", "--base", str(sft_world["model"]), "--adapter",
                        str(reference_run / "adapter"), "--out", str(out)], env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    tokens = jax.numpy.asarray(np.random.default_rng(0).integers(0, 500, (2, 24)), dtype=jax.numpy.int32)
    base = load_llama(sft_world["model"], progress=False)
    name = load_adapter(reference_run / "adapter", base)
    want = base(tokens, adapter=name).logits
    got = load_llama(out, progress=False)(tokens).logits
    assert float(jax.numpy.max(jax.numpy.abs(want - base(tokens).logits))) > 1e-4  # the adapter matters
    assert float(jax.numpy.max(jax.numpy.abs(want - got))) <= 1e-5


def test_checkpoints_carry_the_validation_of_their_step(tmp_path, tiny_overrides):
    """Validation at a step runs before that step's checkpoint, so a resume sees its best score and history;
    and the logged throughput leaves out the first (compiling) window."""
    from reclm_jax.train.checkpoint import CheckpointStore

    args = tiny_overrides(tmp_path, "train.max_steps=4", "train.save_every=2", "train.val_every=2",
                          "data.val_tasks=[SFTTestSeqRec]", "data.val_num_per_task=4", "data.topk=3")
    r = _sft(args, _env())
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    val_steps = [row["step"] for row in rows if row["kind"] == "val"]
    assert val_steps == [2, 4]
    store = CheckpointStore(tmp_path / "checkpoints", create=False)
    for step in (2, 4):
        meta = store.read_meta(step)
        assert meta["last_val_step"] == step
        assert "after" in meta["history"] and meta["best"] >= 0.0
    store.close()
    train = [row for row in rows if row["kind"] == "train"]
    assert "label_tokens_per_s" not in train[0]  # step 1's window holds the compile
    assert all(row["label_tokens_per_s"] > 0 for row in train[1:] if "label_tokens_per_s" in row)
    assert any("label_tokens_per_s" in row for row in train[1:])


@pytest.mark.slow
def test_constrained_validation_reports_lists_that_obey_their_samples(tmp_path, tiny_overrides):
    """``train.val_constrained``: the base-model and final validations decode under each sample's catalogue
    constraint, so even the random model's lists are real, distinct, of the asked length and category."""
    args = tiny_overrides(tmp_path, "train.max_steps=1", "train.val_constrained=true", "train.val_before=true",
                          "train.val_max_new_tokens=0", "data.topk=3", "data.val_num_per_task=4",
                          "data.val_tasks=[SFTTestSeqRec,SFT+TestPersonalControlRec]")
    r = _sft(args, _env())
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for when in ("before", "after"):
        res, ratios = metrics[when]["results"], metrics[when]["ratios"]
        for task in ("SFTTestSeqRec", "SFT+TestPersonalControlRec"):
            assert res[task]["Count"] == 4 and res[task]["CorrectCount"] == 1.0, (when, task)
            assert res[task]["NonExistRate"] == res[task]["RepeatRate"] == res[task]["InHistoryRate"] == 0.0
        assert ratios["SFT+TestPersonalControlRec"]["TargetCategoryRatio"] == 1.0
