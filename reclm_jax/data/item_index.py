"""Item indexes: the string that stands for an item in prompts and outputs (``--item_index``).

- ``id`` / ``item``: the raw item id.
- ``title`` (or any meta field present in ``meta.pickle``): the field as stored.
- ``title64`` / ``title32``: the title capped at 64 / 32 tokens of the model's tokenizer.
- ``title_t`` / ``title64_t`` / ``title32_t``: the (capped) title after an encode/decode round trip through the
  tokenizer, with duplicates made unique by appending ``" (k)"`` (k = 2, 3, ... in catalogue order), so that the
  string the model generates decodes back exactly and title -> item is a bijection.

Fields already present in ``meta.pickle`` win (the original never computes them; they ship with its data).
Without ``_t``, colliding strings keep the original's rule: title -> the first item carrying it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from reclm_jax.datasets.raw import ID_INDEXES, RawDataset, load_raw, read_raw_files
from reclm_jax.errors import UserError

_COMPUTED = re.compile(r"^title(\d+)?(_t)?$")


def computed_index_spec(name: str) -> tuple[int | None, bool] | None:
    """``(cap, round_trip)`` for computed index names (``title64_t`` -> (64, True)); None for others."""
    m = _COMPUTED.match(name)
    if not m or name == "title":
        return None
    return (int(m.group(1)) if m.group(1) else None), bool(m.group(2))


def normalise_title(title: str, tokenizer: Any, cap: int | None, round_trip: bool) -> str:
    """Caps ``title`` at ``cap`` tokens and, with ``round_trip``, returns the decoded tokens (stripped)."""
    ids = tokenizer.encode(title, add_special_tokens=False)
    if cap is None and not round_trip:
        return title
    if cap is not None and len(ids) <= cap and not round_trip:
        return title
    ids = ids[:cap] if cap is not None else ids
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def make_unique(strings: Sequence[str]) -> list[str]:
    """Appends ``" (k)"`` to the k-th occurrence (k >= 2) of a repeated string, skipping any taken name."""
    taken = set(strings)
    seen: dict[str, int] = {}
    out = []
    for s in strings:
        n = seen.get(s, 0) + 1
        seen[s] = n
        if n == 1:
            out.append(s)
            continue
        k = n
        while f"{s} ({k})" in taken:
            k += 1
        name = f"{s} ({k})"
        taken.add(name)
        out.append(name)
    return out


class ItemIndex:
    """Item id <-> index string. ``text[item]`` renders an item; ``item_of(s)`` maps a string back (or None)."""

    def __init__(self, items: Sequence[str], strings: Sequence[str], name: str):
        self.name = name
        self.items = list(items)
        self.text: dict[str, str] = dict(zip(self.items, strings))
        self.title2item: dict[str, str] = {}
        for item, s in zip(self.items, strings):
            self.title2item.setdefault(s, item)  # the original: title2item[t][0]
        self.titles = list(self.title2item)  # distinct strings, catalogue order

    def __len__(self) -> int:
        return len(self.items)

    def item_of(self, title: str) -> str | None:
        return self.title2item.get(title)

    @property
    def bijective(self) -> bool:
        return len(self.title2item) == len(self.items)


def longest_list_tokens(index: ItemIndex, tokenizer: Any, item_count: int, idx: bool = True) -> int:
    """Generated tokens needed to write the longest ``item_count``-item list of ``index`` (int).

    The list is the ``item_count`` strings with the most tokens, rendered as a model writes it (``1. A\\n 2. B\\n``,
    ``idx`` as the prompts' ``--idx``), plus one token per line (a title's tokens can change by one with its
    position, e.g. the space before it) and one stop token. A validation length at least this long never cuts
    a correct list (the original decodes up to 1024 tokens in all, at least 512 new: ``sft/trainer.py:157``).
    """
    from reclm_jax.data.templates import render_output_list

    titles = list(index.text.values())
    counts = [len(ids) for ids in tokenizer(titles, add_special_tokens=False)["input_ids"]] if titles else []
    longest = [titles[j] for j in sorted(range(len(titles)), key=lambda j: -counts[j])[:max(item_count, 0)]]
    text = render_output_list(longest, "\n", idx)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + len(longest) + 1


def build_item_index(raw: RawDataset, name: str, tokenizer: Any = None) -> ItemIndex:
    """Builds the index ``name`` for ``raw`` (see the module doc); computed names need ``tokenizer``."""
    items = raw.items
    if name in ID_INDEXES:
        return ItemIndex(items, items, name)
    if all(name in raw.meta[i] for i in items):
        return ItemIndex(items, [str(raw.meta[i][name]) for i in items], name)
    spec = computed_index_spec(name)
    if spec is None:
        missing = next(i for i in items if name not in raw.meta[i])
        raise UserError(f"meta.pickle: item {missing!r} lacks the item-index field {name!r}")
    if tokenizer is None:
        raise UserError(f"item index {name!r} is computed with the model's tokenizer: give --tokenizer")
    missing = [i for i in items if not isinstance(raw.meta[i].get("title"), str)]
    if missing:
        raise UserError(f"meta.pickle: item {missing[0]!r} has no 'title' to compute {name!r} from")
    cap, round_trip = spec
    strings = [normalise_title(raw.meta[i]["title"], tokenizer, cap, round_trip) for i in items]
    empty = [i for i, s in zip(items, strings) if not s]
    if empty:
        raise UserError(f"meta.pickle: the title of item {empty[0]!r} becomes empty under {name!r}")
    if round_trip:
        strings = make_unique(strings)
    return ItemIndex(items, strings, name)


def load_dataset(path: str | Path, item_index: str = "title", tokenizer: Any = None,
                 require_ranking_candidates: bool = False) -> tuple[RawDataset, ItemIndex]:
    """Loads the raw folder (its pickles are read once) and builds its item index; computed indexes are
    derived from ``title``."""
    files = read_raw_files(path, require_ranking_candidates)
    try:
        raw = load_raw(path, item_index=item_index, files=files)
    except UserError:
        if computed_index_spec(item_index) is None:
            raise
        raw = load_raw(path, item_index="title", files=files)
    return raw, build_item_index(raw, item_index, tokenizer)
