"""Fuzzy title matching (the original's ``vague_map``): a generated title that is not an exact index string is
replaced by a catalogue title within Levenshtein distance 3, if one exists.

The original scans ``title2item`` in dict order and takes the *first* title within distance 3, in Python, once
per title (O(#items) per title). Here rapidfuzz's C scorer does the scan; by default the *closest* title wins and
ties go to catalogue order (``first_match=True`` reproduces the original's first-within-3 rule exactly).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

MAX_DISTANCE = 3


class FuzzyMatcher:
    """Maps strings to catalogue titles; results are cached per input string."""

    def __init__(self, titles: Iterable[str], max_distance: int = MAX_DISTANCE, first_match: bool = False):
        self.titles = list(dict.fromkeys(titles))
        self._exact = set(self.titles)
        self.max_distance = max_distance
        self.first_match = first_match
        self._cache: dict[str, str | None] = {}

    def match(self, title: str) -> str | None:
        """The catalogue title for ``title`` (itself if exact), or None when none is within the distance."""
        if title in self._exact:
            return title
        if title in self._cache:
            return self._cache[title]
        hits = process.extract(title, self.titles, scorer=Levenshtein.distance, score_cutoff=self.max_distance,
                               limit=None)
        best = None
        if hits:
            # hits are (title, distance, position); deterministic: by position, or by (distance, position).
            key = (lambda h: h[2]) if self.first_match else (lambda h: (h[1], h[2]))
            best = min(hits, key=key)[0]
        self._cache[title] = best
        return best

    def map(self, titles: Sequence[str]) -> list[str]:
        """The original's ``vague_map``: each title mapped, or left unchanged when nothing is close enough."""
        out = []
        for t in titles:
            m = self.match(t)
            out.append(t if m is None else m)
        return out
