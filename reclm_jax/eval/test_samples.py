"""The test stage's samples: the original's seven test tasks, in its order, one sample per user.

``scripts/tasks_test.sh`` of the original runs, in this order (audit B.4): SFTTestSeqRec, SFT+/-
TestPersonalControlRec, SFTTestPersonalCategoryRate{LP1_20, EP_30, MP_30}, SFTTestItemCount. Tasks 2-6 read
the *model's own* SeqRec answers: the I1-/LP target category and the SR baselines come from that list, and
only users whose SeqRec request was answered get a sample. That is the original's rule: it asks tasks 2-6 only
for users whose SeqRec sample has an ``output_title_list`` (``task_test.py:203-205``), which every answered sample
has, an empty list included (a fine-tuned "" parses to ``['']``, a general LLM's "" to ``[]``); a failed request
has none. Samples are built by the task layer
(``data.tasks.test_tasks``); ``position`` is a sample's index within its task (the user's position in
``sequential.pickle``, the original's ``idx``: ItemCount's k = topk + 1 + position % 5).

General LLMs get the original's flattened single-message prompt (``templates.general_llm_prompt``, audit T4)
with its notice; the samples are otherwise the same.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from tqdm.auto import tqdm

from reclm_jax.data.fuzzy import FuzzyMatcher
from reclm_jax.data.samples import SampleBuilder
from reclm_jax.data.tasks import TaskContext, builder_for
from reclm_jax.data.tasks.test_tasks import eval_template
from reclm_jax.data.teacher_protocol import TeacherLike
from reclm_jax.data.templates import NOTICE_CONTROL, NOTICE_SEQREC, general_llm_prompt
from reclm_jax.errors import UserError
from reclm_jax.eval.scorer import parse_output

SEQREC = "SFTTestSeqRec"
TEST_TASKS = (SEQREC, "SFT+TestPersonalControlRec", "SFT-TestPersonalControlRec",
              "SFTTestPersonalCategoryRateLP1_20", "SFTTestPersonalCategoryRateEP_30",
              "SFTTestPersonalCategoryRateMP_30", "SFTTestItemCount")
_CHUNK = 1024


def needs_seqrec(task: str) -> bool:
    """Tasks whose samples are built from a SeqRec list (I1+/- and the CategoryRate tasks)."""
    return task in ("SFT+TestPersonalControlRec", "SFT-TestPersonalControlRec") or \
        task.startswith("SFTTestPersonalCategoryRate")


def order_tasks(tasks: Sequence[str]) -> list[str]:
    """The given test tasks without repeats, SFTTestSeqRec first (the others read its answers), the rest in the
    given order; unknown names raise ``UserError`` listing the valid ones."""
    out = list(dict.fromkeys(t.strip() for t in tasks if t.strip()))
    if not out:
        raise UserError("--tasks names no task")
    for t in out:
        builder_for(t, "test")
    return ([SEQREC] if SEQREC in out else []) + [t for t in out if t != SEQREC]


def parse_tasks(text: str | None) -> list[str]:
    return order_tasks(text.split(",") if text else TEST_TASKS)


def notice(task: str) -> str:
    return NOTICE_SEQREC if task in (SEQREC, "SFTTestItemCount") else NOTICE_CONTROL


def with_seqrec(ctx: TaskContext, seqrec_titles: Mapping[str, Sequence[str]] | None) -> TaskContext:
    """A context sharing ``ctx``'s dataset and settings whose test SeqRec results are ``seqrec_titles``
    (user -> the model's mapped SeqRec titles)."""
    return TaskContext(ctx.raw, ctx.index, ctx.s, ctx.chat, ctx.eos, share_chat=ctx.share_chat,
                       seqrec_results=seqrec_titles)


def build_task_samples(ctx: TaskContext, task: str, *, max_users: int | None = None,
                       seqrec_titles: Mapping[str, Sequence[str]] | None = None,
                       teacher: TeacherLike | None = None, general_llm: bool = False,
                       progress: bool = True) -> list[dict]:
    """The test samples of ``task`` for the first ``max_users`` users (all when None), each a
    ``{input_text, output_text, task, input_field_data, position}`` dict.

    A task that ``needs_seqrec`` takes the model's SeqRec titles per user from ``seqrec_titles`` and gets
    samples only for the users in it (the original); without them every user's SeqRec_Result comes from
    ``teacher`` (the documented teacher fallback, ``SeqRec_Source: "teacher"``), and with neither it raises
    ``UserError``.
    """
    if needs_seqrec(task) and seqrec_titles is None and teacher is None:
        raise UserError(f"task {task} is built from the model's {SEQREC} answers: run {SEQREC} first (it is in "
                        f"the default --tasks), give them (--seqrec_outputs), or give a teacher "
                        f"(--teacher_checkpoint / --teacher_port) to use its lists instead")
    seqrec = seqrec_titles if needs_seqrec(task) else None
    builder = SampleBuilder(with_seqrec(ctx, seqrec) if seqrec is not None else ctx, [task], "test", teacher)
    n = len(builder) if max_users is None else min(max_users, len(builder))
    positions = [i for i in range(n) if seqrec is None or builder.datums[i].key in seqrec]
    samples: list[dict] = []
    bar = tqdm(total=len(positions), desc=f"samples {task}", unit="sample", disable=not progress, leave=False)
    for start in range(0, len(positions), _CHUNK):
        chunk = positions[start:start + _CHUNK]
        for pos, s in zip(chunk, builder.build(chunk)):
            s["position"] = pos
            if general_llm:
                s["input_text"] = general_llm_prompt(eval_template(task), s["input_field_data"], notice(task))
            samples.append(s)
        bar.update(len(chunk))
    bar.close()
    return samples


def seqrec_titles(samples: Sequence[dict], texts: Sequence[str | None], matcher: FuzzyMatcher,
                  general_llm: bool = False, idx: bool = True) -> dict[str, list[str]]:
    """user -> the model's SeqRec titles as the later tasks read them: parsed, fuzzily mapped, not cut to k
    (the original's ``SFTTestSeqRec_output_title_list``); users whose request got no answer are left out, an
    answer without titles gives the user an empty list (as the original)."""
    out = {}
    for s, text in zip(samples, texts):
        if text is None:
            continue
        fields = s["input_field_data"]
        titles = parse_output(text, s["task"], int(fields["item_count"]), general_llm, idx)
        out[fields["user"]] = matcher.map(titles)
    return out
