"""build_task_context: one read of the pickles, the EOS and chat format from the tokenizer, settings kept."""

from __future__ import annotations

import reclm_jax.datasets.raw as raw_module
from reclm_jax.data.task_setup import DEFAULT_EOS, build_task_context
from reclm_jax.data.tasks import TaskSettings
from reclm_jax.datasets.raw import FILES


def test_without_tokenizer_llama2_eos(tiny_dataset_dir):
    settings = TaskSettings(topk=5, candidate_num=7, max_prompt_length=128, keep_held_out=True)
    ctx, index = build_task_context(tiny_dataset_dir, "title", None, "llama-2", settings)
    assert ctx.eos == DEFAULT_EOS == "</s>" and ctx.s is settings and ctx.index is index
    assert ctx.share_chat is None and ctx.chat.name == "llama-2" and len(index) == 60


def test_computed_index_reads_each_pickle_once(tiny_dataset_dir, tiny_tokenizer, share_gpt_file, monkeypatch):
    reads = []
    original = raw_module._load_pickle
    monkeypatch.setattr(raw_module, "_load_pickle", lambda p, problems: reads.append(p.name) or original(p, problems))
    ctx, index = build_task_context(tiny_dataset_dir, "title64_t", tiny_tokenizer, "hf", TaskSettings(),
                                    share_chat_gpt_path=share_gpt_file)
    # title64_t is not a meta field: validating under it fails and falls back to "title" without re-reading.
    assert sorted(reads) == sorted(FILES)
    assert ctx.eos == tiny_tokenizer.eos_token != DEFAULT_EOS and index.name == "title64_t" and index.bijective
    assert ctx.share_chat is not None
