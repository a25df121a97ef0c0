"""``python -m reclm_jax.eval``: the test stage's client (the original's ``task_test.py``), or a sample dump.

    python -m reclm_jax.eval --base-url http://127.0.0.1:13579/v1 --model-name merged --data_path DIR \\
        --item_index title64_t --tokenizer MODEL_DIR [--tasks T1,T2] [--max_users N] [--output_dir RUN] \\
        [--general_llm] [--concurrency 16] [--timeout S] [--retries N] [--max_tokens 1024] [--json FILE]
    python -m reclm_jax.eval --dump_samples samples.jsonl --data_path DIR ... [--seqrec_outputs FILE]

The first sends the seven test tasks (``eval.test_samples.TEST_TASKS``, the original's order) to an
OpenAI-compatible server, caches every answer in ``--output_dir`` (a run resumes where it stopped), prints
the metrics in both countings and writes an evaluated run folder (``eval.run_dir``). The second writes the
test samples (``index``, ``task``, ``input_text``, ``input_field_data``) for any other system and exits; score
its outputs with ``python -m reclm_jax.eval.score``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from reclm_jax.atomic import open_atomic
from reclm_jax.cli import run_main
from reclm_jax.data.fuzzy import FuzzyMatcher
from reclm_jax.data.tasks import TaskContext
from reclm_jax.errors import UserError
from reclm_jax.eval.client import EvalSettings, HttpAnswerer, evaluate, print_scores
from reclm_jax.eval.completions import CompletionsClient, CompletionsConfig
from reclm_jax.eval.dataset_flags import add_dataset_flags, build_context, make_teacher
from reclm_jax.eval.score import read_outputs_file
from reclm_jax.eval.test_samples import SEQREC, build_task_samples, needs_seqrec, parse_tasks, seqrec_titles

DEFAULT_BASE_URL = "http://127.0.0.1:13579/v1"  # the original's --vllm_port 13579


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.eval", description=__doc__.split("\n\n")[0])
    add_dataset_flags(p)
    p.add_argument("--base-url", "--base_url", dest="base_url", default=None,
                   help=f"the server's OpenAI API root (default {DEFAULT_BASE_URL})")
    p.add_argument("--vllm_port", type=int, default=None, help="the original's flag: --base-url on 127.0.0.1:PORT")
    p.add_argument("--model-name", "--model_name", dest="model_name", default=None,
                   help="the served model's name (the requests' \"model\")")
    p.add_argument("--name", default=None, help="the run's name in reports (default: --model-name)")
    p.add_argument("--output_dir", "--output_path", dest="output_dir", default=None,
                   help="the evaluated run folder and answer cache (default: $RECLM_JAX_RUNS/eval/<name>)")
    p.add_argument("--general_llm", action="store_true",
                   help="a general LLM: the original's flattened prompt and general-LLM parser")
    p.add_argument("--concurrency", "--num_process", dest="concurrency", type=int, default=16,
                   help="requests in flight at once")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed request")
    p.add_argument("--max_consecutive_failures", type=int, default=32,
                   help="stop (answers kept) after this many failed requests in a row; 0: never")
    p.add_argument("--max_tokens", "--gen_max_length", dest="max_tokens", type=int, default=1024)
    p.add_argument("--constrained", action="store_true",
                   help="send each sample's constraint (reclm_constraint: its task and fields) to a reclm_jax.serve "
                        "started with --constrain-data, or a vLLM started by scripts/serve_vllm.sh --constrain-data, "
                        "on the same dataset and --item_index")
    p.add_argument("--overwrite", action="store_true", help="discard the answers cached in --output_dir")
    p.add_argument("--json", default=None, help="also write the scores here ({reclm, original, counts})")
    p.add_argument("--dump_samples", default=None, help="write the test samples to this JSONL file and exit")
    p.add_argument("--seqrec_outputs", default=None,
                   help="with --dump_samples: a system's SFTTestSeqRec answers ({index, output_text} lines, index = "
                        "the SeqRec sample's) that tasks 2-6 are built from")
    return p


def dump_samples(a: argparse.Namespace, ctx: TaskContext, tasks: Sequence[str]) -> int:
    """Writes the samples of ``tasks``; tasks 2-6 come from ``--seqrec_outputs`` (users with an answer) or,
    without it, from the teacher's SeqRec lists (the documented fallback)."""
    teacher = make_teacher(a, ctx) if any(needs_seqrec(t) for t in tasks) else None
    seqrec = None
    if a.seqrec_outputs:
        outputs = read_outputs_file(a.seqrec_outputs)
        samples = build_task_samples(ctx, SEQREC, max_users=a.max_users, progress=False)
        seqrec = seqrec_titles(samples, [outputs.get(s["position"], (None, None))[0] for s in samples],
                               FuzzyMatcher(ctx.index.titles), a.general_llm, not a.no_idx)
        teacher = None
    n = 0
    with open_atomic(a.dump_samples, "w") as f:
        for task in tasks:
            for s in build_task_samples(ctx, task, max_users=a.max_users, seqrec_titles=seqrec, teacher=teacher,
                                        general_llm=a.general_llm):
                line = {"index": n, "task": task, "position": s["position"], "input_text": s["input_text"],
                        "input_field_data": s["input_field_data"], "general_llm": a.general_llm}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                n += 1
    print(f"wrote {n} samples of {len(tasks)} tasks to {a.dump_samples}", file=sys.stderr)
    return 0


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    tasks = parse_tasks(a.tasks)
    ctx = build_context(a)
    if a.dump_samples:
        return dump_samples(a, ctx, tasks)
    if not a.model_name:
        raise UserError("give --model-name (the served model's name), or --dump_samples FILE")
    if a.seqrec_outputs:
        raise UserError("--seqrec_outputs goes with --dump_samples; the client reads its own SeqRec answers")
    if a.constrained and (a.general_llm or a.no_idx):
        raise UserError("--constrained decodes the numbered list of fine-tuned models: not with --general_llm or "
                        "--no_idx")
    base_url = a.base_url or (f"http://127.0.0.1:{a.vllm_port}/v1" if a.vllm_port else DEFAULT_BASE_URL)
    name = a.name or a.model_name
    runs = Path(os.environ.get("RECLM_JAX_RUNS", "runs"))
    run_dir = Path(a.output_dir) if a.output_dir else runs / "eval" / _safe(name)
    settings = EvalSettings(run_dir=run_dir, name=name, tasks=tuple(tasks), data_path=a.data_path,
                            item_index=a.item_index, kind="general_llm" if a.general_llm else "model",
                            max_users=a.max_users, idx=not a.no_idx, overwrite=a.overwrite,
                            constrained=a.constrained)
    teacher = make_teacher(a, ctx) if (a.teacher_checkpoint or a.teacher_port) else None
    client = CompletionsClient(CompletionsConfig(base_url, a.model_name, max_tokens=a.max_tokens, timeout=a.timeout,
                                                 retries=a.retries, concurrency=a.concurrency,
                                                 max_consecutive_failures=a.max_consecutive_failures))
    try:
        scores = evaluate(ctx, HttpAnswerer(client, settings, a.model_name), settings, teacher=teacher,
                          base_url=base_url, model_name=a.model_name)
    finally:
        client.close()
    print_scores(scores, run_dir, a.json)
    return 0


if __name__ == "__main__":
    run_main(main)
