"""SFT validation settings against the original's scripts: the four validation tasks, the model-selection mean,
and a generation length that fits the longest possible list."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from reclm_jax.config import load_config
from reclm_jax.data.item_index import ItemIndex
from reclm_jax.data.templates import render_output_list
from reclm_jax.eval import generation_eval
from reclm_jax.eval.metrics import Metrics
from reclm_jax.sft.config import DataSettings, SFTConfig, TrainSettings

REPO = Path(__file__).resolve().parents[2]
# ad4d270:scripts/sft_train.sh:22
ORIGINAL_VAL = ("SFTTestSeqRec", "SFT+TestPersonalControlRec", "SFT-TestPersonalControlRec",
                "SFTTestPersonalCategoryRateEP_50")


def test_validation_tasks_are_the_original_four():
    """B5: ``ad4d270:scripts/sft_train.sh:22``: ``--SFT_val_tasks SFTTestSeqRec,SFT+TestPersonalControlRec,
    SFT-TestPersonalControlRec,SFTTestPersonalCategoryRateEP_50``."""
    assert DataSettings().val_tasks == ORIGINAL_VAL
    for name in ("sft_llama2_7b_paper.yaml", "sft_smollm2_ml1m.yaml"):
        cfg = load_config(SFTConfig, REPO / "configs" / name, ["data_path=d", "model.path=m", "teacher.checkpoint=t"])
        assert cfg.data.val_tasks == ORIGINAL_VAL, name


def test_model_selection_is_the_mean_ndcg_over_the_four_tasks():
    """B5: the best checkpoint is chosen by the NDCG averaged over every validation task,
    ``ad4d270:sft/trainer.py:203,213``: ``_ndcg += sync_metrics_dict[task]['NDCG'] / task_count`` ...
    ``return 0.0 - _ndcg`` (printed as ``_ndcg/len(sync_metrics_dict)``)."""
    index = ItemIndex(["a", "b"], ["Alpha", "Beta"], "title")
    m = Metrics(list(ORIGINAL_VAL), index, {"X": ["a"], "Y": ["b"]})
    f = {"item_count": 2, "sub_sequential": [], "target_category": "X", "category_count": 1,
         "SeqRec_Result": ["a", "b"]}
    for task, out in zip(ORIGINAL_VAL, (["Alpha", "Beta"], ["Beta", "Alpha"], ["Beta"], ["Beta", "Alpha"])):
        m.add_sample(task, f, out, "Alpha", vague_mapping=False)
    # NDCG 1, 1/log2(3), 0, 1/log2(3): the EP task counts as much as the others.
    assert generation_eval.mean_metric(m, "NDCG") == pytest.approx((1 + 2 / np.log2(3)) / 4)


def _titles_tokens(tok, titles):
    return [len(tok(t, add_special_tokens=False)["input_ids"]) for t in titles]


def test_longest_list_tokens_fits_every_list(tiny_tokenizer_dir):
    """B6: the original decodes up to ``MaxLengthCriteria(max_length=self.args.max_token_length +
    self.args.gen_max_length)`` (``ad4d270:sft/trainer.py:157``; ``--gen_max_length`` 512, ``param.py:94``), so a
    list is never cut; the automatic length is the longest list the index allows, plus the stop token."""
    from transformers import AutoTokenizer

    from reclm_jax.data.item_index import longest_list_tokens

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    titles = ["Toy Story (1995)", "Star Wars: Episode IV - A New Hope (1977)", "Heat (1995)", "Fargo (1996)",
              "The quick brown fox jumps over the lazy dog (2000)"]
    index = ItemIndex([str(i) for i in range(len(titles))], titles, "title")
    for k, idx in ((3, True), (2, False)):
        worst = max(len(tok(render_output_list(list(p), "\n", idx), add_special_tokens=False)["input_ids"])
                    for p in itertools.permutations(titles, k))
        longest = sorted(titles, key=lambda t: -len(tok(t, add_special_tokens=False)["input_ids"]))[:k]
        got = longest_list_tokens(index, tok, k, idx)
        # The longest titles' list + one token per line + the stop token; never less than any real list needs.
        assert got == len(tok(render_output_list(longest, "\n", idx), add_special_tokens=False)["input_ids"]) + k + 1
        assert worst + 1 <= got <= worst + k + 1
    # More items asked for than the index has: the whole catalogue.
    assert longest_list_tokens(index, tok, 9) == longest_list_tokens(index, tok, 5) > sum(_titles_tokens(tok, titles))


def test_default_val_length_is_automatic(tiny_tokenizer_dir, monkeypatch):
    """B6: the default no longer cuts lists at 160 new tokens (the original allows at least 512,
    ``ad4d270:sft/trainer.py:157``): 0 means the longest list of the validation samples' largest item_count."""
    from transformers import AutoTokenizer

    from reclm_jax.data.item_index import longest_list_tokens

    assert TrainSettings().val_max_new_tokens == 0
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    long = "Star Wars: Episode IV - A New Hope (1977), The quick brown fox jumps over the lazy dog"
    titles = [f"{long} {i}" for i in range(15)]
    index = ItemIndex([str(i) for i in range(15)], titles, "title")
    seen = {}

    class Result:
        def __init__(self, n):
            self.n = n

        def token_lists(self):
            return [[] for _ in range(self.n)]

    def fake_sampler(prompts, *, max_new_tokens, **kw):
        seen.setdefault("max_new_tokens", set()).add(max_new_tokens)
        return Result(len(prompts))

    monkeypatch.setattr(generation_eval, "validation_sampler", lambda *a, **kw: fake_sampler)
    samples = [{"task": "SFTTestItemCount", "input_text": "Hi", "output_text": titles[0],
                "input_field_data": {"item_count": k, "target_category": None}} for k in (11, 15, 12)]
    generation_eval.evaluate_generation(None, tok, samples, index, {}, adapter=None, max_new_tokens=0,
                                        progress=False)
    expected = longest_list_tokens(index, tok, 15)
    assert seen["max_new_tokens"] == {expected} and expected > 160
    seen.clear()
    generation_eval.evaluate_generation(None, tok, samples, index, {}, adapter=None, max_new_tokens=64,
                                        progress=False)
    assert seen["max_new_tokens"] == {64}  # an explicit length is kept
