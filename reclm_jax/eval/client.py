"""The test stage's evaluation client: test samples -> an OpenAI-compatible server -> parsed, scored, cached.

    ctx = ...                                       # data.task_setup.build_task_context
    settings = EvalSettings(run_dir=Path("runs/eval/sft"), name="sft", tasks=TEST_TASKS, ...)
    client = CompletionsClient(CompletionsConfig("http://127.0.0.1:13579/v1", "merged"))
    scores = evaluate(ctx, HttpAnswerer(client, settings, "merged"), settings)

The baselines (``eval.baselines``) pass their own answerer: any ``(task, samples, cached) -> (texts, errors)``.

Tasks are scored in the original's order (``test_samples.order_tasks``) and asked in two waves
(``task_waves``): SFTTestSeqRec with every task that does not read its answers, then the tasks that do, each
wave's requests through one pool of workers. Asked task by task, each task's last few long answers left the
server's batch half empty (the base model's pass on 60 users: 16.3 live rows of 32 on average
against 24.1 in waves, docs/performance.md). Answers are appended to
``RUN/outputs/<task>.jsonl`` as they arrive (``run_dir.OutputAppender``), so an interrupted run (Ctrl-C,
SIGKILL, a server that died) resumes by asking only for the samples without an answer; a cached answer is
used only for the identical prompt. When a task is done its file is rewritten in sample order with the scored
fields; ``scores.json`` and ``run.json`` (``complete: true``) are written at the end.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from reclm_jax.atomic import write_json_atomic
from reclm_jax.data.tasks import TaskContext
from reclm_jax.data.teacher_protocol import TeacherLike
from reclm_jax.errors import UserError
from reclm_jax.eval import run_dir as rd
from reclm_jax.eval.completions import CompletionsClient
from reclm_jax.eval.scorer import Scorer, format_table
from reclm_jax.eval.test_samples import SEQREC, build_task_samples, needs_seqrec, seqrec_titles


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    run_dir: Path
    name: str
    tasks: tuple[str, ...]  # in the order to run (``order_tasks``)
    data_path: str
    item_index: str
    kind: str = "model"  # run_dir.RUN_KINDS
    max_users: int | None = None
    idx: bool = True
    overwrite: bool = False
    progress: bool = True
    constrained: bool = False  # each request carries its sample's reclm_constraint (reclm_jax.serve, vLLM's plugin)

    @property
    def general_llm(self) -> bool:
        return self.kind == "general_llm"


# (task, samples, cached answers by position) -> (answers by position, errors of the failed by position)
Answerer = Callable[[str, Sequence[dict], dict], tuple[dict, dict]]


def prepare_run_dir(s: EvalSettings, base_url: str | None, model_name: str | None) -> None:
    """Checks that a run folder already there belongs to the same evaluation (else ``UserError``, or wiped
    with ``overwrite``) and writes ``run.json`` with ``complete: false``."""
    info_file = s.run_dir / rd.INFO_FILE
    if info_file.exists() and not s.overwrite:
        old = rd.load_run(s.run_dir).info
        # max_users may change: the first N users' samples are the same for any N, so their answers stay valid.
        for key, new in (("model_name", model_name), ("kind", s.kind), ("item_index", s.item_index),
                         ("constrained", s.constrained)):
            if old.get(key, False if key == "constrained" else None) != new:
                raise UserError(f"{s.run_dir} holds an evaluation with {key} {old.get(key)!r}, not {new!r}: give "
                                f"another --output_dir, or --overwrite to start it again")
    if s.overwrite:
        shutil.rmtree(s.run_dir / rd.OUTPUTS_DIR, ignore_errors=True)
        (s.run_dir / rd.SCORES_FILE).unlink(missing_ok=True)
    rd.write_info(s.run_dir, rd.make_info(s.name, s.kind, base_url, s.data_path, s.item_index, s.tasks,
                                          s.max_users, complete=False, model_name=model_name,
                                          constrained=s.constrained))


def cached_answers(run_path: Path, task: str, samples: Sequence[dict]) -> dict[int, str]:
    """position -> answer text of the task's cached answers; ``UserError`` if one was made for another prompt
    (another chat template, item index or SeqRec run)."""
    prompts = {s["position"]: s["input_text"] for s in samples}
    out = {}
    for row in rd.read_outputs(run_path, task):
        pos, text = row.get("index"), row.get("output_text")
        if text is None or pos not in prompts:
            continue
        if row.get("input_text") != prompts[pos]:
            raise UserError(f"{rd.outputs_path(run_path, task)}: the cached answer of sample {pos} was made for "
                            f"another prompt (another --chat_template, --item_index, --general_llm or SeqRec "
                            f"answers?): give another --output_dir, or --overwrite")
        out[pos] = text
    return out


class _Progress:
    """Counts of one task's requests, for the bar and the summary line."""

    def __init__(self, task: str, total: int, enabled: bool, position: int = 0):
        self.failed = 0
        self.last_error = ""
        self.bar = tqdm(total=total, desc=task, unit="req", disable=not enabled, position=position)

    def done(self, error: str | None) -> None:
        if error is not None:
            self.failed += 1
            self.last_error = error
            self.bar.set_postfix(failed=self.failed)
        self.bar.update(1)


class HttpAnswerer:
    """Answers samples through an OpenAI-compatible server; probes it (``GET /models``) before the first
    request, so a server that is not up stops the run at once with a clear message."""

    def __init__(self, client: CompletionsClient, s: EvalSettings, model_name: str | None):
        self.client, self.s, self.model_name = client, s, model_name
        self._probed = False

    def _probe(self) -> None:
        models = self.client.probe()
        if models is not None and self.model_name is not None and self.model_name not in models:
            print(f"warning: the server at {self.client.cfg.base_url} serves {models}, not {self.model_name!r}; "
                  f"the requests name {self.model_name!r}", file=sys.stderr)
        self._probed = True

    def _extra(self, task: str, sample: dict) -> tuple:
        """() or (the body keys of a constrained request: the sample's task and fields, as JSON values, under
        ``reclm_constraint`` for reclm_jax.serve and as a JSON string in ``vllm_xargs`` for vLLM with reclm-jax's
        plugin; each server ignores the other's key)."""
        if not self.s.constrained:
            return ()
        fields = json.loads(json.dumps(sample["input_field_data"], default=str))
        spec = {"task": task, "input_field_data": fields}
        return ({"reclm_constraint": spec, "vllm_xargs": {"reclm_constraint": json.dumps(spec)}},)

    def __call__(self, task: str, samples: Sequence[dict], cached: dict) -> tuple[dict, dict]:
        return self.answer_tasks([(task, samples, cached)])[0]

    def answer_tasks(self, batch: Sequence[tuple[str, Sequence[dict], dict]]) -> list[tuple[dict, dict]]:
        """Several tasks' samples at once, ``[(task, samples, cached)] -> [(texts, errors)]``: their requests
        share one pool of ``concurrency`` workers, so a task's last slow answers overlap the next task's first
        ones instead of leaving the server's batch half empty (see ``evaluate``)."""
        out = [(dict(cached), {}) for _, _, cached in batch]
        todo = [(i, x) for i, (_, samples, cached) in enumerate(batch) for x in samples if x["position"] not in cached]
        if not todo:
            return out
        if not self._probed:
            self._probe()
        asked = collections.Counter(i for i, _ in todo)
        progress = {i: _Progress(batch[i][0], asked[i], self.s.progress, position=k)
                    for k, i in enumerate(sorted(asked))}
        by_key = {(i, x["position"]): x for i, x in todo}

        def on_done(key: tuple[int, int], text: str | None, error: str | None) -> None:
            i, pos = key
            appenders[i].append({"index": pos, "task": batch[i][0], "input_text": by_key[key]["input_text"],
                                 "output_text": text, "error": error})
            texts, errors = out[i]
            if text is None:
                errors[pos] = error or "failed"
            else:
                texts[pos] = text
            progress[i].done(error)

        try:
            with contextlib.ExitStack() as stack:
                appenders = {i: stack.enter_context(rd.OutputAppender(self.s.run_dir, batch[i][0])) for i in asked}
                self.client.map((((i, x["position"]), x["input_text"], *self._extra(batch[i][0], x))
                                 for i, x in todo), on_done)
        finally:
            for bar in progress.values():
                bar.bar.close()
        for i, bar in progress.items():
            task, samples, _ = batch[i]
            msg = f"{task}: {len(samples)} samples, {len(samples) - asked[i]} cached, {asked[i]} asked, " \
                  f"{bar.failed} failed"
            print(msg + (f" (last error: {bar.last_error})" if bar.failed else ""), file=sys.stderr)
        return out


def answer_tasks(answer: Answerer | None, batch: Sequence[tuple[str, Sequence[dict], dict]]) -> list[tuple[dict, dict]]:
    """``[(task, samples, cached)] -> [(texts, errors)]`` through ``answer``: all at once where it can
    (``HttpAnswerer.answer_tasks``), else task after task, a task whose every sample is cached not asked;
    ``answer`` None: the cached answers only."""
    if answer is not None and hasattr(answer, "answer_tasks"):
        return answer.answer_tasks(batch)
    return [answer(task, samples, cached) if answer is not None and len(cached) < len(samples) else (dict(cached), {})
            for task, samples, cached in batch]


def task_waves(tasks: Sequence[str]) -> list[list[str]]:
    """``tasks`` (in ``order_tasks``' order) in the groups whose requests are sent together: with SFTTestSeqRec
    among them, first every task that does not read its answers (itself included), then the tasks that do
    (``needs_seqrec``); without it (its answers come from an earlier run's cache), all in one group."""
    if SEQREC not in tasks:
        return [list(tasks)]
    waves = [[t for t in tasks if not needs_seqrec(t)], [t for t in tasks if needs_seqrec(t)]]
    return [w for w in waves if w]


def _seqrec_from_cache(ctx: TaskContext, s: EvalSettings, matcher) -> dict[str, list[str]] | None:
    """The SeqRec answers of an earlier run in the same folder (tasks 2-6 asked without SFTTestSeqRec)."""
    if not rd.outputs_path(s.run_dir, SEQREC).exists():
        return None
    samples = build_task_samples(ctx, SEQREC, max_users=s.max_users, general_llm=s.general_llm,
                                 progress=False)
    texts = cached_answers(s.run_dir, SEQREC, samples)
    if not texts:
        return None
    return seqrec_titles(samples, [texts.get(x["position"]) for x in samples], matcher, s.general_llm, s.idx)


def evaluate(ctx: TaskContext, answer: Answerer | None, s: EvalSettings, teacher: TeacherLike | None = None,
             base_url: str | None = None, model_name: str | None = None) -> dict:
    """Runs (or resumes) the evaluation of ``s.tasks`` and returns ``scores.json``'s dict.

    ``answer`` (``HttpAnswerer``, a baseline's) answers the samples without a cached answer; None scores the
    cached answers only. Raises ``UserError`` when the server cannot be reached, when
    ``max_consecutive_failures`` requests in a row fail (the answers so far stay cached) and when not a single
    sample got an answer.
    """
    prepare_run_dir(s, base_url, model_name)
    scorer = Scorer(s.tasks, ctx.index, ctx.raw.category2item, general_llm=s.general_llm, idx=s.idx)
    seqrec = None
    answered = 0
    for wave in task_waves(s.tasks):
        batch = []
        for task in wave:
            if needs_seqrec(task) and seqrec is None:
                seqrec = _seqrec_from_cache(ctx, s, scorer.matcher)
            samples = build_task_samples(ctx, task, max_users=s.max_users, seqrec_titles=seqrec, teacher=teacher,
                                         general_llm=s.general_llm, progress=s.progress)
            batch.append((task, samples, cached_answers(s.run_dir, task, samples)))
        for (task, samples, _), (texts, errors) in zip(batch, answer_tasks(answer, batch)):
            answered += len(texts)
            rows = [scorer.add(x, texts.get(x["position"]), errors.get(x["position"]), index=x["position"])
                    for x in samples]
            rd.write_outputs(s.run_dir, task, rows)
            if task == SEQREC:
                seqrec = seqrec_titles(samples, [texts.get(x["position"]) for x in samples], scorer.matcher,
                                       s.general_llm, s.idx)
    scores = scorer.scores()
    rd.write_scores(s.run_dir, scores)
    total = sum(c["samples"] for c in scores["counts"].values())
    if total and not answered:
        raise UserError(f"not one of {total} requests got an answer from {base_url}: is the server running and "
                        f"serving --model-name {model_name!r}? (failed requests are asked again next time)")
    info = rd.load_run(s.run_dir).info
    rd.write_info(s.run_dir, {**info, "complete": True})
    return scores


def print_scores(scores: dict, run_path: Path, json_path: str | None = None) -> None:
    """The commands' ending: the table on stdout, ``--json`` written, the run folder named on stderr."""
    print(format_table(scores), end="")
    if json_path:
        write_json_atomic(json_path, scores)
    print(f"evaluated run: {run_path}", file=sys.stderr)
