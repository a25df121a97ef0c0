"""The four RecLM-gen pickles of a dataset, loaded into one typed, validated object.

Folder layout (the original's format)::

    category.pickle           {category: [item_id, ...]}
    meta.pickle               {item_id: {"title": str, ...}}
    sequential.pickle         {user_id: [item_id, ...]}      # time order; insertion order of users matters
    ranking_candidate.pickle  {user_id: [item_id, ...]}      # optional; 100 negatives per user

Ids may be stored as ``str`` or ``int``; they are normalised to ``str`` on load. Every problem found is
reported (file and key named), not just the first one.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from reclm_jax.atomic import write_pickle_atomic
from reclm_jax.errors import UserError

FILES = ("category.pickle", "meta.pickle", "sequential.pickle", "ranking_candidate.pickle")
# Leave-two-out (val = second-to-last, test = last) needs at least one item of history before them.
MIN_SEQUENCE_LENGTH = 3
# Item-index names that mean "use the raw id" rather than a meta field.
ID_INDEXES = ("id", "item")


@dataclasses.dataclass(frozen=True)
class RawDataset:
    """A validated dataset. Dict orders are those of the pickles (the original relies on them)."""

    root: Path
    category2item: dict[str, list[str]]
    meta: dict[str, dict[str, Any]]
    sequential: dict[str, list[str]]
    ranking_candidate: dict[str, list[str]] | None
    item_index: str
    item2category: dict[str, list[str]]  # categories of an item, in category2item order
    title2item: dict[str, list[str]]  # index string -> items carrying it (several if titles collide)
    warnings: tuple[str, ...] = ()

    @property
    def users(self) -> list[str]:
        return list(self.sequential)

    @property
    def items(self) -> list[str]:
        return list(self.meta)

    @property
    def categories(self) -> list[str]:
        return list(self.category2item)

    def index_text(self, item: str) -> str:
        """The string that stands for ``item`` in prompts and outputs (the ``item_index`` field)."""
        if self.item_index in ID_INDEXES:
            return item
        return self.meta[item][self.item_index]

    def summary(self) -> dict[str, Any]:
        lengths = np.array([len(s) for s in self.sequential.values()])
        pct = {f"p{q}": int(np.percentile(lengths, q)) for q in (25, 50, 75, 90)}
        return {
            "path": str(self.root),
            "users": len(self.sequential),
            "items": len(self.meta),
            "items_in_sequences": len({i for s in self.sequential.values() for i in s}),
            "categories": len(self.category2item),
            "interactions": int(lengths.sum()),
            "sequence_length": {"min": int(lengths.min()), **pct, "max": int(lengths.max()),
                                "mean": round(float(lengths.mean()), 2)},
            "ranking_candidates": None if self.ranking_candidate is None else len(self.ranking_candidate),
            "item_index": self.item_index,
            "duplicate_index_strings": sum(len(v) - 1 for v in self.title2item.values() if len(v) > 1),
        }


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable multi-line rendering of ``RawDataset.summary()``."""
    sl = summary["sequence_length"]
    lines = [
        f"dataset      {summary['path']}",
        f"users        {summary['users']:,}",
        f"items        {summary['items']:,} in meta, {summary['items_in_sequences']:,} in sequences",
        f"categories   {summary['categories']}",
        f"interactions {summary['interactions']:,}",
        "seq length   min {min}  p25 {p25}  p50 {p50}  p75 {p75}  p90 {p90}  max {max}  mean {mean}".format(**sl),
        f"candidates   {_candidates_line(summary['ranking_candidates'])}",
        f"item index   {summary['item_index']} ({summary['duplicate_index_strings']} duplicate strings)",
    ]
    return "\n".join(lines)


def _candidates_line(n: int | None) -> str:
    return "none (ranking tasks unavailable)" if n is None else f"{n:,} users"


def _load_pickle(path: Path, problems: list[str]) -> Any:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as e:  # a corrupt or non-pickle file: report, don't crash
        problems.append(f"{path.name}: cannot be read as a pickle ({type(e).__name__}: {e})")
        return None


def _id_list(value: Any, fname: str, key: str, what: str, problems: list[str]) -> list[str] | None:
    if not isinstance(value, (list, tuple)):
        problems.append(f"{fname}: value of key {key!r} must be a list of {what}, got {type(value).__name__}")
        return None
    bad = [v for v in value if not isinstance(v, (str, int)) or isinstance(v, bool)]
    if bad:
        problems.append(f"{fname}: key {key!r} holds a non-id element {bad[0]!r} ({type(bad[0]).__name__}); "
                        f"ids must be str or int")
        return None
    return [str(v) for v in value]


def _id_dict(obj: Any, fname: str, what: str, problems: list[str]) -> dict[str, list[str]] | None:
    if not isinstance(obj, dict):
        problems.append(f"{fname}: must hold a dict, got {type(obj).__name__}")
        return None
    out: dict[str, list[str]] = {}
    for k, v in obj.items():
        if not isinstance(k, (str, int)) or isinstance(k, bool):
            problems.append(f"{fname}: key {k!r} must be a str or int id, got {type(k).__name__}")
            continue
        ids = _id_list(v, fname, k, what, problems)
        if ids is not None:
            out[str(k)] = ids
    return out


def read_raw_files(path: str | Path, require_ranking_candidates: bool = False) -> dict[str, Any]:
    """The unpickled objects of the dataset folder ``path`` by file name (``ranking_candidate.pickle`` only
    when present), not yet validated: ``load_raw(path, files=...)`` validates them under any item index
    without reading the folder again. Raises ``UserError`` for a missing folder or missing/unreadable files."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    problems: list[str] = []
    raw: dict[str, Any] = {}
    for name in FILES:
        p = root / name
        if not p.is_file():
            if name != "ranking_candidate.pickle" or require_ranking_candidates:
                problems.append(f"{name}: missing in {root}")
            continue
        raw[name] = _load_pickle(p, problems)
    if problems:
        raise UserError("\n".join(problems))
    return raw


def load_raw(path: str | Path, item_index: str = "title", require_ranking_candidates: bool = False,
             min_sequence_length: int = MIN_SEQUENCE_LENGTH, files: dict[str, Any] | None = None) -> RawDataset:
    """Loads and validates the dataset folder ``path`` (from ``files``, when ``read_raw_files`` read it).

    Raises ``UserError`` listing every problem (one per line, each naming file and key). Problems that do not
    prevent use (duplicate index strings) are returned in ``RawDataset.warnings``.
    """
    root = Path(path)
    raw = files if files is not None else read_raw_files(root, require_ranking_candidates)
    problems: list[str] = []
    if require_ranking_candidates and "ranking_candidate.pickle" not in raw:
        raise UserError(f"ranking_candidate.pickle: missing in {root}")

    category2item = _id_dict(raw["category.pickle"], "category.pickle", "item ids", problems)
    sequential = _id_dict(raw["sequential.pickle"], "sequential.pickle", "item ids", problems)
    ranking = None
    if "ranking_candidate.pickle" in raw:
        ranking = _id_dict(raw["ranking_candidate.pickle"], "ranking_candidate.pickle", "item ids", problems)

    meta_obj = raw["meta.pickle"]
    meta: dict[str, dict[str, Any]] = {}
    meta_ids: set[str] = set()  # every id meta names, even with a malformed entry (reported once, not per use)
    if not isinstance(meta_obj, dict):
        problems.append(f"meta.pickle: must hold a dict, got {type(meta_obj).__name__}")
    else:
        missing_field = []
        for k, v in meta_obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                problems.append(f"meta.pickle: key {k!r} must be a str or int id, got {type(k).__name__}")
                continue
            meta_ids.add(str(k))
            if not isinstance(v, dict):
                problems.append(f"meta.pickle: value of key {k!r} must be a dict of fields, got {type(v).__name__}")
                continue
            if item_index not in ID_INDEXES:
                if item_index not in v:
                    missing_field.append(str(k))
                elif not isinstance(v[item_index], str) or not v[item_index].strip():
                    problems.append(f"meta.pickle: field {item_index!r} of item {k!r} must be a non-empty string, "
                                    f"got {v[item_index]!r}")
            meta[str(k)] = v
        if missing_field:
            problems.append(f"meta.pickle: {len(missing_field)} item(s) lack the item-index field {item_index!r} "
                            f"(first: {missing_field[0]!r}); choose another --item_index or add the field")

    if meta_ids:
        for fname, d in (("sequential.pickle", sequential), ("category.pickle", category2item),
                         ("ranking_candidate.pickle", ranking)):
            if not d:
                continue
            unknown = [(k, i) for k, ids in d.items() for i in ids if i not in meta_ids]
            if unknown:
                k, i = unknown[0]
                problems.append(f"{fname}: {len(unknown)} item id(s) missing from meta.pickle "
                                f"(first: item {i!r} under key {k!r})")
    if sequential is not None:
        if not sequential:
            problems.append("sequential.pickle: holds no users")
        short = [u for u, s in sequential.items() if len(s) < min_sequence_length]
        if short:
            problems.append(f"sequential.pickle: {len(short)} user(s) have fewer than {min_sequence_length} items "
                            f"(first: user {short[0]!r} with {len(sequential[short[0]])}); leave-two-out needs "
                            f"{min_sequence_length}")
    if category2item is not None:
        if not category2item:
            problems.append("category.pickle: holds no categories")
        empty = [c for c, items in category2item.items() if not items]
        if empty:
            problems.append(f"category.pickle: {len(empty)} empty categor{'y' if len(empty) == 1 else 'ies'} "
                            f"(first: {empty[0]!r})")
    if ranking is not None and sequential is not None:
        seq_users = {str(k) for k in raw["sequential.pickle"]}  # malformed users were reported already
        unknown_users = [u for u in ranking if u not in seq_users]
        if unknown_users:
            problems.append(f"ranking_candidate.pickle: {len(unknown_users)} user(s) not in sequential.pickle "
                            f"(first: {unknown_users[0]!r})")
    if problems:
        raise UserError("\n".join(problems))

    assert category2item is not None and sequential is not None
    item2category: dict[str, list[str]] = {}
    for c, items in category2item.items():
        for i in items:
            item2category.setdefault(i, []).append(c)
    title2item: dict[str, list[str]] = {}
    for i, fields in meta.items():
        text = i if item_index in ID_INDEXES else fields[item_index]
        title2item.setdefault(text, []).append(i)
    warnings = []
    dups = sum(len(v) - 1 for v in title2item.values() if len(v) > 1)
    if dups:
        example = next(t for t, v in title2item.items() if len(v) > 1)
        warnings.append(f"meta.pickle: {dups} item(s) share their {item_index!r} with another item "
                        f"(e.g. {example!r}); title -> item takes the first")
    return RawDataset(root=root, category2item=category2item, meta=meta, sequential=sequential,
                      ranking_candidate=ranking, item_index=item_index, item2category=item2category,
                      title2item=title2item, warnings=tuple(warnings))


def write_raw(path: str | Path, category2item: dict, meta: dict, sequential: dict,
              ranking_candidate: dict | None = None) -> Path:
    """Writes the pickles of a dataset folder (each file written to a temp name, then renamed)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    objs = {"category.pickle": category2item, "meta.pickle": meta, "sequential.pickle": sequential}
    if ranking_candidate is not None:
        objs["ranking_candidate.pickle"] = ranking_candidate
    for name, obj in objs.items():
        write_pickle_atomic(root / name, obj)
    return root
