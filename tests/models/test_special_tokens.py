"""One rule for stop and pad ids: the generate CLI and validation agree on Llama-2, Llama-3 and SmolLM2 styles."""

import json

import pytest
from transformers import AutoTokenizer

from reclm_jax import generate as generate_cli
from reclm_jax.eval.generation_eval import stop_token_ids
from reclm_jax.models.special_tokens import resolve_pad_id, resolve_stop_ids, template_end_of_turn
from reclm_jax.testing.tiny_model import write_tiny_llama

# style -> (expected stop tokens, end-of-turn token of the chat template, expected pad token)
CASES = {
    "llama2": ({"</s>"}, "</s>", "</s>"),  # no pad token or config pad id: EOS
    "llama3": ({"<|end_of_text|>", "<|eot_id|>"}, "<|eot_id|>", "<|end_of_text|>"),
    "chatml": ({"<|im_end|>"}, "<|im_end|>", "<pad>"),  # <|endoftext|> is SmolLM2's unk: never a stop id
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {style: write_tiny_llama(tmp_path_factory.mktemp(f"tok_{style}"), "llama2", num_layers=1,
                                    tokenizer_style=style) for style in CASES}


@pytest.mark.parametrize("style", sorted(CASES))
def test_cli_and_validation_stop_on_the_same_ids(folders, style):
    d = folders[style]
    stops, turn, pad = CASES[style]
    tok = AutoTokenizer.from_pretrained(d)
    want = sorted(tok.convert_tokens_to_ids(t) for t in stops)
    assert generate_cli.stop_ids(tok, d) == want
    assert stop_token_ids(tok) == want  # validation only holds the tokenizer: it finds the folder itself
    assert template_end_of_turn(tok) == tok.convert_tokens_to_ids(turn)
    cfg = json.loads((d / "config.json").read_text())
    assert resolve_pad_id(tok, cfg) == tok.convert_tokens_to_ids(pad)


def test_config_lists_and_pad_fallbacks(tmp_path, folders):
    d = folders["llama3"]
    tok = AutoTokenizer.from_pretrained(d)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    base = resolve_stop_ids(tok, d)
    assert resolve_stop_ids(tok, tmp_path) == sorted(set(base) | {7, 8, 9})
    assert resolve_pad_id(tok, {"pad_token_id": 5}) == 5
    assert resolve_pad_id(None, {"eos_token_id": [4, 6]}) == 4 and resolve_pad_id(None, None) == 0
