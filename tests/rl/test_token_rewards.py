"""Item rewards land on the token that ends each item's line, the list reward on the last token, for a
SentencePiece tokenizer trained here (byte fallback, as Llama-2's), byte-level BPE (a tiny trained one and the
real SmolLM2's) and both offset sources (the tokenizer's offset mapping, decoded prefixes)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from reclm_jax.data.templates import render_output_list
from reclm_jax.rl.token_rewards import (TokenizedResponse, char_ends_from_offsets, decode_response, place_rewards,
                                        token_rewards, tokenize_response)

TITLES = ["Silent River (1987)", "Golden Empire, The (1990)", "Café 東京 (2001)"]
ITEM_REWARDS = [0.25, -1.0, 0.5]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A 400-piece SentencePiece BPE model (byte fallback, no normalisation: newlines survive as <0x0A>) trained on
    a few hundred numbered lists."""
    import sentencepiece as spm

    rng = random.Random(0)
    adj = ["Silent", "Golden", "Broken", "Hidden", "Last", "Crimson", "Frozen", "Wild", "Secret", "Lonely"]
    noun = ["River", "Empire", "Garden", "Promise", "Signal", "Harbor", "Machine", "Summer", "Kingdom"]
    corpus = []
    for _ in range(300):
        n = rng.randint(1, 10)
        corpus.append(" ".join(f"{j + 1}. {rng.choice(adj)} {rng.choice(noun)} ({rng.randint(1950, 2010)})"
                               for j in range(n)))
    d = tmp_path_factory.mktemp("sentencepiece")
    (d / "corpus.txt").write_text("\n".join(corpus))
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "sp"), vocab_size=400, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return d / "sp.model"


@pytest.fixture(scope="module")
def sp_fast(sp_model, tmp_path_factory):
    """The model as an HF Llama tokenizer folder (``tokenizer.model`` only), loaded as transformers converts it:
    a fast tokenizer with offsets."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("sp_hf")
    (d / "tokenizer.model").write_bytes(sp_model.read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "legacy": False}))
    tok = AutoTokenizer.from_pretrained(str(d))
    assert tok.is_fast
    return tok


class SlowSentencePiece:
    """A tokenizer without offsets (like transformers' slow tokenizers): the SentencePiece processor itself."""

    is_fast = False

    def __init__(self, path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.eos_token_id = self.sp.eos_id()

    def __call__(self, text, add_special_tokens=True):
        ids = self.sp.encode(text)
        return {"input_ids": ([self.sp.bos_id()] if add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        if skip_special_tokens:
            ids = [i for i in ids if not self.sp.is_control(i)]
        return self.sp.decode(list(ids))

    def batch_decode(self, rows, **kw):
        return [self.decode(r, **kw) for r in rows]


@pytest.fixture(scope="module")
def sp_slow(sp_model):
    return SlowSentencePiece(sp_model)


@pytest.fixture(scope="module")
def bpe(tiny_tokenizer_dir):
    from reclm_jax.models.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


def _placed(out):
    return [int(j) for j in np.flatnonzero(out)]


def test_sentencepiece_rewards_on_the_newline_tokens_both_offset_sources(sp_fast, sp_slow):
    text = render_output_list(TITLES, "\n")  # the canonical re-rendered list: every line ends in "\n"
    for tok in (sp_fast, sp_slow):
        resp = tokenize_response(tok, text)
        assert resp.text == text
        ids = resp.ids + [tok.eos_token_id]  # the trajectory ends in EOS
        out = token_rewards(resp, ITEM_REWARDS, 7.5, length=len(ids))
        assert out.dtype == np.float32 and out.shape == (len(ids),)
        newlines = [j for j, i in enumerate(resp.ids) if i == 13]  # "<0x0A>": Llama-2's id, by byte fallback here
        assert len(newlines) == 3
        assert _placed(out) == newlines + [len(ids) - 1]
        assert out[newlines].tolist() == ITEM_REWARDS and out[-1] == 7.5


def test_sentencepiece_sampled_tokens_last_line_without_newline(sp_fast, sp_slow):
    # A sampled response: no newline after the last title, then EOS; "東京" is six byte tokens.
    text = "1. Golden Empire\n 2. Café 東京"
    for tok in (sp_fast, sp_slow):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        resp = decode_response(tok, ids)
        assert resp.text == text and resp.char_ends[-1] == resp.char_ends[-2]  # EOS adds no text
        out = token_rewards(resp, [1.0, 2.0], 3.0)
        first_newline = ids.index(13)
        # "京" ends the second line: its reward goes on the byte token that completes it (the last before EOS).
        assert _placed(out) == [first_newline, len(ids) - 2, len(ids) - 1]
        assert out.tolist()[-2:] == [2.0, 3.0]


def test_offsets_and_decoded_prefixes_agree(sp_fast, bpe):
    texts = [render_output_list(TITLES, "\n"), "1. Naïve — 😀 x\n 2. 東京", "1. A\n\n 2. B  \n 3.C"]
    for tok in (sp_fast, bpe):
        for text in texts:
            a = tokenize_response(tok, text)
            b = decode_response(tok, a.ids)
            assert b.text == text
            assert a.char_ends.tolist() == b.char_ends.tolist(), (tok, text)


def test_byte_level_bpe_rewards_on_line_ends(bpe):
    text = render_output_list(TITLES, "\n")
    resp = tokenize_response(bpe, text)
    ids = resp.ids + [bpe.eos_token_id]
    out = token_rewards(resp, ITEM_REWARDS, -2.0, length=len(ids))
    pieces = [bpe.decode([i]) for i in resp.ids]
    placed = _placed(out)
    assert len(placed) == 4 and placed[-1] == len(ids) - 1
    # Each item's token holds the newline ending its line (whatever else the BPE merged into it).
    assert all("\n" in pieces[j] for j in placed[:3])
    assert [text.count("\n", 0, resp.char_ends[j]) for j in placed[:3]] == [1, 2, 3]
    assert out[placed[:3]].tolist() == ITEM_REWARDS


@pytest.mark.realdata
def test_smollm2_tokenizer_rewards_on_line_ends():
    """SmolLM2's byte-level BPE merges the newline with the next line's leading space ("\\n " is one token)."""
    from reclm_jax.models.fetch import ensure_smollm2
    from reclm_jax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(ensure_smollm2())
    text = render_output_list(TITLES, "\n")
    resp = tokenize_response(tok, text)
    ids = resp.ids + [tok.convert_tokens_to_ids("<|im_end|>")]
    out = token_rewards(resp, ITEM_REWARDS, 4.0, length=len(ids))
    pieces = tok.convert_ids_to_tokens(resp.ids)
    placed = _placed(out)
    assert [pieces[j] for j in placed[:3]] == ["ĊĠ", "ĊĠ", "Ċ"] and placed[3] == len(ids) - 1
    assert out[placed].tolist() == ITEM_REWARDS + [4.0]
    # The sampled-token path on the same ids (EOS included) places them identically.
    assert decode_response(tok, ids).char_ends[:-1].tolist() == resp.char_ends.tolist()
    assert token_rewards(decode_response(tok, ids), ITEM_REWARDS, 4.0).tolist() == out.tolist()
    # Last line without a newline, ending in a multi-byte character: its last byte token gets the reward.
    sampled = tok("1. A\n 2. 東京", add_special_tokens=False)["input_ids"]
    out = token_rewards(decode_response(tok, sampled), [1.0, 2.0], 3.0)
    assert out[-1] == 2.0 + 3.0 and tok.decode(sampled[:-1]).endswith("\ufffd")


def test_place_rewards_rules():
    ends = np.array([2, 5, 5, 9], np.int64)  # token 2 has no text of its own
    out = place_rewards(ends, [4, 3, 8], [1.0, 0.5, 2.0], 10.0, length=6)
    assert out.tolist() == [0.0, 1.5, 0.0, 2.0, 0.0, 10.0]  # two lines ending in one token add up
    with pytest.raises(ValueError, match="2 item rewards for 1 lines"):
        place_rewards(ends, [4], [1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="beyond the tokens' text"):
        place_rewards(ends, [9], [1.0], 0.0)
    with pytest.raises(ValueError, match="length 3 must be >= 1 and cover the 4 tokens"):
        place_rewards(ends, [], [], 0.0, length=3)


def test_offsets_of_specials_and_shared_characters():
    # "▁" (0, 1) before "1" (0, 1) ends where "1" starts; the byte tokens of one character end before it until the
    # last; a special token's (0, 0) keeps the running end.
    assert char_ends_from_offsets([(0, 1), (0, 1), (1, 4), (4, 5), (4, 5), (0, 0)]).tolist() == [0, 1, 4, 4, 5, 5]


def test_item_rewards_must_match_the_listed_titles():
    resp = TokenizedResponse([1, 2], "1. A\n 2. B", np.array([5, 10], np.int64))
    with pytest.raises(ValueError, match="2 listed titles but 1 item rewards"):
        token_rewards(resp, [1.0], 0.0)
    # An empty list has no lines: only the list reward, on the last token.
    empty = TokenizedResponse([7], "", np.array([0], np.int64))
    assert token_rewards(empty, [], -2.0).tolist() == [-2.0]
