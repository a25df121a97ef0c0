"""Backbone set-up for every trainer: resolve the model folder, load it onto the runtime's mesh, attach named LoRA
adapters, split (graphdef, trainable, frozen) once for the jitted step.

SFT trains one adapter ("default"); PPO attaches "actor" and "critic" to the same frozen backbone and trains
both, while ``adapter=None`` stays the reference policy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from flax import nnx

from reclm_jax.errors import UserError
from reclm_jax.models.lora import LoraConfig, add_lora, split_trainable
from reclm_jax.train.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    path: str = ""  # local HF Llama folder; "" = the embedded SmolLM2-135M-Instruct (fetched and cached)
    param_dtype: str = "bfloat16"  # frozen base weights
    dtype: str = "bfloat16"  # compute dtype (LoRA params and optimiser state stay float32)
    remat: bool = False  # recompute each block's activations in the backward pass (saves memory)
    # Matmul/attention kernels: "cpu" = XLA:CPU fast paths (bf16 dots accumulated in f32, blocked causal
    # attention), "xla" = plain XLA ops (what GPUs and TPUs want), "auto" = cpu on a CPU backend, else xla.
    kernels: Literal["auto", "xla", "cpu"] = "auto"
    # The decoder layers as one scanned stack (XLA compiles one layer, not num_layers): same results, names and
    # files; LoRA targets must then pick a module in every layer or in none (models/layer_stack.py).
    scan_layers: bool = False


def resolve_model_path(path: str) -> Path:
    """``path`` if it is an HF folder, the embedded SmolLM2 (fetched once) when empty; ``UserError`` otherwise."""
    if path:
        p = Path(path)
        if not (p / "config.json").is_file():
            raise UserError(f"model.path {p}: no config.json there; give a local HF Llama folder")
        return p
    from reclm_jax.models.fetch import ensure_smollm2

    return ensure_smollm2()


@dataclasses.dataclass
class Backbone:
    """A loaded model split for training: ``nnx.merge(graphdef, trainable, frozen)`` rebuilds it."""

    graphdef: Any
    trainable: Any  # nnx.State of the trained adapters' parameters (float32, on the mesh)
    frozen: Any  # nnx.State of everything else
    path: Path
    adapters: dict[str, LoraConfig]

    def model(self, trainable: Any = None) -> nnx.Module:
        """The model with ``trainable`` (default: the current one) merged in."""
        return nnx.merge(self.graphdef, self.trainable if trainable is None else trainable, self.frozen)


def load_backbone(settings: ModelSettings, adapters: dict[str, LoraConfig], runtime: Runtime, *, seed: int = 0,
                  train: tuple[str, ...] | None = None, full_tune: dict[str, tuple[str, ...]] | None = None,
                  progress: bool = True) -> Backbone:
    """Loads ``settings.path`` onto ``runtime.mesh`` and attaches ``adapters`` (name -> config).

    ``train``: the adapters whose parameters are trainable (default: all of them). ``full_tune``: adapter
    name -> modules (e.g. ``{"actor": ("lm_head",)}``) of which that adapter owns a fully trained copy; the
    frozen original stays what ``adapter=None`` (the reference policy) and the other adapters read.
    Adapter ``i`` draws its initialisation from ``seed + i``, so adding a critic does not change the actor's
    start.
    """
    from reclm_jax.models.hf_loading import load_llama

    path = resolve_model_path(settings.path)
    model = load_llama(path, mesh=runtime.mesh, param_dtype=settings.param_dtype, dtype=settings.dtype,
                       remat=settings.remat, kernels=settings.kernels, scan_layers=settings.scan_layers,
                       progress=progress and runtime.is_primary)
    full_tune = full_tune or {}
    for i, (name, cfg) in enumerate(adapters.items()):
        add_lora(model, cfg, name, seed=seed + i, full_tune=tuple(full_tune.get(name, ())))
    names = tuple(adapters) if train is None else train
    graphdef, trainable, frozen = split_trainable(model, names)
    return Backbone(graphdef, trainable, frozen, path, dict(adapters))
