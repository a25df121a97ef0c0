"""SFT validation and test tasks (section 6): fixed windows (val: ``seq[-2]``, test: ``seq[-1]``), one template
per task, and the target title as the only "label" (used for Recall/NDCG).

``SeqRec_Result`` (the unconstrained list the control metrics compare against) is the teacher's top-topk in
val; in test it is the model's own ``SFTTestSeqRec`` output when given (``TaskContext.seqrec_results``), else
the teacher's list (not in the original; flagged by ``SeqRec_Source`` and a warning).
"""

from __future__ import annotations

import re

import numpy as np

from reclm_jax.data.sampling import choice
from reclm_jax.data.tasks.context import Builder, Datum, TaskContext
from reclm_jax.data.templates import GROUPS, INTENTION_MINUS, INTENTION_PLUS, Template, render_candidates
from reclm_jax.errors import UserError

_RATE_TASK = re.compile(r"^SFTTestPersonalCategoryRate(LP1|LP|MP|EP)_(\d+)$")


def parse_rate_task(task: str) -> tuple[str, int]:
    """``SFTTestPersonalCategoryRateLP1_20`` -> ("LP1", 20)."""
    m = _RATE_TASK.match(task)
    if not m:
        raise UserError(f"task {task!r}: expected SFTTestPersonalCategoryRate{{LP,LP1,MP,EP}}_<percent>, "
                        f"e.g. SFTTestPersonalCategoryRateMP_30")
    return m.group(1), int(m.group(2))


def _seqrec_result(ctx: TaskContext, datum: Datum, hist: list[str], fields: dict):
    """Yields a teacher round unless test-mode model results exist; returns the item list (test mode: the
    source is noted in ``fields``)."""
    if datum.mode == "test":
        result = ctx.seqrec_result(datum.key)
        ctx.note_seqrec_source(fields, result is not None)
        if result is not None:
            return result
    (top,) = yield [ctx.query(datum, hist, ctx.s.topk)]
    return top


def _target_output(ctx: TaskContext, target: str) -> str:
    return ctx.title(target)


def eval_template(task: str) -> Template:
    """The one template of an SFT val/test task (the evaluation client flattens it for general LLMs)."""
    if task in ("SFTTestSeqRec", "SFTTestItemCount"):
        return GROUPS["ValSeqRec"][0]
    if task == "SFTTestSeqRanking":
        return GROUPS["ValSeqRanking"][0]
    if task in ("SFT+TestPersonalControlRec", "SFT-TestPersonalControlRec"):
        return GROUPS["ValPersonalControlRec"][0]
    variant, _ = parse_rate_task(task)
    return GROUPS[f"TestPersonalCategoryRate{variant}"][0]


def test_seqrec(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    template = eval_template(datum.task)
    fields, _, target, _ = ctx.user_fields(datum, None)
    k = ctx.s.topk + 1 + datum.index % 5 if datum.task == "SFTTestItemCount" else ctx.s.topk
    fields.update(target_category=ctx.last_category(target), item_count=k)
    return ctx.sample(datum.task, template, fields, _target_output(ctx, target))
    yield


def test_seqranking(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    template = eval_template(datum.task)
    fields, _, target, _ = ctx.user_fields(datum, None)
    cands = ctx.ranking_candidates(datum.key, target, datum.index)
    fields.update(target_category=ctx.last_category(target), item_count=ctx.s.topk,
                  candidate_titles=render_candidates(ctx.titles(cands)), candidate_items=cands)
    return ctx.sample(datum.task, template, fields, _target_output(ctx, target))
    yield


def test_personal_control_rec(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """I1+: C = the target's last category; I1-: the most frequent non-target category of SeqRec_Result
    (last of ties)."""
    template = eval_template(datum.task)
    fields, hist, target, _ = ctx.user_fields(datum, None)
    result = yield from _seqrec_result(ctx, datum, hist, fields)
    plus = datum.task == "SFT+TestPersonalControlRec"
    category = ctx.last_category(target) if plus else ctx.max_categories(result, target)[-1]
    intention = choice(rng, INTENTION_PLUS if plus else INTENTION_MINUS)
    fields["target_category"] = category
    fields.update(synthetic_intention=intention.format(target_category=category), item_count=ctx.s.topk,
                  SeqRec_Result=result)
    return ctx.sample(datum.task, template, fields, _target_output(ctx, target))


def test_personal_category_rate(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """I2: LP/LP1 use the most frequent non-target category of SeqRec_Result, MP/EP the target's last one;
    ``category_count = int(p * topk / 100)``."""
    variant, p = parse_rate_task(datum.task)
    template = eval_template(datum.task)
    fields, hist, target, _ = ctx.user_fields(datum, None)
    result = yield from _seqrec_result(ctx, datum, hist, fields)
    if variant in ("LP", "LP1"):
        category = ctx.max_categories(result, target)[-1]
    else:
        category = ctx.last_category(target)
    k = ctx.s.topk
    fields.update(target_category=category, item_count=k, category_proportion=f"{p}%",
                  category_count=int(p * k / 100), SeqRec_Result=result)
    return ctx.sample(datum.task, template, fields, _target_output(ctx, target))


def sft_eval_builder(task: str):
    """The builder of an SFT val/test task name (parameters after ``_`` included)."""
    if task in ("SFTTestSeqRec", "SFTTestItemCount"):
        return test_seqrec
    if task == "SFTTestSeqRanking":
        return test_seqranking
    if task in ("SFT+TestPersonalControlRec", "SFT-TestPersonalControlRec"):
        return test_personal_control_rec
    if task.startswith("SFTTestPersonalCategoryRate"):
        parse_rate_task(task)
        return test_personal_category_rate
    return None
