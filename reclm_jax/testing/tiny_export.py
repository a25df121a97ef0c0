"""A merged export of a tiny model with a LoRA adapter that changes its answers: what ``sft.merge`` writes for
vLLM, built in a second for the vLLM tests."""

from __future__ import annotations

from pathlib import Path

import jax


def write_merged_export(base_dir: str | Path, out: str | Path, dtype: str = "float32", scale: float = 0.05) -> Path:
    """Loads the HF folder ``base_dir``, adds a rank-4 LoRA on every linear and the LM head with random ``B``
    (standard deviation ``scale``, fixed keys: a trained-looking adapter, not the zero one a fresh LoRA is),
    and writes the merged weights as an HF folder ``out`` in ``dtype``; returns ``out``."""
    from reclm_jax.models.hf_export import export_merged
    from reclm_jax.models.hf_loading import load_llama
    from reclm_jax.models.lora import ALL_LINEARS, LoraConfig, adapter_modules, add_lora

    model = load_llama(base_dir, progress=False)
    add_lora(model, LoraConfig(rank=4, alpha=8, targets=ALL_LINEARS + ("lm_head",)), "default")
    for i, lin in enumerate(adapter_modules(model, "default").values()):
        b = lin.lora["default"]["b"]
        b.set_value(jax.random.normal(jax.random.key(i), b[...].shape) * scale)
    return export_merged(model, base_dir, out, adapter="default", dtype=dtype, progress=False)
