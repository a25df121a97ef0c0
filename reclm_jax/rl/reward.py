"""The RL reward "NR-20.1" (the original's ``rl/reward.py::reward_calculate``), and ``python -m reclm_jax.rl.reward``.

For one RL sample (task, ``input_field_data``, generated text) the text is parsed exactly as validation parses it
(``eval.parsing.parse_list``), each title is mapped to its item through the item index, the teacher ranks the
items, and every line i (0-based, k = ``item_count``, alpha = ``reward_alpha`` = 0.5) gets, in this order:

1. ``extra``: i >= k; ``non_existent``: the title is not in the index; ``not_candidate`` (RLSeqRanking): the title
   is not one of the candidates; ``repeat``: its item was on an earlier line; ``in_history``: its item is in
   ``sub_sequential``. Each of these scores -1 as rank, position-corrected and task score.
2. Otherwise (``ok``): rank = 1 for the target item, else 1/log2(r + 3) with r the teacher's 0-based rank among all
   items (RLSeqRanking: among the listed items); corrected = rank / log2(i + 2); the in/out-of-category counters
   are updated, then the task score (control tasks only) is read off them (``_task_score``).

The item reward is the rank score (SeqRec, ItemCount, SeqRanking) or ``alpha * rank + (1 - alpha) * task``; only
the list reward is position-discounted:
``list_reward = 10 * (alpha * sum(corrected) / IDCG[k] + (1 - alpha) * list_task_reward)`` with
``IDCG[k] = sum_{j<k} 1 / log2(j + 2)**2`` and ``list_task_reward`` from ``_list_task_reward``. The x10 is NR-20's
(the value placed on the last token, and the original's ``RewardSum``).

Where this differs from the original (audit R3, ``docs/differences.md``):

- A title that is not in the index maps to no item (``None``). The original mapped it to a sentinel, the first
  item of ``meta.pickle``, which then leaked into the repeat test (a later genuine occurrence of that item scored
  -1 as a repeat), into the target test of the list reward, and into the teacher request (RLSeqRanking: its rank
  shifted the other items' in-list ranks). Here a non-existent title scores -1 on its line (as the original),
  occupies its line position (later lines stay discounted by their own position), and nothing else: it is never
  sent to the teacher, never a repeat of or repeated by anything, never the target.
- RLSeqRanking candidates are tested by exact title membership (``candidate_items``' titles), as the project's
  NotInCandidate metric; the original tested substrings of the joined ``candidate_titles`` string, so a garbled
  fragment of a title passed and was scored with the sentinel's rank.
- An output with no titles (empty or blank text) scores as the original scores it, one non-existent line:
  -1 in the corrected sum, counters at 0. It has no item rewards (there is no line to put one on).
- The generic ``RLPersonalCategoryRate`` is scored as LP, as the task layer builds it (the original raised).
- RLSeqRanking's in-list ranks break ties (a repeated item) in list order; the original's ``np.argsort`` default
  sort is not stable on every platform.

Kept as the original: extra lines still count for the SeqRec-type list task reward (the target found on line
i >= k gives 1/log2(i + 2) there, while the line itself scores -1); no fuzzy title mapping unless asked
(``vague_mapping``, the paper run's VM-False).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from reclm_jax.atomic import open_atomic
from reclm_jax.cli import run_main
from reclm_jax.data.fuzzy import FuzzyMatcher
from reclm_jax.data.item_index import ItemIndex, load_dataset
from reclm_jax.data.tasks.rl_tasks import parse_rl_rate_task
from reclm_jax.data.teacher_protocol import TeacherLike
from reclm_jax.errors import UserError
from reclm_jax.eval.parsing import parse_list
from reclm_jax.jsonl import iter_json_lines
from reclm_jax.models.tokenizer import load_tokenizer
from reclm_jax.teacher.connect import connect_teacher

LIST_REWARD_SCALE = 10.0  # NR-20: res = [item_reward, list_reward * 10]
PENALTY = -1.0  # extra, non-existent, not a candidate, repeat, in history
SEQREC_TASKS = ("RLSeqRec", "RLItemCount", "RLSeqRanking")
RL_REWARD_TASKS = SEQREC_TASKS + ("RL+PersonalControlRec", "RL-PersonalControlRec",
                                  "RLPersonalCategoryRate[LP|MP|EP][_<p>]")


def task_kind(task: str) -> str:
    """``seqrec`` (SeqRec, ItemCount, SeqRanking), ``plus`` / ``minus`` (I1 +C / -C) or ``LP`` / ``MP`` / ``EP``."""
    if task in SEQREC_TASKS:
        return "seqrec"
    if task == "RL+PersonalControlRec":
        return "plus"
    if task == "RL-PersonalControlRec":
        return "minus"
    if task.startswith("RLPersonalCategoryRate"):
        return parse_rl_rate_task(task)[0]
    raise UserError(f"task {task!r} has no RL reward; RL tasks: {', '.join(RL_REWARD_TASKS)}")


def ideal_dcg(k: int) -> float:
    """The original's ``best_ranking_score[k]``: every one of k lines at rank score 1/log2(j + 2), discounted."""
    return sum(1.0 / math.log2(j + 2) ** 2 for j in range(k))


@dataclasses.dataclass(frozen=True)
class RewardCatalogue:
    """What the reward looks up: the item index (title <-> item) and the categories (id sets and sizes)."""

    index: ItemIndex
    category_items: Mapping[str, frozenset[str]]
    category_sizes: Mapping[str, int]

    @classmethod
    def build(cls, index: ItemIndex, category2item: Mapping[str, Sequence[str]]) -> RewardCatalogue:
        return cls(index, {c: frozenset(v) for c, v in category2item.items()},
                   {c: len(v) for c, v in category2item.items()})  # len(list), as the original's |C|


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    alpha: float = 0.5  # the original's --reward_alpha: ranking vs task share
    idx: bool = True  # outputs are numbered "1. ..." (every published script's --idx)
    vague_mapping: bool = False  # the original's --vague_mapping (off in the paper run: VM-False)


@dataclasses.dataclass(frozen=True)
class Reward:
    """One sample's reward and every term it came from (per-line lists share the titles' order)."""

    task: str
    titles: list[str]
    items: list[str | None]  # the item each title maps to; None: not in the index
    statuses: list[str]  # ok | extra | non_existent | not_candidate | repeat | in_history
    teacher_ranks: list[int | None]  # the teacher's 0-based rank among all items (None: not asked)
    ranks: list[int | None]  # the rank the score used (RLSeqRanking: within the listed items)
    rank_scores: list[float]
    corrected_scores: list[float]
    task_scores: list[float] | None  # control tasks only
    item_rewards: list[float]
    in_category_count: int
    out_category_count: int
    ideal_dcg: float
    ranking_term: float  # sum(corrected) / IDCG[k]
    list_task_reward: float
    list_reward: float  # x10 included: the value on the last token

    def terms(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "statuses", "teacher_ranks", "ranks", "rank_scores", "corrected_scores", "task_scores",
            "in_category_count", "out_category_count", "ideal_dcg", "ranking_term", "list_task_reward")}


def _field(fields: Mapping[str, Any], name: str, task: str) -> Any:
    if name not in fields:
        raise UserError(f"input_field_data has no {name!r} (needed by task {task})")
    return fields[name]


def _count(fields: Mapping[str, Any], name: str, task: str, minimum: int) -> int:
    v = _field(fields, name, task)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise UserError(f"input_field_data {name!r} must be an integer >= {minimum}, got {v!r} (task {task})")
    return v


def _ids(fields: Mapping[str, Any], name: str, task: str) -> list[str]:
    v = _field(fields, name, task)
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise UserError(f"input_field_data {name!r} must be a list of item ids, got {type(v).__name__} (task {task})")
    return [str(x) for x in v]  # ids are strings in this project (raw pickles may hold ints)


@dataclasses.dataclass(frozen=True)
class SampleFields:
    """The ``input_field_data`` entries a task's reward reads, checked."""

    kind: str
    item_count: int
    target_item: str
    history: tuple[str, ...]  # sub_sequential: the repeat-free history the teacher conditions on
    user: str | None
    target_category: str | None
    category_count: int  # CategoryRate tasks (0 otherwise)
    candidates: tuple[str, ...] | None  # RLSeqRanking's candidate_items


def read_fields(task: str, fields: Mapping[str, Any]) -> SampleFields:
    """Checks and reads one sample's fields; ``UserError`` names the task and the missing or malformed field."""
    if not isinstance(fields, Mapping):
        raise UserError(f"input_field_data must be a mapping, got {type(fields).__name__}")
    kind = task_kind(task)
    # SeqRec-type tasks count in/out-of-category items too (unused there), so their category may be absent.
    category = fields.get("target_category") if kind == "seqrec" else _field(fields, "target_category", task)
    user = fields.get("user")
    return SampleFields(
        kind=kind, item_count=_count(fields, "item_count", task, 1),
        target_item=str(_field(fields, "target_item", task)), history=tuple(_ids(fields, "sub_sequential", task)),
        user=None if user is None else str(user), target_category=None if category is None else str(category),
        category_count=_count(fields, "category_count", task, 0) if kind in ("LP", "MP", "EP") else 0,
        candidates=tuple(_ids(fields, "candidate_items", task)) if task == "RLSeqRanking" else None)


def _task_score(kind: str, member: bool, in_cnt: int, out_cnt: int, k: int, count: int) -> float:
    """NR-19's per-item task score, from the counters *after* this item was counted."""
    if kind == "plus":
        return 1.0 if member else 0.0
    if kind == "minus":
        return 0.0 if member else 1.0
    if kind == "LP":
        if out_cnt > k - count:
            return 0.5
        return 1.0 if not member else 0.5 if in_cnt < count else 0.0
    if kind == "MP":
        if in_cnt > count:
            return 0.5
        return 1.0 if member else 0.5 if out_cnt < k - count else 0.0
    # EP
    if member:
        return 1.0 if in_cnt <= count else 0.0
    return 1.0 if in_cnt >= count else 0.5 if out_cnt <= k - count else 0.0


def _list_task_reward(kind: str, items: Sequence[str | None], target: str, in_cnt: int, out_cnt: int, k: int,
                      count: int, category_size: int) -> float:
    """NR-18's list-level task reward."""
    if kind == "seqrec":
        # The first line holding the target, extra lines included (as the original's item_list.index).
        pos = next((i for i, x in enumerate(items) if x == target), None)
        return 0.0 if pos is None else 1.0 / math.log2(pos + 2)
    if kind == "plus":
        return 1.0 / (min(k, category_size) - in_cnt + 1)
    if kind == "minus":
        return 1.0 / (k - out_cnt + 1)
    met = {"LP": in_cnt <= count, "MP": in_cnt >= count, "EP": in_cnt == count}[kind]
    return 1.0 if met else 1.0 / (abs(in_cnt - count) + 1)


def teacher_request(items: Sequence[str | None]) -> list[str]:
    """The items the teacher ranks for one list: every line that maps to an item, in order (repeats kept, as
    the original), and never a stand-in for a non-existent title."""
    return [x for x in items if x is not None]


def nr20_reward(task: str, fields: Mapping[str, Any], titles: Sequence[str], catalogue: RewardCatalogue,
                teacher_ranks: Sequence[int], alpha: float = 0.5) -> Reward:
    """NR-20.1 of one parsed list (pure: the teacher's answer is passed in).

    ``teacher_ranks``: the teacher's 0-based ranks of ``teacher_request(items)`` (one per line that maps to an
    item, in order). Raises ``UserError`` for an unknown task or a missing / malformed field.
    """
    f = read_fields(task, fields)
    kind, k, target, count = f.kind, f.item_count, f.target_item, f.category_count
    history = set(f.history)
    allowed = None if f.candidates is None else {catalogue.index.text.get(i, i) for i in f.candidates}
    members = catalogue.category_items.get(f.target_category, frozenset())
    items = [catalogue.index.item_of(t) for t in titles]
    real = [i for i, x in enumerate(items) if x is not None]
    if len(teacher_ranks) != len(real):
        raise ValueError(f"{len(teacher_ranks)} teacher ranks for {len(real)} listed items")
    global_ranks: list[int | None] = [None] * len(items)
    for i, r in zip(real, teacher_ranks):
        global_ranks[i] = int(r)
    ranks = list(global_ranks)
    if task == "RLSeqRanking" and real:
        # The original's argsort(argsort(r)): each item's rank among the listed ones (ties in list order).
        within = np.argsort(np.argsort(np.asarray(teacher_ranks), kind="stable"), kind="stable")
        for i, r in zip(real, within):
            ranks[i] = int(r)

    statuses, rank_s, corr_s, task_s = [], [], [], []
    seen: set[str] = set()
    in_cnt = out_cnt = 0
    for i, (title, x) in enumerate(zip(titles, items)):
        if i >= k:
            status = "extra"
        elif x is None:
            status = "non_existent"
        elif allowed is not None and title not in allowed:
            status = "not_candidate"
        elif x in seen:
            status = "repeat"
        elif x in history:
            status = "in_history"
        else:
            status = "ok"
        if x is not None:
            seen.add(x)  # every earlier mapped line counts for the repeat test, whatever its own status
        statuses.append(status)
        if status != "ok":
            rank_s.append(PENALTY)
            corr_s.append(PENALTY)
            task_s.append(PENALTY)
            continue
        score = 1.0 if x == target else 1.0 / math.log2(ranks[i] + 3)  # f(r + 1), f(j) = 1/log2(j + 2)
        rank_s.append(score)
        corr_s.append(score / math.log2(i + 2))
        member = x in members
        in_cnt += member
        out_cnt += not member
        if kind != "seqrec":
            task_s.append(_task_score(kind, member, in_cnt, out_cnt, k, count))

    if kind == "seqrec":
        item_rewards = list(rank_s)
    else:
        item_rewards = [alpha * r + (1 - alpha) * t for r, t in zip(rank_s, task_s)]
    # No titles: the original parsed "" as one line [''], a non-existent title.
    corrected_sum = sum(corr_s) if titles else PENALTY
    idcg = ideal_dcg(k)
    ranking_term = corrected_sum / idcg
    list_task = _list_task_reward(kind, items, target, in_cnt, out_cnt, k, count,
                                  catalogue.category_sizes.get(f.target_category, 0))
    list_reward = LIST_REWARD_SCALE * (alpha * ranking_term + (1 - alpha) * list_task)
    return Reward(task=task, titles=list(titles), items=items, statuses=statuses, teacher_ranks=global_ranks,
                  ranks=ranks, rank_scores=rank_s, corrected_scores=corr_s,
                  task_scores=None if kind == "seqrec" else task_s, item_rewards=item_rewards,
                  in_category_count=in_cnt, out_category_count=out_cnt, ideal_dcg=idcg, ranking_term=ranking_term,
                  list_task_reward=list_task, list_reward=float(list_reward))


class RewardModel:
    """Scores RL samples against a catalogue with a teacher (any ``TeacherLike``: in-process or the service).

    ``score`` parses every output as validation does, asks the teacher once for the whole batch, then applies
    ``nr20_reward`` per sample.
    """

    def __init__(self, catalogue: RewardCatalogue, teacher: TeacherLike | None,
                 settings: RewardSettings = RewardSettings()):
        self.catalogue = catalogue
        self.teacher = teacher
        self.settings = settings
        self._matcher = FuzzyMatcher(catalogue.index.titles) if settings.vague_mapping else None

    def parse(self, output_text: str) -> list[str]:
        """The titles of a generated list (fuzzily mapped with ``vague_mapping``)."""
        titles = parse_list(output_text, self.settings.idx)
        return self._matcher.map(titles) if self._matcher is not None else titles

    def score_titles(self, samples: Sequence[tuple[str, Mapping[str, Any], Sequence[str]]]) -> list[Reward]:
        """``[(task, input_field_data, titles), ...]`` -> one ``Reward`` each; one teacher ``ranking`` call.

        Every sample's fields are checked before the teacher is asked."""
        checked = [read_fields(task, fields) for task, fields, _ in samples]
        requests = [teacher_request([self.catalogue.index.item_of(t) for t in titles]) for _, _, titles in samples]
        asked = [j for j, r in enumerate(requests) if r]  # a list with no item needs no teacher
        answers: dict[int, list[int]] = {}
        if asked:
            if self.teacher is None:
                raise UserError("the RL reward ranks items with the teacher: give a teacher checkpoint or port")
            users = [checked[j].user for j in asked]
            ranks = self.teacher.ranking([list(checked[j].history) for j in asked], [requests[j] for j in asked],
                                         users=users if None not in users else None)
            if len(ranks) != len(asked):
                raise ValueError(f"the teacher answered {len(ranks)} of {len(asked)} ranking rows")
            answers = dict(zip(asked, ranks))
        return [nr20_reward(task, fields, titles, self.catalogue, answers.get(j, []), self.settings.alpha)
                for j, (task, fields, titles) in enumerate(samples)]

    def score(self, samples: Sequence[tuple[str, Mapping[str, Any], str]]) -> list[Reward]:
        """``[(task, input_field_data, output_text), ...]`` -> one ``Reward`` each."""
        return self.score_titles([(task, fields, self.parse(text)) for task, fields, text in samples])


def reward(task: str, input_field_data: Mapping[str, Any], output_text: str, catalogue: RewardCatalogue,
           teacher: TeacherLike | None, settings: RewardSettings = RewardSettings()) -> Reward:
    """NR-20.1 of one sample (``RewardModel.score`` batches many into one teacher call)."""
    return RewardModel(catalogue, teacher, settings).score([(task, input_field_data, output_text)])[0]


# -- python -m reclm_jax.rl.reward ------------------------------------------------------------------------------
INPUT_FIELDS = ("task", "input_field_data", "output_text")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reclm_jax.rl.reward",
        description="NR-20.1 rewards of generated lists: each JSON line of --input ({task, input_field_data, "
                    "output_text}, the fields of the RL samples) is written to --output with list_reward (x10 "
                    "included), item_rewards (one per listed title), titles, items and the terms.")
    p.add_argument("--data_path", required=True, help="raw dataset folder (the four pickles)")
    p.add_argument("--item_index", default="title", help="id | title | title64 | title_t | title64_t | a meta field")
    p.add_argument("--tokenizer", default=None, help="HF tokenizer folder, for computed item indexes (*_t, titleN)")
    p.add_argument("--teacher_checkpoint", default=None, help="teacher run folder: rank in-process")
    p.add_argument("--teacher_port", type=int, default=0, help="or the teacher service's port")
    p.add_argument("--backup_ip", default="127.0.0.1", help="teacher service host(s), comma-separated")
    p.add_argument("--input", required=True, help="JSON lines: task, input_field_data, output_text")
    p.add_argument("--output", required=True, help="JSON lines written here (atomically)")
    p.add_argument("--reward_alpha", type=float, default=0.5)
    p.add_argument("--no_idx", action="store_true", help="outputs are not numbered (default: '1. ...' lines)")
    p.add_argument("--vague_mapping", action="store_true", help="map unknown titles to one within distance 3")
    p.add_argument("--batch", type=int, default=256, help="samples per teacher call")
    return p


def read_samples(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) of every non-blank line; ``UserError`` naming the line and the field for bad JSON, a
    missing or mistyped field, or ``input_field_data`` the task's reward cannot use (``read_fields``)."""
    p = Path(path)
    out = []
    for n, rec in iter_json_lines(p, f"--input {p}: file not found"):
        missing = [f for f in INPUT_FIELDS if f not in rec]
        if missing:
            raise UserError(f"{p}:{n}: missing field {missing[0]!r} (each line needs {', '.join(INPUT_FIELDS)})")
        for name, kind in (("task", str), ("input_field_data", dict), ("output_text", str)):
            if not isinstance(rec[name], kind):
                raise UserError(f"{p}:{n}: field {name!r} must be a JSON {'string' if kind is str else 'object'}")
        try:
            read_fields(rec["task"], rec["input_field_data"])
        except UserError as e:
            raise UserError(f"{p}:{n}: {e}") from None
        out.append((n, rec))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.reward_alpha <= 1.0:
        raise UserError(f"--reward_alpha must be in [0, 1], got {args.reward_alpha}")
    if args.batch < 1:
        raise UserError("--batch must be >= 1")
    if not args.teacher_checkpoint and not args.teacher_port:
        raise UserError("give --teacher_checkpoint (in-process teacher) or --teacher_port (the service)")
    samples = read_samples(args.input)  # bad input fails before the dataset and the teacher are loaded
    tokenizer = load_tokenizer(args.tokenizer, key="--tokenizer") if args.tokenizer else None
    raw, index = load_dataset(args.data_path, args.item_index, tokenizer)
    teacher = connect_teacher(args.teacher_checkpoint or "", args.teacher_port, args.backup_ip,
                              data_path=args.data_path, dataset=raw,
                              keys=("--teacher_checkpoint", "--teacher_port", "--backup_ip"))
    model = RewardModel(RewardCatalogue.build(index, raw.category2item), teacher,
                        RewardSettings(alpha=args.reward_alpha, idx=not args.no_idx,
                                       vague_mapping=args.vague_mapping))
    parsed = [(rec["task"], rec["input_field_data"], model.parse(rec["output_text"])) for _, rec in samples]
    with open_atomic(args.output, "w") as f:
        for start in range(0, len(parsed), args.batch):
            rewards = model.score_titles(parsed[start:start + args.batch])
            for (_, rec), r in zip(samples[start:start + args.batch], rewards):
                out = dict(rec)
                out.update(list_reward=r.list_reward, item_rewards=r.item_rewards, titles=r.titles, items=r.items,
                           terms=r.terms())
                f.write(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"wrote {args.output}: {len(samples)} rewards")
    return 0


if __name__ == "__main__":
    run_main(main)
