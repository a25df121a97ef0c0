"""Tokenised batches: left-padded prompts, right-padded outputs, loss mask on output tokens (EOS included),
length buckets, process sharding and resumable iterator state; static mode from pickles."""

from __future__ import annotations

import numpy as np

from reclm_jax.data.pipeline import (PipelineConfig, StaticSource, batch_iterator, collate, epoch_iterator,
                                     static_epoch_iterator, tokenize_sample)
from reclm_jax.data.samples import SampleBuilder

CFG = PipelineConfig(batch_size=4, prompt_buckets=(128, 256, 512), output_buckets=(16, 32, 64, 128))


def test_tokenize_and_collate_layout(tiny_tokenizer):
    tok = tiny_tokenizer
    samples = [{"input_text": "Hello there", "output_text": "1. A\n<|im_end|>"},
               {"input_text": "Hi", "output_text": "1. Heat (1995)\n 2. Fargo (1996)\n<|im_end|>"}]
    items = [tokenize_sample(s, tok, CFG) for s in samples]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert items[0].output[-1] == eos and items[1].output[-1] == eos  # the literal EOS is the special token
    assert items[0].prompt == tok("Hello there")["input_ids"]
    b = collate(items, CFG, pad_id=7)
    p = b["prompt_length"]
    o = b["input_ids"].shape[1] - p
    longest = max(len(t.output) for t in items)
    assert p == 128 and o == min(x for x in CFG.output_buckets if x >= longest) and b["input_ids"].shape[0] == 2
    for r, t in enumerate(items):
        n, m = len(t.prompt), len(t.output)
        np.testing.assert_array_equal(b["input_ids"][r, p - n:p], t.prompt)
        np.testing.assert_array_equal(b["input_ids"][r, p:p + m], t.output)
        assert (b["input_ids"][r, :p - n] == 7).all() and (b["input_ids"][r, p + m:] == 7).all()
        assert b["loss_mask"][r].sum() == m and b["loss_mask"][r, p + m - 1] == 1.0 and b["loss_mask"][r, p - 1] == 0
        assert b["attention_mask"][r].sum() == n + m
        assert b["positions"][r, p - n] == 0 and b["positions"][r, p + m - 1] == n + m - 1


def test_left_truncation_keeps_the_end(tiny_tokenizer):
    cfg = PipelineConfig(max_prompt_length=5, max_output_length=3)
    t = tokenize_sample({"input_text": "You are an expert recommender engine.", "output_text": "1. A B C D\n"},
                        tiny_tokenizer, cfg)
    full = tiny_tokenizer("You are an expert recommender engine.")["input_ids"]
    assert t.prompt == full[-5:] and len(t.output) == 3


def test_epoch_iterator_shards_resumes_and_matches_builder(make_ctx, teacher, tiny_tokenizer):
    ctx = make_ctx(chat="hf", tokenizer=tiny_tokenizer, eos="<|im_end|>")
    builder = SampleBuilder(ctx, ["SFTSeqRec", "SFTControlRec_re"], "train", teacher, seed=0)
    seen = []
    for p in range(2):
        it = epoch_iterator(builder, tiny_tokenizer, CFG, epoch=0, seed=0, process_index=p, process_count=2)
        batches = list(it)
        assert len(batches) == (len(builder) // 2) // 4
        for b in batches:
            assert b["input_ids"].shape[1] - b["prompt_length"] in CFG.output_buckets
            assert b["prompt_length"] in CFG.prompt_buckets
            seen += [s["input_field_data"].get("user", s["input_field_data"].get("item")) for s in b["samples"]]
    assert len(seen) == len(builder) // 8 * 8
    # Resume mid-epoch from a saved state.
    it = epoch_iterator(builder, tiny_tokenizer, CFG, epoch=0, seed=0, process_index=0, process_count=1)
    next(it)
    state = it.get_state()
    expected = next(it)
    it2 = epoch_iterator(builder, tiny_tokenizer, CFG, epoch=0, seed=0, process_index=0, process_count=1)
    it2.set_state(state)
    got = next(it2)
    np.testing.assert_array_equal(got["input_ids"], expected["input_ids"])
    assert got["samples"] == expected["samples"]


def test_static_mode_cycles_stored_epochs(tiny_tokenizer):
    epochs = [[{"input_text": f"p{e}{i}", "output_text": "1. A\n<|im_end|>", "task": "t", "input_field_data": {}}
               for i in range(8)] for e in range(2)]
    assert StaticSource(epochs, 3)[0]["input_text"] == "p10"
    b = list(static_epoch_iterator(epochs, tiny_tokenizer, CFG, epoch=2, shuffle=False, process_index=0,
                                   process_count=1))
    assert [s["input_text"] for s in b[0]["samples"]] == ["p00", "p01", "p02", "p03"]
    prompt_only = PipelineConfig(batch_size=8, with_output=False, prompt_buckets=(16,))
    b = next(batch_iterator(StaticSource(epochs, 0), tiny_tokenizer, prompt_only))
    assert b["input_ids"].shape == (8, 16) and b["loss_mask"].sum() == 0


def test_left_truncation_keeps_bos(tiny_tokenizer_dir):
    """B7: the original tokenizes prompts with HF's own left truncation, ``ad4d270:sft/dataset.py:493-497``:
    ``side_tokenizer(batch_entry['input_text'], 'left', self.tokenizer, padding=True, truncation=True,
    max_length=self.args.max_token_length, ...)`` (``tokenizer.truncation_side = padding_side``,
    ``utils/tools.py:58``); a fast tokenizer truncates the content and then adds BOS, so BOS survives."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)  # a fresh copy: its post-processor is changed here
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single=f"{tok.bos_token} $A",
                                                                   special_tokens=[(tok.bos_token, bos)])
    text = "You are an expert recommender engine. You are a helpful, respectful and honest assistant."
    content = tok(text, add_special_tokens=False)["input_ids"]
    assert tok(text)["input_ids"] == [bos] + content and len(content) > 6
    cfg = PipelineConfig(max_prompt_length=6, with_output=False)
    got = tokenize_sample({"input_text": text}, tok, cfg).prompt
    tok.truncation_side = "left"
    assert got == tok(text, truncation=True, max_length=6)["input_ids"] == [bos] + content[-5:]
    # Text that already starts with the BOS string (a chat template wrote it) keeps that BOS too.
    got = tokenize_sample({"input_text": tok.bos_token + text}, tok, cfg).prompt
    assert got == [bos] + content[-5:]
    # Short prompts are untouched.
    assert tokenize_sample({"input_text": "Hi"}, tok, cfg).prompt == tok("Hi")["input_ids"]
