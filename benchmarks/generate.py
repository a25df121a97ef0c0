"""Batched greedy decoding throughput: reclm-jax vs transformers-torch ``generate`` in the same run.

    python benchmarks/generate.py [--model DIR] [--batch 16] [--prompt-len 256] [--new-tokens 128] [--dtype float32]

Default model: the converted SmolLM2-135M-Instruct (``reclm_jax.models.fetch.ensure_smollm2``). Prompts are
random token ids of exactly ``--prompt-len`` tokens; no stop ids, so both engines decode every token.
Tokens/s counts generated tokens only; the JAX figure excludes the one-off compile (timed separately).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-torch", action="store_true")
    args = p.parse_args()

    from reclm_jax.models.generation import generate
    from reclm_jax.models.hf_loading import load_llama

    if args.model is None:
        from reclm_jax.models.fetch import ensure_smollm2

        args.model = str(ensure_smollm2())
    rng = np.random.default_rng(0)
    prompts = rng.integers(100, 40000, (args.batch, args.prompt_len))
    n_tokens = args.batch * args.new_tokens
    result = {"model": args.model, "batch": args.batch, "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "dtype": args.dtype}

    model = load_llama(args.model, param_dtype=args.dtype, dtype=args.dtype, progress=False)
    t = time.perf_counter()
    first = generate(model, prompts.tolist(), max_new_tokens=args.new_tokens, pad_id=0)
    result["jax_first_call_s"] = round(time.perf_counter() - t, 2)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = generate(model, prompts.tolist(), max_new_tokens=args.new_tokens, pad_id=0)
        times.append(time.perf_counter() - t)
    assert out.token_lists() == first.token_lists()
    result["jax_tok_s"] = round(n_tokens / min(times), 1)

    if not args.skip_torch:
        import torch
        import transformers

        tdtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
        ref = transformers.LlamaForCausalLM.from_pretrained(args.model, dtype=tdtype).eval()
        ids = torch.tensor(prompts)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            with torch.no_grad():
                gen = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            times.append(time.perf_counter() - t)
        result["torch_tok_s"] = round(n_tokens / min(times), 1)
        result["ratio_jax_over_torch"] = round(result["jax_tok_s"] / result["torch_tok_s"], 2)
        same = (gen[:, args.prompt_len:].numpy() == np.asarray(out.tokens)).mean()
        result["greedy_token_agreement"] = round(float(same), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
