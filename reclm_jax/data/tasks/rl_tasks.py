"""RL tasks (section 7): prompt-only samples whose ``output_text`` is the target title.

``item_count`` is ``U{topk//2+1..topk}`` in train and ``topk`` in val/test. ``SeqRec_Result`` is the teacher's
top-``item_count`` (train/val) or the model's own RLSeqRec output in test when given (else the teacher's, flagged by
``SeqRec_Source``).
"""

from __future__ import annotations

import re

import numpy as np

from reclm_jax.data.sampling import choice, choices_excluding, shuffled, uniform_int
from reclm_jax.data.tasks.context import Builder, Datum, TaskContext
from reclm_jax.data.templates import GROUPS, INTENTION_MINUS, INTENTION_PLUS, TEST_PERSONALCATEGORYRATE, render_candidates
from reclm_jax.errors import UserError

_RATE_TASK = re.compile(r"^RLPersonalCategoryRate(LP|MP|EP)?(?:_(\d+))?$")
RL_TASKS = ("RLSeqRec", "RL+PersonalControlRec", "RL-PersonalControlRec", "RLSeqRanking", "RLItemCount")


def parse_rl_rate_task(task: str) -> tuple[str, int | None]:
    """``RLPersonalCategoryRateMP_30`` -> ("MP", 30); the generic ``RLPersonalCategoryRate`` is LP-phrased."""
    m = _RATE_TASK.match(task)
    if not m:
        raise UserError(f"task {task!r}: expected RLPersonalCategoryRate[LP|MP|EP][_<percent>]")
    return m.group(1) or "LP", (int(m.group(2)) if m.group(2) else None)


def _base(ctx: TaskContext, datum: Datum, rng: np.random.Generator):
    k = uniform_int(rng, ctx.s.topk // 2 + 1, ctx.s.topk) if datum.mode == "train" else ctx.s.topk
    fields, hist, target, _ = ctx.user_fields(datum, rng if datum.mode == "train" else None)
    fields = {"item_count": k, **fields, "target_category": ctx.last_category(target)}
    return fields, hist, target, k


def _result(ctx: TaskContext, datum: Datum, hist: list[str], k: int, fields: dict):
    if datum.mode == "test":
        result = ctx.seqrec_result(datum.key)
        ctx.note_seqrec_source(fields, result is not None)
        if result is not None:
            return result
    (top,) = yield [ctx.query(datum, hist, k)]
    return top


def rl_seqrec(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    fields, _, target, _ = _base(ctx, datum, rng)
    if datum.task == "RLItemCount":
        fields["item_count"] = ctx.s.topk + 1 + datum.index % 5
    return ctx.sample(datum.task, GROUPS["RLSeqRec"][0], fields, ctx.title(target))
    yield


def rl_control(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """RL+: C = a random category of the target (train) or its last one; RL-: C among the non-target
    categories counted at least min(2, max) times in SeqRec_Result (train) or the most frequent (last of ties)."""
    fields, hist, target, k = _base(ctx, datum, rng)
    result = yield from _result(ctx, datum, hist, k, fields)
    plus = datum.task == "RL+PersonalControlRec"
    train = datum.mode == "train"
    if plus:
        own = ctx.item2category.get(target) or [None]
        category = choice(rng, own) if train else ctx.last_category(target)
    else:
        category = choice(rng, ctx.max_categories(result, target, cap=2)) if train \
            else ctx.max_categories(result, target)[-1]
    intention = choice(rng, INTENTION_PLUS if plus else INTENTION_MINUS)
    fields.update(target_category=category, SeqRec_Result=result,
                  synthetic_intention=intention.format(target_category=category))
    return ctx.sample(datum.task, GROUPS["RLPersonalControlRec"][0], fields, ctx.title(target))


def rl_category_rate(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """I2. Val/test: ``_p`` gives ``category_count = int(p*k/100)``, proportion ``p%``. Train (names without a
    suffix, as the scripts use): ``t ~ U{0..min(|C|,k)}``, count t, proportion ``floor(10t/k)*10 %``."""
    variant, p = parse_rl_rate_task(datum.task)
    generic = datum.task.split("_")[0] == "RLPersonalCategoryRate"
    fields, hist, target, k = _base(ctx, datum, rng)
    train = datum.mode == "train"
    if not train and p is None:
        raise UserError(f"task {datum.task!r}: val/test CategoryRate tasks need a percentage, e.g. {datum.task}_30")
    result = yield from _result(ctx, datum, hist, k, fields)
    if variant in ("MP", "EP"):
        own = ctx.item2category.get(target) or [None]
        category = choice(rng, own) if train else ctx.last_category(target)
    else:
        category = choice(rng, ctx.max_categories(result, target, cap=2)) if train \
            else ctx.max_categories(result, target)[-1]
    if not train:
        count, proportion = int(p * k / 100), f"{p}%"
    else:
        m = min(len(ctx.cat_items.get(category, ())), k)
        # Only names with a suffix reach the LP_/MP_ branches (as in the original); the scripts' train names don't.
        if "LP_" in datum.task:
            t = uniform_int(rng, 1, m)
            count = t - 1
        elif "MP_" in datum.task:
            t = uniform_int(rng, 0, m - 1)
            count = t
        else:
            t = uniform_int(rng, 0, m)
            count = t
        proportion = f"{int(t / k * 10) * 10}%"
    if generic:
        template = GROUPS["RLPersonalCategoryRate"][0]
    elif variant == "LP":
        # Train LP uses the LP1 phrasing, val/test the LP phrasing (the original's mappings).
        template = TEST_PERSONALCATEGORYRATE["LP1" if train else "LP"]
    else:
        template = TEST_PERSONALCATEGORYRATE[variant]
    fields.update(target_category=category, SeqRec_Result=result, item_count=k, category_proportion=proportion,
                  category_count=count)
    return ctx.sample(datum.task, template, fields, ctx.title(target))


def rl_seqranking(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """Train: [target] + random others (with replacement), pool size ``U{k+1..candidate_num}`` (at least k+1),
    shuffled; val/test: the stored negatives with the target inserted at ``index % candidate_num``."""
    fields, _, target, k = _base(ctx, datum, rng)
    if datum.mode == "train":
        # The original draws from range(k, candidate_num), empty when k = candidate_num; clamp instead.
        size = uniform_int(rng, k, max(k, ctx.s.candidate_num - 1)) + 1
        extra = choices_excluding(rng, ctx.items, size - 1, {target, *ctx.exclusions(datum)})
        cands = shuffled(rng, [target] + extra)
    else:
        cands = ctx.ranking_candidates(datum.key, target, datum.index)
    fields.update(candidate_titles=render_candidates(ctx.titles(cands)), candidate_items=cands)
    return ctx.sample(datum.task, GROUPS["RLSeqRanking"][0], fields, ctx.title(target))
    yield


def rl_builder(task: str):
    if task in ("RLSeqRec", "RLItemCount"):
        return rl_seqrec
    if task in ("RL+PersonalControlRec", "RL-PersonalControlRec"):
        return rl_control
    if task == "RLSeqRanking":
        return rl_seqranking
    if task.startswith("RLPersonalCategoryRate"):
        parse_rl_rate_task(task)
        return rl_category_rate
    return None
