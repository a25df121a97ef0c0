"""Generated text -> list of titles (sections 2.5 and 12.3).

- ``parse_list``: fine-tuned models (validation, RL, test): strip, split on newlines, strip each line, remove one
  leading ``"<n>. "`` (with ``idx``). Empty lines are dropped (the original kept them as empty titles).
  ``parse_list_lines`` gives the same titles with the position where each one's line ends (RL rewards).
- ``parse_general_llm``: general LLMs (GPT-3.5, base chat models): one pair of quotes that are the text's very
  first and last characters removed, only lines starting with ``<n>.`` at column 0 kept (indented ones are
  dropped, as the original), the index removed, then for tasks other than SFTTestSeqRec the category annotation
  removed from lines ending in ``)``, ``]`` or ``,`` (as the original; the last ``(...)`` / ``[...]`` segment,
  never a bare ``(year)``, or a trailing ``, ...,``), per-title quotes stripped, empty lines dropped, cut to
  ``item_count``.
"""

from __future__ import annotations

import re

from reclm_jax.data.templates import remove_index

_STARTS_WITH_INDEX = re.compile(r"^(\d+)\. *")
# Fires only on lines ending in ")", "]" or "," (the original's r' *[(,\[](.*)[),\]]$'): the last "(...)" or
# "[...]" segment, or ", ...," / a lone trailing ",". The original cut from the *first* opener, which also removed
# the year and the ", The" of titles such as "American President, The (1995)".
_ANNOTATION = re.compile(r" *(\([^()]*\)|\[[^\[\]]*\]|,[^,]*,|,)$")
_YEAR = re.compile(r" *\(\d{4}\)")


def _drop_annotation(title: str) -> str:
    m = _ANNOTATION.search(title)
    if m is None or _YEAR.fullmatch(m.group(0)):
        return title
    return title[:m.start()]


def parse_list(text: str, idx: bool = True) -> list[str]:
    return [title for title, _ in parse_list_lines(text, idx)]


def parse_list_lines(text: str, idx: bool = True) -> list[tuple[str, int]]:
    """``parse_list``'s titles, each with the position in ``text`` of the character that ends its line: the
    newline after it, or the line's last non-blank character when no newline follows (end of text).

    The RL reward puts an item's reward on the token holding that character. Splitting the raw text and
    stripping each line keeps exactly ``parse_list``'s titles: the whitespace ``text.strip()`` would remove is
    either whole blank lines (dropped) or the outer whitespace of the first and last lines (stripped).
    """
    out = []
    start = 0
    for raw in text.split("\n"):
        stop = start + len(raw)  # the newline's position, or len(text) for the last line
        title = raw.strip()
        if idx:
            title = remove_index(title).strip()
        if title:
            end = stop if stop < len(text) else start + len(raw.rstrip()) - 1
            out.append((title, end))
        start = stop + 1
    return out


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    return s


def parse_general_llm(text: str, task: str, item_count: int) -> list[str]:
    # No strip before either step: the original unquotes the raw text and matches the index on raw lines.
    lines = _unquote(text).split("\n")
    titles = [remove_index(line).strip() for line in lines if _STARTS_WITH_INDEX.match(line)]
    if task != "SFTTestSeqRec":
        titles = [_drop_annotation(t) for t in titles]
    titles = [_unquote(t).strip() for t in titles if t]
    return [t for t in titles if t][:item_count]
