"""One rule for stop and pad ids: the generate CLI and validation agree on Llama-2, Llama-3 and SmolLM2 styles."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from reclm_jax import generate as generate_cli
from reclm_jax.data.item_index import ItemIndex
from reclm_jax.eval.generation_eval import evaluate_generation
from reclm_jax.models.generation import GenerationResult
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.sampler import Sampler
from reclm_jax.models.special_tokens import resolve_pad_id, resolve_stop_ids, template_end_of_turn
from reclm_jax.models.tokenizer import pad_token_id
from reclm_jax.testing.tiny_model import write_tiny_llama

# style -> (expected stop tokens, end-of-turn token of the chat template, expected pad token)
CASES = {
    "llama2": ({"</s>"}, "</s>", "</s>"),  # no pad token: EOS (config.json's pad_token_id 0 is not used)
    "llama3": ({"<|end_of_text|>", "<|eot_id|>"}, "<|eot_id|>", "<|end_of_text|>"),
    "chatml": ({"<|im_end|>"}, "<|im_end|>", "<pad>"),  # <|endoftext|> is SmolLM2's unk: never a stop id
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for style in CASES:
        d = write_tiny_llama(tmp_path_factory.mktemp(f"tok_{style}"), "llama2", num_layers=1, tokenizer_style=style)
        cfg = json.loads((d / "config.json").read_text())
        if cfg.get("pad_token_id") is None:  # a config pad id that differs from the tokenizer rule's
            (d / "config.json").write_text(json.dumps({**cfg, "pad_token_id": 0}))
        out[style] = d
    return out


@pytest.fixture
def sampler_calls(monkeypatch):
    """Every Sampler call records the pad id and stop ids it decodes with, and returns empty rows."""
    calls = []

    def record(self, prompts, *, max_new_tokens, stop_ids=None, **_):
        calls.append({"pad_id": self.pad_id, "stop_ids": sorted(self.stop_ids if stop_ids is None else stop_ids)})
        n = len(prompts)
        return GenerationResult(tokens=np.zeros((n, 1), np.int32), logprobs=np.zeros((n, 1), np.float32),
                                lengths=np.zeros(n, np.int32), stopped=np.zeros(n, bool))

    monkeypatch.setattr(Sampler, "__call__", record)
    return calls


@pytest.mark.parametrize("style", sorted(CASES))
def test_cli_and_validation_decode_with_the_same_ids(folders, style, sampler_calls):
    d = folders[style]
    stops, turn, pad = CASES[style]
    tok = AutoTokenizer.from_pretrained(d)
    want = {"pad_id": tok.convert_tokens_to_ids(pad), "stop_ids": sorted(tok.convert_tokens_to_ids(t) for t in stops)}
    assert want["pad_id"] != 0 and want["pad_id"] == pad_token_id(tok)  # the training batches' pad id
    assert template_end_of_turn(tok) == tok.convert_tokens_to_ids(turn)
    generate_cli.main(["--model", str(d), "--prompt", "hi", "--max-new-tokens", "2"])
    # validation only holds the tokenizer: it finds the model folder itself (tokenizer.name_or_path)
    index = ItemIndex(["a"], ["Alpha (1)"], "title")
    sample = {"task": "SFTTestSeqRec", "input_text": "Recommend a movie.", "output_text": "Alpha (1)",
              "input_field_data": {"item_count": 1, "sub_sequential": ["a"], "target_category": "X"}}
    evaluate_generation(load_llama(d, progress=False), tok, [sample], index, {"X": ["a"]}, adapter=None,
                        batch_size=1, max_new_tokens=2, progress=False)
    assert sampler_calls == [want, want]  # what the CLI and validation actually passed to the Sampler


def test_config_lists_and_pad_fallbacks(tmp_path, folders):
    d = folders["llama3"]
    tok = AutoTokenizer.from_pretrained(d)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    base = resolve_stop_ids(tok, d)
    assert resolve_stop_ids(tok, tmp_path) == sorted(set(base) | {7, 8, 9})
    assert resolve_pad_id(tok) == tok.eos_token_id  # no pad token: EOS
