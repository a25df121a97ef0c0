"""Every prompt template and intention phrase of the original RecLM-gen (paper version), character for character.

A template is a two-turn conversation: a system prompt, a fixed first user turn with a fixed assistant
acknowledgement, then the real instruction (``inst``, a ``str.format_map`` pattern). ``chat.py`` renders it
in a chat format. Groups map a task family to its templates; a sample draws one template uniformly from its
group. Trailing spaces are part of the strings (they produce the double spaces before ``[/INST]``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

SYSTEM_REC = "You are an expert recommender engine. "
SYSTEM_CHAT = "You are a helpful, respectful and honest assistant."

GENERATE_TAIL = "Please generate a recommendation list with {item_count} different items. "
SELECT_TAIL = ("The candidate items are: {candidate_titles}. "
               "Please select a recommendation list with {item_count} different items from candidate items. ")


@dataclasses.dataclass(frozen=True)
class Template:
    """One prompt template. ``inst`` and ``output`` are ``format_map`` patterns over ``input_field_data``."""

    template_id: str
    first_turn: tuple[str, str]
    inst: str
    output: str = "{item_list}"
    sys: str = SYSTEM_REC

    @property
    def uses_candidates(self) -> bool:
        return "{candidate_titles}" in self.inst

    def instruction(self, fields: Mapping[str, object]) -> str:
        return self.inst.format_map(fields)


_U_SEQREC_GEN = "You need to generate a recommendation list considering user's preference from historical interactions. "
_U_SEQREC_SEL = "You need to select a recommendation list considering user's preference from historical interactions. "
_U_SEL_INTENT = "You need to select a recommendation list complying user's intention from candidate items. "
_U_GEN_INTENT = "You need to generate a recommendation list complying user's intention. "
_U_PCR_GEN = ("You need to generate a recommendation list simultaneously considering user's preference inferred from "
              "historical interactions and user's intention. "
              "If user's preference is conflict with his intention, you should comply with his intention. ")
_U_PCR_SEL = ("You need to select a recommendation list from candidate items simultaneously considering user's "
              "preference inferred from historical interactions and user's intention. "
              "If user's preference is conflict with his intention, you should comply with his intention. ")
_U_PRATE = ("You need to generate a recommendation list simultaneously considering user's preference inferred from "
            "historical interactions and user's intention. ")
_U_TEST_PRATE = ("You need to generate a recommendation list simultaneously considering user's preference from "
                 "historical interactions, and user's intention. ")
_A_PREF_INTENT = "Ok, I will do it considering user's preference and intention. "
_A_TEST_PRATE = "Ok, I will consider user's preference and intention. "
_HISTORY = "The historical interactions are provided as follows: {history}. "
_P_HISTORY = "Here is user's historical interactions: {history}, and user's intention: "

_LP = ("I like '{target_category}' items, but in the recommendation list, the proportion of '{target_category}' "
       "items should be less than {category_proportion}. ")
_MP = ("I don't like '{target_category}' items, but in the recommendation list, the proportion of "
       "'{target_category}' items should be more than {category_proportion}. ")
_LC = ("I like '{target_category}' items, but the recommendation list should containing less than "
       "{category_count} '{target_category}' items. ")
_MC = ("I don't like '{target_category}' items, but the recommendation list should containing more than "
       "{category_count} '{target_category}' items. ")
_TEST_LP1 = "In the recommendation list, the proportion of '{target_category}' items should be less than {category_proportion}. "
_TEST_MP = "In the recommendation list, the proportion of '{target_category}' items should be more than {category_proportion}. "
_TEST_EP = ("In the recommendation list, the proportion of '{target_category}' items should be approximately "
            "{category_proportion}. ")

SEQREC_0 = Template("SeqRec-0", (_U_SEQREC_GEN, "Ok, I will consider user's preference. "), _HISTORY + GENERATE_TAIL)
# No trailing space after the acknowledgement: the original's string, kept.
SEQREC_1 = Template("SeqRec-1", (_U_SEQREC_SEL, "Ok, I will do it considering user's preference."),
                    _HISTORY + SELECT_TAIL)
SEQRANKING = Template("SeqRanking-0", (_U_SEL_INTENT, "Ok, I will do it considering user's preference and candidate items. "),
                      _HISTORY + SELECT_TAIL)
CONTROLREC_0 = Template("ControlRec-0", (_U_GEN_INTENT, "Ok, I will do it considering user's intention. "),
                        "Here is user's intention: {synthetic_intention}. " + GENERATE_TAIL)
CONTROLREC_1 = Template("ControlRec-1", (_U_SEL_INTENT, "Ok, I will do it considering user's intention and candidate items. "),
                        "Here is user's intention: {synthetic_intention}. " + SELECT_TAIL)
CONTROLREC_REVERSE = Template("ControlRec-reverse", ("You need to answer user's question. ", "Ok, I will do it. "),
                              'What is the category of "{item}"? ',
                              output='The category of "{item}" is "{target_category}".')
PERSONALCONTROLREC_0 = Template("PersonalControlRec-0", (_U_PCR_GEN, _A_PREF_INTENT),
                                _P_HISTORY + "{synthetic_intention}. " + GENERATE_TAIL)
PERSONALCONTROLREC_1 = Template("PersonalControlRec-1",
                                (_U_PCR_SEL, "Ok, I will do it considering user's preference, intention and candidate items. "),
                                _P_HISTORY + "{synthetic_intention}. " + SELECT_TAIL)

_CR_TURN = (_U_GEN_INTENT, "Ok, I will do it considering user's intention. ")
CATEGORYRATE = {
    f"CategoryRate-{v}": Template(f"CategoryRate-{v}", _CR_TURN, "Here is user's intention: " + body + GENERATE_TAIL)
    for v, body in (("LP", _LP), ("MP", _MP), ("LC", _LC), ("MC", _MC))
}
PERSONALCATEGORYRATE = {
    f"PersonalCategoryRate-{v}": Template(f"PersonalCategoryRate-{v}", (_U_PRATE, _A_PREF_INTENT),
                                          _P_HISTORY + body + GENERATE_TAIL)
    for v, body in (("LP", _LP), ("MP", _MP), ("LC", _LC), ("MC", _MC))
}
TEST_PERSONALCATEGORYRATE = {
    v: Template("PersonalCategoryRate", (_U_TEST_PRATE, _A_TEST_PRATE), _P_HISTORY + body + GENERATE_TAIL)
    for v, body in (("LP", _LP), ("LP1", _TEST_LP1), ("MP", _TEST_MP), ("EP", _TEST_EP))
}

# Template groups by the original's group names.
GROUPS: dict[str, tuple[Template, ...]] = {
    "SeqRec": (SEQREC_0, SEQREC_1),
    "ControlRec": (CONTROLREC_0, CONTROLREC_1),
    "ControlRec_re": (CONTROLREC_0, CONTROLREC_1, CONTROLREC_REVERSE),
    "PersonalControlRec": (PERSONALCONTROLREC_0, PERSONALCONTROLREC_1),
    "CategoryRate": tuple(CATEGORYRATE.values()),
    "PersonalCategoryRate": tuple(PERSONALCATEGORYRATE.values()),
    "ValSeqRec": (SEQREC_0,),
    "ValSeqRanking": (SEQRANKING,),
    "ValPersonalControlRec": (PERSONALCONTROLREC_0,),
    "TestPersonalCategoryRateLP": (TEST_PERSONALCATEGORYRATE["LP"],),
    "TestPersonalCategoryRateLP1": (TEST_PERSONALCATEGORYRATE["LP1"],),
    "TestPersonalCategoryRateMP": (TEST_PERSONALCATEGORYRATE["MP"],),
    "TestPersonalCategoryRateEP": (TEST_PERSONALCATEGORYRATE["EP"],),
    # RL: one template per group.
    "RLSeqRec": (SEQREC_0,),
    "RLSeqRanking": (SEQRANKING,),
    "RLPersonalControlRec": (PERSONALCONTROLREC_0,),
    "RLPersonalCategoryRate": (PERSONALCATEGORYRATE["PersonalCategoryRate-LP"],),
}

INTENTION_PLUS = (
    "I like '{target_category}' products",
    "Please recommend some '{target_category}' items",
    "I'm interested in '{target_category}'",
    "I would like to buy some '{target_category}' products",
    "I would like to browse some '{target_category}' products",
    "I prefer in '{target_category}' items",
)
INTENTION_MINUS = (
    "I don't like '{target_category}' products",
    "Please exclude any '{target_category}' item",
    "I'm not interested in '{target_category}'",
    "Don't recommend me any '{target_category}' products",
    "I don't want to browse any '{target_category}' product",
    "I hate '{target_category}' items",
)

# General-LLM baseline (test only): the notice appended to the flattened prompt.
NOTICE_SEQREC = "Notice! Do not explain the reason or include any other words."
NOTICE_CONTROL = ("Notice! You need to output category information in the brackets after item titles in this "
                  "template: 1. title (category). Do not explain the reason or include any other words in the front "
                  "of titles.")

HISTORY_SEPARATOR = " \u2192 "


def quote(title: str) -> str:
    return f"'{title}'"


def render_history(titles: Sequence[str]) -> str:
    """``'A' → 'B' → 'C'``: single-quoted titles joined by space, U+2192, space."""
    return HISTORY_SEPARATOR.join(quote(t) for t in titles)


def render_candidates(titles: Sequence[str]) -> str:
    """``'A', 'B'``: single-quoted titles joined by ``", "``."""
    return ", ".join(quote(t) for t in titles)


def render_output_list(titles: Sequence[str], suffix: str = "", idx: bool = True) -> str:
    """``1. A\\n 2. B`` + suffix (lines joined by newline-space); without ``idx`` the titles alone."""
    lines = [f"{i + 1}. {t}" for i, t in enumerate(titles)] if idx else list(titles)
    return "\n ".join(lines) + suffix


_IDX_RE = re.compile(r"^(\d+)\. *")


def remove_index(line: str) -> str:
    """Removes one leading ``"<digits>. "`` (the original's ``rm_idx``)."""
    return _IDX_RE.sub("", line, count=1)


def general_llm_prompt(template: Template, fields: Mapping[str, object], notice: str) -> str:
    """The flattened single-message prompt the original sends to general LLMs (section 8.4).

    Each part is stripped, as the original does when it cuts them out of the rendered llama-2 prompt
    (``task_test.py:76-84``); the templates' trailing spaces would otherwise give double spaces."""
    return f"{template.sys.strip()} {template.first_turn[0].strip()} {template.instruction(fields).strip()} \n{notice}"
