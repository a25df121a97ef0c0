"""Validation by generation: one Sampler per validation, reusable across validations with new weights."""

import math

import jax
import pytest
from transformers import AutoTokenizer

from reclm_jax.data.item_index import ItemIndex
from reclm_jax.eval.generation_eval import evaluate_generation, generation_metrics, validation_sampler
from reclm_jax.models.generation import generate
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.sampler import Sampler
from reclm_jax.models.lora import LoraConfig, add_lora
from reclm_jax.models.tokenizer import pad_token_id
from reclm_jax.testing.tiny_model import write_tiny_llama

INDEX = ItemIndex(["a", "b", "c", "d"], ["Alpha (1)", "Beta (2)", "Gamma (3)", "Delta (4)"], "title")
CATS = {"X": ["a", "b"], "Y": ["c"]}


def _samples(n):
    f = {"item_count": 3, "sub_sequential": ["b"], "target_category": "X"}
    return [{"task": "SFTTestSeqRec", "input_text": f"Recommend {i} movies like Heat (1995).", "input_field_data": f,
             "output_text": "Alpha (1)"} for i in range(n)]


def test_one_sampler_serves_every_batch_and_later_validations(tiny_llama_factory):
    d = tiny_llama_factory("smollm2")
    tok = AutoTokenizer.from_pretrained(d)
    model = load_llama(d, progress=False)
    add_lora(model, LoraConfig(rank=4, targets=("q_proj", "v_proj")), "default")
    samples = _samples(5)  # batches of 2: 2 + 2 + 1 rows, all padded to 2
    kw = dict(adapter="default", batch_size=2, max_new_tokens=6, progress=False)
    metrics, texts = evaluate_generation(model, tok, samples, INDEX, CATS, **kw)
    assert metrics.results()["SFTTestSeqRec"]["Count"] == 5
    prompt = tok(samples[0]["input_text"])["input_ids"]
    ref = generate(model, [prompt], max_new_tokens=6, pad_id=tok.pad_token_id, stop_ids=[tok.eos_token_id])
    assert texts[0] == tok.decode(ref.token_lists()[0], skip_special_tokens=True)

    sampler = validation_sampler(model, tok, batch_size=2)
    _, again = evaluate_generation(sampler, tok, samples, INDEX, CATS, **kw)
    assert again == texts and sampler.traces == 1  # every batch (the short last one too) ran one program
    keys = iter(jax.random.split(jax.random.key(1), 64))
    sampler.update_params(jax.tree.map(lambda x: x + jax.random.normal(next(keys), x.shape, x.dtype),
                                       sampler.trainable))
    _, changed = evaluate_generation(sampler, tok, samples, INDEX, CATS, **kw)
    assert changed != texts and sampler.traces == 1


def test_validation_pads_like_training_batches(tmp_path):
    d = write_tiny_llama(tmp_path / "llama2", "llama2", num_layers=1, tokenizer_style="llama2")
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.pad_token_id is None and tok.eos_token_id != 0
    model = load_llama(d, progress=False)
    model.config = model.config.replace(pad_token_id=0)  # a config pad id other than the tokenizer rule's
    assert validation_sampler(model, tok, batch_size=2).pad_id == pad_token_id(tok) == tok.eos_token_id


def test_batches_by_prompt_length_and_returns_texts_in_sample_order(tiny_llama_factory):
    d = tiny_llama_factory("smollm2")
    tok = AutoTokenizer.from_pretrained(d)
    model = load_llama(d, progress=False)
    samples = _samples(5)
    for i, s in enumerate(samples):  # lengths long, short, long, short, medium: sorting regroups them
        s["input_text"] = s["input_text"] + " Heat (1995)." * (12 if i % 2 == 0 else 0) + " x" * i
    calls = []

    class Recording(Sampler):  # records each batch's prompt lengths
        def __call__(self, prompts, **kw):
            calls.append(sorted(len(p) for p in prompts))
            return super().__call__(prompts, **kw)

    sampler = validation_sampler(model, tok, batch_size=2)
    sampler.__class__ = Recording
    _, texts = evaluate_generation(sampler, tok, samples, INDEX, CATS, adapter=None, batch_size=2, max_new_tokens=5,
                                   progress=False)
    lengths = sorted(len(tok(s["input_text"])["input_ids"]) for s in samples)
    assert [x for c in calls for x in c] == lengths  # batches hold neighbours in length order
    for s, text in zip(samples, texts):
        alone = generate(model, [tok(s["input_text"])["input_ids"]], max_new_tokens=5, pad_id=tok.pad_token_id,
                         stop_ids=[tok.eos_token_id])
        assert text == tok.decode(alone.token_lists()[0], skip_special_tokens=True)


def test_generation_metrics_parse_numbered_texts_and_take_list_rewards():
    """What SFT and RL validation both score generated texts with, on hand-made texts: numbered lines parsed,
    per task, RewardSum the mean of the list rewards given (RL tasks only)."""
    f = {"item_count": 2, "sub_sequential": ["c"], "target_category": "X"}
    samples = [{"task": "RLSeqRec", "input_field_data": f, "output_text": "Beta (2)"},
               {"task": "RLSeqRec", "input_field_data": f, "output_text": "Alpha (1)"},
               {"task": "SFTTestSeqRec", "input_field_data": f, "output_text": "Beta (2)"}]
    texts = ["1. Alpha (1)\n 2. Beta (2)\n", "1. Gamma (3)\n2. Gamma (3)\n3. Nope", "1. Beta (2)\n 2. Delta (4)"]
    m = generation_metrics(samples, texts, INDEX, CATS, list_rewards=[4.0, -2.0, 9.0])
    rl, sft = m.results()["RLSeqRec"], m.results()["SFTTestSeqRec"]
    assert rl["Count"] == 2 and rl["NDCG"] == pytest.approx(0.5 / math.log2(3))  # Beta second, then a miss
    assert rl["CorrectCount"] == 0.5 and rl["RepeatRate"] == 0.5 and rl["InHistoryRate"] == 1.0
    assert rl["RewardSum"] == 1.0 and "RewardSum" not in sft  # SFT tasks have no reward
    assert sft["NDCG"] == 1.0 and sft["TargetCategoryRate"] == 1.0
    assert generation_metrics(samples, texts, INDEX, CATS).results()["RLSeqRec"]["RewardSum"] == 0.0


@pytest.mark.filterwarnings("ignore:test mode")  # the teacher's SeqRec lists stand in for the model's
def test_constrained_validation_writes_only_lists_that_obey_each_sample(tiny_llama_factory, tiny_dataset_dir,
                                                                       teacher):
    """``val_constrained``'s path on every test task of the tiny dataset: each sample decoded under its own
    ``constraint_for_sample``, one compiled program for the mixed batch; the random model's lists then break no
    rule (``decoding.check``), which the metrics show as NonExist / Repeat / InHistory 0, CorrectCount 1,
    TargetCategoryRatio 1 for +C and 0 for -C, CategoryRateCorrect 1."""
    from reclm_jax.data.task_setup import build_task_context
    from reclm_jax.data.tasks import TaskSettings
    from reclm_jax.decoding import constraint_for_sample
    from reclm_jax.decoding.check import violations
    from reclm_jax.eval.generation_eval import validation_catalogue
    from reclm_jax.eval.parsing import parse_list
    from reclm_jax.eval.test_samples import TEST_TASKS, build_task_samples

    d = tiny_llama_factory("smollm2")
    tok = AutoTokenizer.from_pretrained(d)
    ctx, index = build_task_context(tiny_dataset_dir, "title", tok, "hf", TaskSettings(topk=5))
    samples = [s for task in TEST_TASKS for s in build_task_samples(ctx, task, max_users=2, teacher=teacher,
                                                                    progress=False)]
    catalogue = validation_catalogue(ctx, tok)
    assert len(catalogue) == len(index.items) and not catalogue.dropped
    sampler = validation_sampler(load_llama(d, progress=False), tok, batch_size=len(samples))
    metrics, texts = evaluate_generation(sampler, tok, samples, index, ctx.raw.category2item, adapter=None,
                                         batch_size=len(samples), progress=False, catalogue=catalogue)
    assert sampler.traces == 1
    for s, text in zip(samples, texts):
        rule = constraint_for_sample(s["task"], s["input_field_data"])
        assert parse_list(text) and not violations(parse_list(text), rule, catalogue, ctx.raw.item2category), text
    res, ratios = metrics.results(), metrics.ratios()
    assert set(res) == set(TEST_TASKS)
    for task, row in res.items():
        assert row["Count"] == 2 and row["CorrectCount"] == 1.0, task
        assert row["NonExistRate"] == row["RepeatRate"] == row["InHistoryRate"] == 0.0, task
        if "CategoryRateCorrect" in row:
            assert row["CategoryRateCorrect"] == 1.0, task
    assert ratios["SFT+TestPersonalControlRec"]["TargetCategoryRatio"] == 1.0
    assert ratios["SFT-TestPersonalControlRec"]["TargetCategoryRatio"] == 0.0
