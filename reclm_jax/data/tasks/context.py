"""What every task builder shares: settings, the dataset with its item index, the chat format, teacher queries.

A task builder is a generator ``build(ctx, datum, rng)``: it draws its randomness from ``rng`` (the sample's own
generator), ``yield``s a list of ``TopK`` teacher queries (possibly none, possibly twice), receives one item
list per query, and finally ``return``s the sample dict. ``samples.py`` drives many builders at once so that each
round of queries becomes a single ``topk`` call of the teacher (any ``teacher_protocol.TeacherLike``).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Generator, Mapping, Sequence

import numpy as np

from reclm_jax.data.chat import ChatFormat
from reclm_jax.data.item_index import ItemIndex
from reclm_jax.datasets.raw import RawDataset
from reclm_jax.data.sampling import choices_excluding, shuffled, uniform_int
from reclm_jax.data.splits import MAX_ITEM_LENGTH, held_out, window
from reclm_jax.data.templates import Template, render_candidates, render_history, render_output_list
from reclm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """The original's task flags (``max_prompt_length`` is its ``--max_token_length``). Unless
    ``keep_held_out``, each user's val/test targets stay out of train labels, candidates and teacher lists (the
    original could place them there); set it True for the original behaviour."""

    topk: int = 10
    candidate_num: int = 10
    max_item_length: int = MAX_ITEM_LENGTH
    idx: bool = True
    val_num_per_task: int = 320
    share_chat_gpt_ratio: float = 0.0
    max_prompt_length: int = 512
    keep_held_out: bool = False


@dataclasses.dataclass(frozen=True)
class TopK:
    """A teacher request: the top ``k`` items for ``history`` (history excluded), optionally within ``"+C"`` or
    outside ``"-C"``, with ``exclude`` items removed from the answer."""

    history: tuple[str, ...]
    k: int
    category: str | None = None
    exclude: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Datum:
    """One entry of the epoch's datum list: ``key`` is a user, an item or (category, template id)."""

    task: str
    key: Any
    mode: str  # train | val | test
    index: int  # position in the dataset's datum list (the original's ``idx``)


Sample = dict
Builder = Generator[list[TopK], list[list[str]], Sample]


class TaskContext:
    """Dataset-derived lookups shared by all builders (built once; read-only afterwards)."""

    def __init__(self, raw: RawDataset, index: ItemIndex, settings: TaskSettings, chat: ChatFormat,
                 eos_token: str, share_chat: Any = None,
                 seqrec_results: Mapping[str, Sequence[str]] | None = None):
        self.raw = raw
        self.index = index
        self.s = settings
        self.chat = chat
        self.eos = eos_token
        self.share_chat = share_chat
        # test mode: the model's own SFTTestSeqRec / RLSeqRec titles per user (the original's *_Result pickle).
        self.seqrec_results = seqrec_results
        self.items = raw.items
        self.users = raw.users
        self.sequential = raw.sequential
        self.categories = raw.categories
        self.cat_items = raw.category2item
        self.cat_set = {c: frozenset(v) for c, v in raw.category2item.items()}
        self.item2category = raw.item2category
        self.items_with_category = [i for i in self.items if self.item2category.get(i)]

    # -- text --------------------------------------------------------------------------------------------
    def title(self, item: str) -> str:
        return self.index.text[item]

    def titles(self, items: Sequence[str]) -> list[str]:
        return [self.index.text[i] for i in items]

    def prompt(self, template: Template, fields: Mapping[str, Any]) -> str:
        return self.chat.rec_prompt(template.sys, template.first_turn, template.instruction(fields))

    def label(self, items: Sequence[str]) -> str:
        """The training output: the numbered list plus ``"\\n" + eos``."""
        return render_output_list(self.titles(items), "\n" + self.eos, self.s.idx).strip()

    def sample(self, task: str, template: Template, fields: dict, output_text: str) -> Sample:
        return {"input_text": self.prompt(template, fields), "output_text": output_text.strip(), "task": task,
                "input_field_data": fields}

    # -- users -------------------------------------------------------------------------------------------
    def user_fields(self, datum: Datum, rng: np.random.Generator) -> tuple[dict, list[str], str, int]:
        """Base ``input_field_data`` of a user task: (fields, history, target, target position)."""
        seq = self.sequential[datum.key]
        hist, target, pos = window(datum.mode, seq, rng, self.s.max_item_length)
        fields = {"user": datum.key, "target_item": target, "target_item_title": self.title(target),
                  "sub_sequential": hist, "history": render_history(self.titles(hist))}
        return fields, hist, target, pos

    def exclusions(self, datum: Datum) -> tuple[str, ...]:
        if datum.mode != "train" or self.s.keep_held_out or datum.key not in self.sequential:
            return ()
        return held_out(self.sequential[datum.key])

    def query(self, datum: Datum, history: Sequence[str], k: int, category: str | None = None) -> TopK:
        return TopK(tuple(history), k, category, self.exclusions(datum))

    def last_category(self, item: str) -> str | None:
        cats = self.item2category.get(item)
        return cats[-1] if cats else None

    def max_categories(self, item_list: Sequence[str], target: str, cap: int | None = None) -> list[str]:
        """Categories not containing ``target`` that occur most often in ``item_list`` (category order).

        With ``cap`` (RL train: 2) every such category whose count is ``>= min(cap, max count)`` qualifies.
        If every category contains ``target`` the original fails; here all categories are returned instead.
        """
        counts = {c: 0 for c in self.categories if target not in self.cat_set[c]}
        if not counts:
            return list(self.categories)
        for i in item_list:
            for c in self.item2category.get(i) or ():
                if c in counts:
                    counts[c] += 1
        best = max(counts.values())
        if cap is not None:
            best = min(cap, best)
        return [c for c, n in counts.items() if n >= best]

    # -- candidates --------------------------------------------------------------------------------------
    def candidate_pool(self, datum: Datum, rng: np.random.Generator, output_items: Sequence[str]) -> list[str]:
        """Output items plus random other items (drawn with replacement, as the original), shuffled; the pool
        size is ``U{topk..candidate_num}``."""
        size = uniform_int(rng, self.s.topk, max(self.s.topk, self.s.candidate_num))
        extra = choices_excluding(rng, self.items, size - len(output_items),
                                  set(output_items) | set(self.exclusions(datum)))
        return shuffled(rng, list(output_items) + extra)

    def ranking_candidates(self, user: str, target: str, index: int) -> list[str]:
        """Val/test ranking: the first ``candidate_num - 1`` stored negatives with the target inserted at
        ``index % candidate_num``."""
        if self.raw.ranking_candidate is None:
            raise UserError(f"{self.raw.root}: ranking tasks need ranking_candidate.pickle")
        if user not in self.raw.ranking_candidate:
            raise UserError(f"ranking_candidate.pickle: no candidates for user {user!r}")
        cands = list(self.raw.ranking_candidate[user][:self.s.candidate_num - 1])
        cands.insert(index % self.s.candidate_num, target)
        return cands

    def seqrec_result(self, user: str) -> list[str] | None:
        """Test mode: the model's SeqRec titles mapped to items (``'None'`` when unknown), or None when no result
        is stored for ``user`` (the builders then use the teacher and flag it: ``note_seqrec_source``)."""
        titles = None if self.seqrec_results is None else self.seqrec_results.get(user)
        if titles is None:
            return None
        return [self.index.item_of(t) or "None" for t in titles]

    @staticmethod
    def note_seqrec_source(fields: dict, from_model: bool) -> None:
        """Test mode: records where ``SeqRec_Result`` came from (``SeqRec_Source``: "model" or "teacher"); the
        teacher fallback is not in the original (which crashes without the model's result), so it is announced."""
        fields["SeqRec_Source"] = "model" if from_model else "teacher"
        if not from_model:
            # A fixed message: Python shows it once, however many samples fall back.
            warnings.warn("test mode: a user has no stored SeqRec result of the model; its SeqRec_Result (SR "
                          "baselines, I1-/LP categories) comes from the teacher, which the original never does. "
                          "Such samples carry SeqRec_Source='teacher'.", UserWarning, stacklevel=2)
