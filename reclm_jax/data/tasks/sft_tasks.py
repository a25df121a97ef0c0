"""SFT training tasks (section 5): labels are the ground-truth next item plus the teacher's top-k, with
category filters. Each function is a builder generator (see ``context.py``)."""

from __future__ import annotations

import numpy as np

from reclm_jax.data.sampling import choice, sample_excluding, shuffled, uniform_int
from reclm_jax.data.tasks.context import Builder, Datum, TaskContext
from reclm_jax.data.templates import CATEGORYRATE, GROUPS, INTENTION_MINUS, INTENTION_PLUS, render_candidates

# The original hard-codes the list length of the CategoryRate tasks.
CATEGORY_RATE_ITEM_COUNT = 10


def _with_candidates(ctx: TaskContext, datum: Datum, rng: np.random.Generator, template, fields: dict,
                     output_items: list[str]) -> None:
    cands = ctx.candidate_pool(datum, rng, output_items) if template.uses_candidates else []
    fields["candidate_titles"] = render_candidates(ctx.titles(cands))
    fields["candidate_items"] = cands


def seqrec(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """I0: ``[target] + teacher top-(k-1)``, ``k ~ U{1..topk}``."""
    template = choice(rng, GROUPS["SeqRec"])
    fields, hist, target, _ = ctx.user_fields(datum, rng)
    k = uniform_int(rng, 1, ctx.s.topk)
    (teacher,) = yield [ctx.query(datum, hist, k)]
    output = ([target] + [i for i in teacher if i != target])[:k]
    fields.update(target_category=ctx.last_category(target), item_count=k)
    _with_candidates(ctx, datum, rng, template, fields, output)
    return ctx.sample(datum.task, template, fields, ctx.label(output))


def seqrec_palr(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """The next k real items ``seq[t:t+k]``, ``k ~ U{1..min(remaining train items, topk)}``; no teacher."""
    template = choice(rng, GROUPS["SeqRec"])
    fields, _, target, pos = ctx.user_fields(datum, rng)
    seq = ctx.sequential[datum.key]
    k = uniform_int(rng, 1, min(len(seq) - pos - 2, ctx.s.topk))
    output = list(seq[pos:pos + k])
    fields.update(target_category=ctx.last_category(target), item_count=k)
    _with_candidates(ctx, datum, rng, template, fields, output)
    return ctx.sample(datum.task, template, fields, ctx.label(output))
    yield  # a generator with no teacher round


def personal_control_rec(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """I1 with history: '+C' (C uniform over all categories) or '-C' (C among the most frequent categories of
    the teacher's top-topk that do not contain the target), each with probability 1/2."""
    template = choice(rng, GROUPS["PersonalControlRec"])
    fields, hist, target, _ = ctx.user_fields(datum, rng)
    plus = rng.random() > 0.5
    if plus:
        category = choice(rng, ctx.categories)
        max_count = min(ctx.s.topk, len(ctx.cat_items[category]))
    else:
        (top,) = yield [ctx.query(datum, hist, ctx.s.topk)]
        category = choice(rng, ctx.max_categories(top, target))
        max_count = min(ctx.s.topk, len(ctx.items) - len(ctx.cat_items[category]))
    k = uniform_int(rng, 1, max_count)
    (output,) = yield [ctx.query(datum, hist, k, ("+" if plus else "-") + category)]
    if target in output:  # the true next item, when it complies, goes first
        output = [target] + [i for i in output if i != target]
    intention = choice(rng, INTENTION_PLUS if plus else INTENTION_MINUS)
    fields["target_category"] = category
    fields.update(synthetic_intention=intention.format(target_category=category), item_count=k)
    _with_candidates(ctx, datum, rng, template, fields, output)
    return ctx.sample(datum.task, template, fields, ctx.label(output))


def control_rec(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """I1 without history, one datum per categorised item. ``SFTControlRec_re`` adds the item -> category QA
    template and always uses k = 1 (the label is the item itself)."""
    reverse_group = datum.task == "SFTControlRec_re"
    template = choice(rng, GROUPS["ControlRec_re" if reverse_group else "ControlRec"])
    item = datum.key
    own = ctx.item2category[item]
    if template.template_id == "ControlRec-reverse":
        # The original appends EOS to the category, so EOS lands inside the closing quote (kept).
        out = template.output.format(item=ctx.title(item), target_category=choice(rng, own) + ctx.eos)
        return ctx.sample(datum.task, template, {"item": ctx.title(item)}, out)
    others = [c for c in ctx.categories if item not in ctx.cat_set[c]]
    plus = rng.random() > 0.5 or not others
    if plus:
        category = choice(rng, own)
        max_count = min(ctx.s.topk, len(ctx.cat_items[category]))
        pool = ctx.cat_items[category]
    else:
        category = choice(rng, others)
        max_count = min(ctx.s.topk, len(ctx.items) - len(ctx.cat_items[category]))
        pool = None
    k = 1 if reverse_group else uniform_int(rng, 1, max_count)
    if pool is None:  # all items outside C
        exclude = set(ctx.cat_set[category]) | {item}
        rest = sample_excluding(rng, ctx.items, k - 1, exclude)
    else:
        rest = sample_excluding(rng, pool, k - 1, {item})
    output = [item] + rest
    intention = choice(rng, INTENTION_PLUS if plus else INTENTION_MINUS)
    fields = {"target_category": category, "synthetic_intention": intention.format(target_category=category),
              "item_count": k}
    _with_candidates(ctx, datum, rng, template, fields, output)
    return ctx.sample(datum.task, template, fields, ctx.label(output))
    yield


def _rate_counts(rng: np.random.Generator, template_id: str, category_size: int) -> tuple[int, int]:
    """(stated count t, label count): L templates ``t ~ U{1..m}``, label t-1 or t; M templates
    ``t ~ U{0..m-1}``, label t or t+1 (m = min(|C|, 10))."""
    m = min(category_size, CATEGORY_RATE_ITEM_COUNT)
    if template_id[-2] == "L":
        t = uniform_int(rng, 1, m)
        return t, t + choice(rng, (-1, 0))
    t = uniform_int(rng, 0, m - 1)
    return t, t + choice(rng, (1, 0))


def personal_category_rate(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """I2 with history: the label holds n_in teacher '+C' items and 10-n_in teacher '-C' items, shuffled."""
    template = choice(rng, GROUPS["PersonalCategoryRate"])
    fields, hist, _, _ = ctx.user_fields(datum, rng)
    k = CATEGORY_RATE_ITEM_COUNT
    category = choice(rng, ctx.categories)
    t, n_in = _rate_counts(rng, template.template_id, len(ctx.cat_items[category]))
    inside, outside = yield [ctx.query(datum, hist, n_in, "+" + category),
                             ctx.query(datum, hist, k - n_in, "-" + category)]
    output = shuffled(rng, inside + outside)
    fields.update(target_category=category, item_count=k, category_proportion=f"{t}0%", category_count=t)
    _with_candidates(ctx, datum, rng, template, fields, output)
    return ctx.sample(datum.task, template, fields, ctx.label(output))


def category_rate(ctx: TaskContext, datum: Datum, rng: np.random.Generator) -> Builder:
    """I2 without history, one datum per (category, template): random in- and out-of-category items."""
    category, template_id = datum.key
    template = CATEGORYRATE[template_id]
    k = CATEGORY_RATE_ITEM_COUNT
    t, n_in = _rate_counts(rng, template_id, len(ctx.cat_items[category]))
    inside = sample_excluding(rng, ctx.cat_items[category], n_in, set())
    outside = sample_excluding(rng, ctx.items, k - n_in, set(ctx.cat_set[category]))
    output = shuffled(rng, inside + outside)
    fields = {"target_category": category, "item_count": k, "category_proportion": f"{t}0%",
              "category_count": t}
    _with_candidates(ctx, datum, rng, template, fields, output)
    return ctx.sample(datum.task, template, fields, ctx.label(output))
    yield


SFT_TRAIN_BUILDERS = {
    "SFTSeqRec": seqrec,
    "SFTSeqRecPALR": seqrec_palr,
    "SFTPersonalControlRec": personal_control_rec,
    "SFTControlRec": control_rec,
    "SFTControlRec_re": control_rec,
    "SFTPersonalCategoryRate": personal_category_rate,
    "SFTCategoryRate": category_rate,
}
