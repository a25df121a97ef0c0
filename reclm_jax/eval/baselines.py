"""``python -m reclm_jax.eval.baselines``: the teacher's and popularity's own answers to the test tasks, as an
evaluated run scored by the same scorer as the models.

    python -m reclm_jax.eval.baselines --data_path DIR --teacher_checkpoint RUN --kind teacher \\
        --output_dir runs/eval/teacher [--max_users N] [--item_index title64_t --tokenizer TOK]
    python -m reclm_jax.eval.baselines --data_path DIR --kind popularity --output_dir runs/eval/popularity

A baseline answers every test sample with a top-k list of item ids from a ranker (``TeacherLike``: the SASRec
teacher, or ``PopularityRanker``), rendered as the numbered list a fine-tuned model writes, then parsed and
scored like any answer. Per task:

- SeqRec: the top topk; ItemCount: the top ``item_count``;
- I1+ / I1-: the top topk within / outside the sample's category (the teacher's ``+C`` / ``-C`` filters);
- CategoryRate (LP1/LP/EP/MP at p%): ``category_count`` items within C and the rest outside it, merged in the
  ranker's order, which meets each constraint exactly as the SFT labels of these tasks are built;
- SeqRanking: the top topk among the candidates.

The history is the user's whole sequence before the test target: the ranker sees its last ``window`` items
and never recommends an item of it, exactly as the teacher's own test evaluation, so the teacher baseline's
SeqRec Recall equals the teacher's test HR@topk. Tasks 2-6 read the baseline's own SeqRec answers, as a
model's run does.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from reclm_jax.cli import run_main
from reclm_jax.data.tasks import TaskContext
from reclm_jax.data.tasks.test_tasks import parse_rate_task
from reclm_jax.data.teacher_protocol import TeacherLike
from reclm_jax.data.templates import render_output_list
from reclm_jax.datasets.raw import RawDataset
from reclm_jax.errors import UserError
from reclm_jax.eval.client import EvalSettings, evaluate, print_scores
from reclm_jax.eval.dataset_flags import add_dataset_flags, build_context, make_teacher
from reclm_jax.eval.test_samples import parse_tasks

KINDS = ("teacher", "popularity")
_CHUNK = 1024


class PopularityRanker:
    """Ranks every item by its interactions in the training part of all sequences (``seq[:-2]``, the teacher's
    popularity baseline), ties to catalogue order; answers ``TeacherLike``'s calls."""

    def __init__(self, raw: RawDataset):
        counts = Counter(i for seq in raw.sequential.values() for i in seq[:-2])
        self.order = sorted(raw.items, key=lambda i: -counts[i])  # a stable sort: ties keep catalogue order
        self.rank = {i: r for r, i in enumerate(self.order)}
        self.counts = counts
        self.cat_set = {c: frozenset(v) for c, v in raw.category2item.items()}

    def topk(self, histories: Sequence[Sequence[str]], k: int,
             target_categories: Sequence[str | None] | None = None,
             candidates: Sequence[Sequence[str] | None] | None = None,
             users: Sequence[str] | None = None) -> list[list[str]]:
        """As ``Teacher.topk``: the k most popular allowed items per row (candidates; else ``+C``/``-C``/all
        minus the history), topped up with the most popular others when fewer qualify."""
        out = []
        for b, hist in enumerate(histories):
            cand = candidates[b] if candidates is not None else None
            target = target_categories[b] if target_categories is not None else None
            if cand is not None:
                cand_set = set(cand)
                ok = cand_set.__contains__
            else:
                seen = set(hist)
                members = self.cat_set[target[1:]] if target else None
                inside = target is not None and target[0] == "+"

                def ok(i, seen=seen, members=members, inside=inside):
                    return i not in seen and (members is None or (i in members) == inside)
            best = []
            for i in self.order:  # most popular first: stop as soon as k are found
                if len(best) == k:
                    break
                if ok(i):
                    best.append(i)
            if len(best) < k:
                best += [i for i in self.order if not ok(i)][:k - len(best)]
            out.append(best)
        return out

    def ranking(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
                users: Sequence[str] | None = None) -> list[list[int]]:
        return [[self.rank[c] for c in cands] for cands in candidates]


def baseline_lists(ranker: TeacherLike, ctx: TaskContext, task: str, samples: Sequence[dict]) -> list[list[str]]:
    """The ranker's item ids for each sample of ``task`` (one batched call per chunk and query kind)."""
    out: list[list[str]] = []
    for start in range(0, len(samples), _CHUNK):
        chunk = samples[start:start + _CHUNK]
        fields = [s["input_field_data"] for s in chunk]
        hists = [ctx.sequential[f["user"]][:-1] for f in fields]
        ks = [int(f["item_count"]) for f in fields]
        k = max(ks)
        if task in ("SFT+TestPersonalControlRec", "SFT-TestPersonalControlRec"):
            sign = "+" if task.startswith("SFT+") else "-"
            lists = ranker.topk(hists, k, target_categories=[sign + f["target_category"] for f in fields])
        elif task.startswith("SFTTestPersonalCategoryRate"):
            parse_rate_task(task)
            counts = [int(f["category_count"]) for f in fields]
            inside = ranker.topk(hists, max(counts), target_categories=["+" + f["target_category"] for f in fields])
            outside = ranker.topk(hists, k, target_categories=["-" + f["target_category"]
                                                                              for f in fields])
            # A ranker tops a short category up with outside items, so the two lists may overlap.
            picked = [a[:c] + [i for i in b if i not in a[:c]][:kk - c]
                      for a, b, c, kk in zip(inside, outside, counts, ks)]
            ranks = ranker.ranking(hists, picked)
            lists = [[i for _, i in sorted(zip(r, p), key=lambda t: t[0])] for r, p in zip(ranks, picked)]
        elif task == "SFTTestSeqRanking":
            lists = ranker.topk(hists, k, candidates=[f["candidate_items"] for f in fields])
        else:
            lists = ranker.topk(hists, k)
        out += [lst[:kk] for lst, kk in zip(lists, ks)]
    return out


class BaselineAnswerer:
    """An ``eval.client`` answerer: each sample's ranker list rendered as ``1. A\\n 2. B ...``."""

    def __init__(self, ranker: TeacherLike, ctx: TaskContext, progress: bool = True):
        self.ranker, self.ctx, self.progress = ranker, ctx, progress

    def __call__(self, task: str, samples: Sequence[dict], cached: dict) -> tuple[dict, dict]:
        texts = {}
        bar = tqdm(total=len(samples), desc=task, unit="sample", disable=not self.progress, leave=False)
        lists = baseline_lists(self.ranker, self.ctx, task, samples)
        for s, items in zip(samples, lists):
            texts[s["position"]] = render_output_list(self.ctx.titles(items), "", self.ctx.s.idx)
        bar.update(len(samples))
        bar.close()
        return texts, {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.eval.baselines", description=__doc__.split("\n\n")[0])
    add_dataset_flags(p)
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--output_dir", required=True, help="the evaluated run folder to write")
    p.add_argument("--name", default=None, help="the run's name in reports (default: --kind)")
    p.add_argument("--json", default=None, help="also write the scores here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    tasks = parse_tasks(a.tasks)
    ctx = build_context(a)
    if a.kind == "teacher":
        if not (a.teacher_checkpoint or a.teacher_port):
            raise UserError("--kind teacher needs --teacher_checkpoint RUN (or --teacher_port of its service)")
        ranker = make_teacher(a, ctx)
        source = a.teacher_checkpoint or f"port {a.teacher_port}"
    else:
        ranker, source = PopularityRanker(ctx.raw), "popularity"
    settings = EvalSettings(run_dir=Path(a.output_dir), name=a.name or a.kind, tasks=tuple(tasks),
                            data_path=a.data_path, item_index=a.item_index, kind=a.kind, max_users=a.max_users,
                            idx=not a.no_idx, overwrite=True)
    # The baseline's own SeqRec answers feed tasks 2-6: no teacher fallback is ever needed.
    scores = evaluate(ctx, BaselineAnswerer(ranker, ctx), settings, model_name=str(source))
    print_scores(scores, Path(a.output_dir), a.json)
    return 0


if __name__ == "__main__":
    run_main(main)
