"""How a tokenizer writes the tasks' numbered list, cut into pieces a token trie can follow.

The training output of every list task is ``render_output_list(titles, "\\n" + eos).strip()``,
``"1. A\\n 2. B\\n 3. C\\n<eos>"``, tokenized on its own (``data/pipeline.tokenize_sample``). Constrained
decoding follows that token sequence as

    NUM[0] ITEM_cont(A) NUM[1] ITEM_cont(B) NUM[2] ITEM_end(C) <eos>

where ``NUM[j]`` writes the number of item j and ``ITEM_*`` one title with its line end. Where exactly a title's
tokens begin and end differs between tokenizers: SmolLM2's byte-level BPE writes ``"\\n "`` as one token, so a
continued line ends with ``"\\n "`` and the next number is ``"2."``, while a SentencePiece tokenizer writes
``"<0x0A>"`` then ``"▁2"``. ``ListFormat`` therefore tries the possible cut points (before or after the space that
follows ``"j."`` and the one that follows a newline) on probe lists of real titles and keeps the cut whose pieces,
each tokenized in a left context and cut out of it, concatenate to the tokenization of the whole list. Either way
each piece decodes to its own text, so any path through the pieces decodes to a list the parser reads back.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

from reclm_jax.errors import UserError

CONT, END = 1, 2  # leaf kinds: the item's line is followed by the next number / by the end of the list


@dataclasses.dataclass(frozen=True)
class CutRule:
    """space_in_item: the space after ``"j."`` starts the title piece (``" A..."``), else it ends the number piece
    (``"1. "``). newline_space_in_item: a continued title piece ends with ``"\\n "``, else with ``"\\n"`` (the space
    then starts the next number, ``" 2."``)."""

    space_in_item: bool
    newline_space_in_item: bool

    def num_text(self, j: int) -> str:
        """The text of item j's number piece (0-based j)."""
        lead = "" if j == 0 or self.newline_space_in_item else " "
        return f"{lead}{j + 1}." + ("" if self.space_in_item else " ")

    def item_text(self, title: str, kind: int) -> str:
        lead = " " if self.space_in_item else ""
        tail = "\n " if kind == CONT and self.newline_space_in_item else "\n"
        return lead + title + tail


RULES = tuple(CutRule(a, b) for a, b in itertools.product((True, False), repeat=2))


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []


def cut_out(tokenizer: Any, context: str, pieces: Sequence[str]) -> list[list[int] | None]:
    """The tokens of each ``context + piece`` after those of ``context`` alone (None where the context's tokens
    are not a prefix: the piece's first token would merge with the context's last)."""
    head = _ids(tokenizer, [context])[0]
    out = []
    for ids in _ids(tokenizer, [context + p for p in pieces]):
        out.append(ids[len(head):] if ids[:len(head)] == head and len(ids) > len(head) else None)
    return out


class ListFormat:
    """The list format of one tokenizer (``tokenizer``: an HF tokenizer; ``end_text``: the labels' EOS string,
    which must be one token). ``probe_titles``: catalogue titles to choose the cut rule on (a few dozen)."""

    def __init__(self, tokenizer: Any, end_text: str, probe_titles: Sequence[str]):
        self.tokenizer = tokenizer
        end = _ids(tokenizer, [end_text])[0]
        if len(end) != 1:
            raise UserError(f"constrained decoding: the end-of-list text {end_text!r} is {len(end)} tokens, not one")
        self.end_text, self.end_id = end_text, int(end[0])
        probes = [t for t in probe_titles if usable_title(t)][:48]
        if len(probes) < 2:
            raise UserError("constrained decoding: fewer than 2 usable titles to probe the tokenizer with")
        scores = [(self._score(rule, probes), -i, rule) for i, rule in enumerate(RULES)]
        best = max(scores)
        self.rule: CutRule = best[2]
        self.probe_agreement = best[0] / max(len(probes) - 2, 1)  # share of probe lists tokenized alike

    def _score(self, rule: CutRule, probes: Sequence[str]) -> int:
        fmt = _Pieces(self.tokenizer, rule, self.end_id)
        hits = 0
        for a, b, c in zip(probes, probes[1:], probes[2:]):
            text = f"1. {a}\n 2. {b}\n 3. {c}\n" + self.end_text
            want = _ids(self.tokenizer, [text])[0]
            got = fmt.list_tokens([a, b, c])
            hits += got == want
        return hits

    def pieces(self) -> "_Pieces":
        return _Pieces(self.tokenizer, self.rule, self.end_id)


def usable_title(title: str) -> bool:
    """A title the parser can read back from one line: non-empty, no newline, no outer whitespace."""
    return bool(title) and "\n" not in title and "\r" not in title and title == title.strip()


class _Pieces:
    """The token pieces under one cut rule."""

    def __init__(self, tokenizer: Any, rule: CutRule, end_id: int):
        self.tokenizer, self.rule, self.end_id = tokenizer, rule, end_id

    def items(self, titles: Sequence[str], kind: int) -> list[list[int] | None]:
        """Each title's piece (int lists), None where it cannot be cut out cleanly."""
        ctx = "1." if self.rule.space_in_item else "1. "
        return cut_out(self.tokenizer, ctx, [self.rule.item_text(t, kind) for t in titles])

    def item_paths(self, titles: Sequence[str]) -> tuple[list[list[int] | None], list[list[int] | None]]:
        """(CONT pieces, END pieces) of every title, tokenizing each title once where possible: when the END
        piece ends in the newline's own token(s), the CONT piece is it with those swapped for the continued line
        end's (the newline starts a new pre-token, so the title's tokens cannot change); the others are
        tokenized again in full."""
        end = self.items(titles, END)
        if not self.rule.newline_space_in_item:
            return end, end
        probe_c, probe_e = self.items(["A"], CONT)[0], self.items(["A"], END)[0]
        if probe_c is None or probe_e is None:
            return self.items(titles, CONT), end
        shared = next((i for i, (a, b) in enumerate(zip(probe_c, probe_e)) if a != b), min(len(probe_c), len(probe_e)))
        tail_c, tail_e = probe_c[shared:], probe_e[shared:]
        cont: list[list[int] | None] = [None] * len(titles)
        again = []
        for j, e in enumerate(end):
            if e is not None and tail_e and e[-len(tail_e):] == tail_e and len(e) > len(tail_e):
                cont[j] = e[:-len(tail_e)] + tail_c
            else:
                again.append(j)
        for j, c in zip(again, self.items([titles[j] for j in again], CONT)):
            cont[j] = c
        return cont, end

    def numbers(self, count: int, strict: bool = True) -> list[list[int] | None]:
        """NUM[j] for j < count: NUM[0] at the start of the output, the others after a continued line.
        A number that cannot be cut out cleanly raises a ``UserError`` (``strict``) or is None."""
        first = _ids(self.tokenizer, [self.rule.num_text(0)])[0]
        ctx = "1. A" + ("\n " if self.rule.newline_space_in_item else "\n")
        rest = cut_out(self.tokenizer, ctx, [self.rule.num_text(j) for j in range(1, count)])
        out = [first or None] + rest
        bad = [j for j, p in enumerate(out) if not p]
        if bad and strict:
            raise UserError(f"constrained decoding: cannot tokenize the number of list item {bad[0] + 1} apart")
        return out

    def list_tokens(self, titles: Sequence[str]) -> list[int] | None:
        """The tokens of the whole list of ``titles`` assembled from pieces (None if a piece is not clean)."""
        nums = self.numbers(len(titles), strict=False)
        out: list[int] = []
        for j, t in enumerate(titles):
            piece = self.items([t], END if j == len(titles) - 1 else CONT)[0]
            if piece is None or nums[j] is None:
                return None
            out += nums[j] + piece
        return out + [self.end_id]
