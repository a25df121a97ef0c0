"""The real SmolLM2-135M-Instruct (converted from the GGUF on PyPI) against transformers. Opt-in: realdata."""

import numpy as np
import pytest

pytestmark = pytest.mark.realdata

PROMPTS = (
    "The capital of France is",
    "Here is the user's historical interactions: 'Toy Story (1995)' -> 'Heat (1995)'. Recommend 3 movies:",
    "def fibonacci(n):",
)


@pytest.fixture(scope="module")
def smollm2():
    from reclm_jax.models.fetch import ensure_smollm2

    return ensure_smollm2()


def test_real_smollm2_logits_and_greedy_match_transformers(smollm2):
    import torch
    import transformers

    from reclm_jax.models.generation import generate
    from reclm_jax.models.hf_loading import load_llama

    tok = transformers.AutoTokenizer.from_pretrained(smollm2)
    ours = load_llama(smollm2, param_dtype="float32", progress=False)
    ref = transformers.LlamaForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    for text in PROMPTS:
        ids = tok(text)["input_ids"]
        a = np.asarray(ours(np.asarray([ids])).logits)
        with torch.no_grad():
            b = ref(torch.tensor([ids])).logits.numpy()
            want = ref.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                                pad_token_id=tok.pad_token_id or 0)[0, len(ids):].tolist()
        assert np.abs(a - b).max() <= 1e-3, text
        got = generate(ours, [ids], max_new_tokens=32, pad_id=tok.pad_token_id or 0).token_lists()[0]
        assert got == want, text
