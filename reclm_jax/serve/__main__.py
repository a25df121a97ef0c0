"""An OpenAI-compatible server over the library's Sampler (what vLLM is to the original's test stage).

    python -m reclm_jax.serve --model DIR [--adapter CKPT [--merge-adapter]] [--port 13579] [--host 127.0.0.1]
        [--served-model-name NAME] [--max-batch 16] [--max-wait-ms 5] [--max-queue 256] [--max-model-len N]
        [--dtype auto|float32|bfloat16] [--kernels auto|xla|cpu] [--constrain-data DIR [--item-index NAME]]
        [--batching continuous|static] [--decode-chunk 8] [--cache-len N]

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (the model's chat
template), ``GET /health``. Concurrent requests that can share a compiled program (same temperature, top_k,
top_p, adapter) are decoded together, ``--max-batch`` rows at a time. ``--batching continuous`` (the default):
rows leave and join the running batch every ``--decode-chunk`` decoding steps (requests with a constraint or
top logprobs, or too long for ``--cache-len``, take the static path); ``static``: a batch waits at most
``--max-wait-ms`` for company and runs until its longest row ends. More than ``--max-queue`` waiting requests
get 503. With ``--constrain-data``,
a request's ``reclm_constraint`` key decodes it under a catalogue constraint (``reclm_jax.decoding``).
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

from reclm_jax.errors import UserError

DEFAULT_PORT = 13579


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reclm_jax.serve", description=__doc__.split("\n\n")[0],
                                epilog="Request and response formats: docs/serving.md.")
    p.add_argument("--model", required=True, help="HF Llama folder (config.json, safetensors, tokenizer)")
    p.add_argument("--adapter", default=None,
                   help="LoRA adapter checkpoint to apply (a folder with lora_adapter.json: a run's adapter/ or "
                        "best_adapter/); applied on top of the frozen backbone unless --merge-adapter")
    p.add_argument("--merge-adapter", action="store_true",
                   help="fold the adapter into the weights at load (faster decoding; rounded to --dtype)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    p.add_argument("--served-model-name", default=None,
                   help="the name /v1/models lists and requests give as 'model' (default: --model as given, as vLLM)")
    p.add_argument("--max-batch", type=int, default=16, help="rows (prompts x n) per decode call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for company")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before 503")
    p.add_argument("--max-n", type=int, default=64, help="largest n (choices per prompt)")
    p.add_argument("--max-rows", type=int, default=256, help="most rows (prompts x n) in one request")
    p.add_argument("--max-model-len", type=int, default=0,
                   help="prompt + completion tokens (default: the model's max_position_embeddings)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="weights and compute (auto: the checkpoint's torch_dtype)")
    p.add_argument("--kernels", default="auto", choices=("auto", "xla", "cpu"), help="see docs/architecture.md")
    p.add_argument("--constrain-data", "--constrain_data", dest="constrain_data", default=None,
                   help="raw dataset folder: its catalogue serves requests with a 'reclm_constraint' key")
    p.add_argument("--item-index", "--item_index", dest="item_index", default="title",
                   help="the item index of --constrain-data (the one the prompts and the eval client use)")
    p.add_argument("--batching", default="continuous", choices=("continuous", "static"),
                   help="continuous: rows join and leave between decoding chunks; static: whole batches")
    p.add_argument("--decode-chunk", type=int, default=8,
                   help="continuous batching: decoding steps between admissions (latency to join vs overhead)")
    p.add_argument("--cache-len", type=int, default=0,
                   help="continuous batching: KV cache slots per row (default 2 x --max-model-len, within 2 GiB)")
    p.add_argument("--http", default="auto", choices=("auto", "h11", "httptools"), help="uvicorn's HTTP parser")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from reclm_jax.serve.config import ServeConfig
    from reclm_jax.service.server import check_port, run_server

    if not Path(a.model).is_dir():
        raise UserError(f"--model {a.model}: no such folder")
    if a.constrain_data is not None and not Path(a.constrain_data).is_dir():
        raise UserError(f"--constrain-data {a.constrain_data}: no such folder")
    if a.merge_adapter and not a.adapter:
        raise UserError("--merge-adapter needs --adapter")
    cfg = ServeConfig(served_model_name=a.served_model_name or a.model, max_batch=a.max_batch,
                      max_wait_ms=a.max_wait_ms, max_queue=a.max_queue, max_n=a.max_n, max_rows=a.max_rows,
                      max_model_len=a.max_model_len, batching=a.batching)
    if a.decode_chunk < 1 or a.cache_len < 0:
        raise UserError(f"--decode-chunk must be >= 1 and --cache-len >= 0, got {a.decode_chunk} and {a.cache_len}")
    check_port(a.host, a.port)  # before the model loads

    from reclm_jax.serve.app import create_app
    from reclm_jax.serve.engine import load_engine

    engine = load_engine(a.model, adapter=a.adapter, merge_adapter=a.merge_adapter, dtype=a.dtype,
                         kernels=a.kernels, max_batch=a.max_batch, max_model_len=a.max_model_len,
                         constrain_data=a.constrain_data, item_index=a.item_index, decode_chunk=a.decode_chunk,
                         cache_len=a.cache_len)
    gc.collect()
    gc.freeze()  # the model's long-lived objects out of the collector's walks (pauses under load)
    adapter = f", adapter {a.adapter}{' (merged)' if a.merge_adapter else ''}" if a.adapter else ""
    print(f"reclm-jax serve: {cfg.served_model_name}{adapter}, context {engine.max_model_len}, "
          f"{a.batching} batching (cache {engine.cache_len} slots), http://{a.host}:{a.port}/v1", flush=True)
    run_server(create_app(engine, cfg), a.host, a.port, http=a.http)
    return 0


if __name__ == "__main__":
    from reclm_jax.cli import run_main

    run_main(main)
