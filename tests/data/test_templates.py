"""Template strings, text rendering and chat formats against the spec, written out by hand."""

from __future__ import annotations

import pytest

from reclm_jax.data.chat import ChatFormat, llama2_prompt
from reclm_jax.data.templates import (GROUPS, INTENTION_MINUS, INTENTION_PLUS, NOTICE_CONTROL, NOTICE_SEQREC,
                                      general_llm_prompt, remove_index, render_candidates,
                                      render_history, render_output_list)
from reclm_jax.errors import UserError


def test_history_candidates_output_rendering():
    assert render_history(["A", "B", "C"]) == "'A' \u2192 'B' \u2192 'C'"
    assert render_candidates(["A", "B"]) == "'A', 'B'"
    assert render_output_list(["A", "B", "C"], "\n</s>", idx=True) == "1. A\n 2. B\n 3. C\n</s>"
    assert render_output_list(["A", "B"], "", idx=False) == "A\n B"
    assert remove_index("12. Heat (1995)") == "Heat (1995)"
    assert remove_index("1.Heat") == "Heat"
    assert remove_index("Heat 1. x") == "Heat 1. x"


def test_llama2_rendering_is_fastchat_byte_for_byte():
    got = llama2_prompt("SYS", ["U1", "A1", "U2", None])
    assert got == "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]"
    # Multi-turn (ShareChatGPT): each answer closes with " </s><s>".
    got = llama2_prompt("S", ["h1", "g1", "h2", "g2", "h3", None])
    assert got == "[INST] <<SYS>>\nS\n<</SYS>>\n\nh1 [/INST] g1 </s><s>[INST] h2 [/INST] g2 </s><s>[INST] h3 [/INST]"


def test_seqrec_prompt_in_all_three_formats(tiny_tokenizer):
    t = GROUPS["ValSeqRec"][0]
    fields = {"history": "'A' \u2192 'B'", "item_count": 10}
    inst = ("The historical interactions are provided as follows: 'A' \u2192 'B'. "
            "Please generate a recommendation list with 10 different items. ")
    u1 = "You need to generate a recommendation list considering user's preference from historical interactions. "
    a1 = "Ok, I will consider user's preference. "
    sys = "You are an expert recommender engine. "
    llama = ChatFormat("llama-2").rec_prompt(t.sys, t.first_turn, t.instruction(fields))
    assert llama == f"[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{u1} [/INST] {a1} </s><s>[INST] {inst} [/INST]"
    assert llama.count("\n") == 4  # the fine-grained RL reward relies on exactly four
    assert "interactions.  [/INST]" in llama and "items.  [/INST]" in llama  # double spaces, as the original
    hf = ChatFormat("hf", tiny_tokenizer).rec_prompt(t.sys, t.first_turn, t.instruction(fields))
    assert hf == (f"<|im_start|>system\n{sys}<|im_end|>\n<|im_start|>user\n{u1}<|im_end|>\n"
                  f"<|im_start|>assistant\n{a1}<|im_end|>\n<|im_start|>user\n{inst}<|im_end|>\n"
                  f"<|im_start|>assistant\n")
    none = ChatFormat("none").rec_prompt(t.sys, t.first_turn, t.instruction(fields))
    assert none == (sys + u1 + inst).strip()


def test_template_texts_match_the_spec():
    assert GROUPS["SeqRec"][1].first_turn[1] == "Ok, I will do it considering user's preference."
    assert GROUPS["SeqRec"][1].inst == (
        "The historical interactions are provided as follows: {history}. The candidate items are: "
        "{candidate_titles}. Please select a recommendation list with {item_count} different items from candidate "
        "items. ")
    assert GROUPS["ValSeqRanking"][0].first_turn == (
        "You need to select a recommendation list complying user's intention from candidate items. ",
        "Ok, I will do it considering user's preference and candidate items. ")
    rev = GROUPS["ControlRec_re"][2]
    assert rev.inst == 'What is the category of "{item}"? '
    assert rev.output == 'The category of "{item}" is "{target_category}".'
    assert GROUPS["PersonalControlRec"][0].inst == (
        "Here is user's historical interactions: {history}, and user's intention: {synthetic_intention}. "
        "Please generate a recommendation list with {item_count} different items. ")
    lp = [t for t in GROUPS["PersonalCategoryRate"] if t.template_id.endswith("-LP")][0]
    assert lp.inst == (
        "Here is user's historical interactions: {history}, and user's intention: I like '{target_category}' "
        "items, but in the recommendation list, the proportion of '{target_category}' items should be less than "
        "{category_proportion}. Please generate a recommendation list with {item_count} different items. ")
    mc = [t for t in GROUPS["PersonalCategoryRate"] if t.template_id.endswith("-MC")][0]
    assert "I don't like '{target_category}' items, but the recommendation list should containing more than " \
           "{category_count} '{target_category}' items. " in mc.inst
    ep = GROUPS["TestPersonalCategoryRateEP"][0]
    assert ep.first_turn == (
        "You need to generate a recommendation list simultaneously considering user's preference from historical "
        "interactions, and user's intention. ", "Ok, I will consider user's preference and intention. ")
    assert "In the recommendation list, the proportion of '{target_category}' items should be approximately " \
           "{category_proportion}. " in ep.inst
    assert [len(GROUPS[g]) for g in ("SeqRec", "ControlRec_re", "PersonalControlRec", "PersonalCategoryRate")] \
        == [2, 3, 2, 4]
    assert INTENTION_PLUS[5] == "I prefer in '{target_category}' items"
    assert INTENTION_MINUS[4] == "I don't want to browse any '{target_category}' product"
    assert len(INTENTION_PLUS) == len(INTENTION_MINUS) == 6


def test_chat_format_errors(tiny_tokenizer):
    with pytest.raises(UserError, match="unknown chat template"):
        ChatFormat("chatml")
    with pytest.raises(UserError, match="needs a tokenizer"):
        ChatFormat("hf")
    with pytest.raises(UserError, match="ShareChatGPT needs a chat template"):
        ChatFormat("none").chat_prompt("s", ["hi"])


def _original_flatten(input_text: str, notice: str) -> str:
    """``ad4d270:task_test.py:76-84`` applied to a rendered llama-2 prompt."""
    input_text = input_text.split('\n')
    sub_text1 = input_text[1].strip()
    sub_text2 = input_text[4].split('[/INST]')[0].strip()
    sub_text3 = input_text[4].split('[/INST]')[1].split('[INST]')[1].strip()
    return f'{sub_text1} {sub_text2} {sub_text3} \n{notice}'


@pytest.mark.parametrize("group", ["ValSeqRec", "ValSeqRanking", "ValPersonalControlRec", "TestPersonalCategoryRateLP",
                                   "TestPersonalCategoryRateLP1", "TestPersonalCategoryRateMP",
                                   "TestPersonalCategoryRateEP"])
def test_general_llm_prompt_strips_each_part_like_the_original(group):
    """B2: the original flattens the llama-2 prompt and strips each part, ``ad4d270:task_test.py:76-84``:
    ``sub_text1 = input_text[1].strip()`` ... ``input_text = f'{sub_text1} {sub_text2} {sub_text3} \\n{sub_text4}'``."""
    template = GROUPS[group][0]
    fields = {"history": "'A' \u2192 'B'", "item_count": 10, "candidate_titles": "'A', 'B'", "target_category": "Drama",
              "synthetic_intention": "I like 'Drama' items. ", "category_proportion": "30%"}
    notice = NOTICE_SEQREC if group == "ValSeqRec" else NOTICE_CONTROL
    rendered = ChatFormat("llama-2").rec_prompt(template.sys, template.first_turn, template.instruction(fields))
    got = general_llm_prompt(template, fields, notice)
    assert got == _original_flatten(rendered, notice)
    assert "  " not in got and got.endswith(f" \n{notice}")
    if group == "ValSeqRec":  # written out: single spaces, one space before the newline
        assert got == ("You are an expert recommender engine. You need to generate a recommendation list considering "
                       "user's preference from historical interactions. The historical interactions are provided as "
                       "follows: 'A' \u2192 'B'. Please generate a recommendation list with 10 different items. \n"
                       + NOTICE_SEQREC)
