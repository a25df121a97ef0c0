"""Quick check by hand: ``python -m reclm_jax.generate --model DIR --prompt TEXT [--chat] [--max-new-tokens N] [--json]``.

Prints the completion; with ``--json`` a JSON object with the prompt ids, generated ids and text.
Greedy by default; ``--temperature``/``--top-k``/``--top-p`` sample. ``--adapter CKPT`` applies a saved LoRA.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reclm_jax.cli import run_main
from reclm_jax.errors import UserError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF Llama folder (config.json, safetensors, tokenizer)")
    p.add_argument("--prompt", required=True, help="prompt text (a user message with --chat)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt with the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter", default=None, help="adapter checkpoint directory to apply")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument("--json", action="store_true", help="print prompt ids, generated ids and text as JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: no such directory")
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    from reclm_jax.models.adapter_io import load_adapter
    from reclm_jax.models.generation import MAX_STOP_IDS, SamplingConfig, generate
    from reclm_jax.models.hf_loading import load_llama
    from reclm_jax.models.special_tokens import resolve_stop_ids
    from reclm_jax.models.tokenizer import load_tokenizer, pad_token_id

    tok = load_tokenizer(model_dir, key="--model")
    if args.chat:
        if not tok.chat_template:
            raise UserError(f"--chat: the tokenizer in {model_dir} has no chat template")
        ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    else:
        ids = tok(args.prompt, add_special_tokens=True)["input_ids"]
    if not ids:
        raise UserError("--prompt is empty after tokenisation")
    model = load_llama(model_dir, dtype=args.dtype)
    adapter = load_adapter(args.adapter, model) if args.adapter else None
    stops = resolve_stop_ids(tok, model_dir)  # the rules validation uses too (models/special_tokens.py)
    if len(stops) > MAX_STOP_IDS:
        raise UserError(f"{model_dir} declares {len(stops)} stop ids {stops}; generation supports {MAX_STOP_IDS}")
    result = generate(model, [ids], max_new_tokens=args.max_new_tokens, pad_id=pad_token_id(tok),
                      stop_ids=stops, adapter=adapter, seed=args.seed,
                      sampling=SamplingConfig(args.temperature, args.top_k, args.top_p))
    new = result.token_lists()[0]
    text = tok.decode(new, skip_special_tokens=True)
    if args.json:
        print(json.dumps({"prompt_ids": ids, "generated_ids": new, "text": text}, ensure_ascii=False))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    run_main(main)
