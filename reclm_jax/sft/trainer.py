"""The LoRA SFT loop: load the base model onto the mesh, attach the adapter, train, validate, checkpoint, resume.

Outputs under ``output_dir``::

    config.yaml            the resolved config
    checkpoints/<step>/    Orbax: trainable params, optimiser state, RNG, step, data-iterator position
    adapter/               the final adapter (``reclm_jax.models.adapter_io`` format; ``python -m reclm_jax.export``)
    best_adapter/          the adapter with the best mean validation NDCG
    log.jsonl, tensorboard/  train loss / lr / throughput and validation metrics
    metrics.json           validation metrics before training (base model) and after the last validation
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from reclm_jax.config import save_config
from reclm_jax.errors import UserError
from reclm_jax.eval.generation_eval import evaluate_generation, mean_metric
from reclm_jax.models.adapter_io import save_adapter
from reclm_jax.models.hf_loading import load_llama
from reclm_jax.models.lora import LoraConfig, add_lora, split_trainable
from reclm_jax.models.sharding import batch_sharding, make_mesh
from reclm_jax.sft.checkpointing import CheckpointStore
from reclm_jax.sft.config import SFTConfig
from reclm_jax.sft.data import SFTData, load_tokenizer, stack_micro_batches, take_step_batches
from reclm_jax.sft.optim import lr_schedule, make_optimizer
from reclm_jax.sft.run_log import RunLog
from reclm_jax.sft.step import Batch, make_train_step, state_shardings_of

ADAPTER = "default"
# Tests set this to freeze a run after a given step so it can be killed mid-epoch at a known point.
_PAUSE_AT_STEP = int(os.environ.get("RECLM_JAX_TEST_PAUSE_AT_STEP", "0") or 0)


def resolve_model_path(cfg: SFTConfig) -> Path:
    if cfg.model.path:
        p = Path(cfg.model.path)
        if not (p / "config.json").is_file():
            raise UserError(f"model.path {p}: no config.json there; give a local HF Llama folder")
        return p
    from reclm_jax.models.fetch import ensure_smollm2

    return ensure_smollm2()


class SFTTrainer:
    """One SFT run. ``run()`` trains to the end (or ``max_steps`` / the time budget) and returns a summary."""

    def __init__(self, cfg: SFTConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.output_dir)
        self.model_path = resolve_model_path(cfg)
        self.tokenizer = load_tokenizer(self.model_path)
        self.data = SFTData(cfg, self.tokenizer)
        t = cfg.train
        if t.batch_size < 1 or t.grad_accum < 1:
            raise UserError("train.batch_size and train.grad_accum must be >= 1")
        self.steps_per_epoch = self.data.steps_per_epoch()
        if self.steps_per_epoch == 0:
            raise UserError(f"an epoch has {self.data.samples_per_epoch()} samples, fewer than one step's "
                            f"{t.batch_size * t.grad_accum} (train.batch_size x train.grad_accum)")
        self.total_steps = self.steps_per_epoch * t.epochs
        if t.max_steps > 0:
            self.total_steps = min(self.total_steps, t.max_steps)

        self.mesh = make_mesh(cfg.mesh)
        model = load_llama(self.model_path, mesh=self.mesh, param_dtype=cfg.model.param_dtype,
                           dtype=cfg.model.dtype, remat=cfg.model.remat, progress=progress)
        self.lora_cfg = LoraConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                                   targets=cfg.lora.targets, init=cfg.lora.init, param_dtype="float32")
        add_lora(model, self.lora_cfg, ADAPTER, seed=t.seed)
        self.graphdef, self.trainable, self.frozen = split_trainable(model, (ADAPTER,))
        self.tx = make_optimizer(cfg.optim, self.total_steps)
        self.trainable, self.opt_state, shardings = state_shardings_of(
            self.trainable, self.tx.init(self.trainable), self.mesh)
        self.schedule = lr_schedule(cfg.optim, self.total_steps)
        self.step_fn = make_train_step(self.graphdef, self.tx, adapter=ADAPTER, weighting=t.loss_weighting,
                                       dropout=cfg.lora.dropout > 0, state_shardings=shardings)
        self.store = CheckpointStore(self.out / "checkpoints", keep=t.keep_checkpoints)
        self.step = 0
        self.epoch = 0
        self.data_state: dict | None = None
        self.best = -1.0
        self.history: dict[str, Any] = {}

    # -- state ----------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"trainable": self.trainable, "opt_state": self.opt_state}

    def save_checkpoint(self, data_state: dict | None) -> None:
        meta = {"step": self.step, "epoch": self.epoch, "data_state": data_state, "best": self.best,
                "history": self.history}
        self.store.save(self.step, self._state(), meta)

    def restore_latest(self) -> bool:
        step = self.store.latest_step()
        if step is None:
            return False
        state, meta = self.store.restore(step, self._state())
        self.trainable, self.opt_state = state["trainable"], state["opt_state"]
        self.step, self.epoch, self.data_state = meta["step"], meta["epoch"], meta["data_state"]
        self.best, self.history = meta["best"], meta.get("history", {})
        return True

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.trainable, self.frozen)

    def _shard(self, arrays: dict[str, np.ndarray]) -> Batch:
        rows = arrays["tokens"].shape[1]
        put = {k: jax.device_put(v, _accum_sharding(self.mesh, rows)) for k, v in arrays.items()}
        return Batch(put["tokens"], put["attention_mask"], put["loss_mask"])

    # -- validation -----------------------------------------------------------------------------------
    def validate(self, samples: list[dict], adapter: str | None, label: str, log: RunLog | None) -> dict:
        t = self.cfg.train
        metrics, texts = evaluate_generation(
            self.model(), self.tokenizer, samples, self.data.index, self.data.ctx.raw.category2item,
            adapter=adapter, batch_size=t.val_batch_size, max_new_tokens=t.val_max_new_tokens,
            max_prompt_length=self.cfg.data.max_prompt_length, progress=self.progress, desc=f"validate ({label})")
        results = metrics.results()
        ndcg = mean_metric(metrics, "NDCG")
        if log is not None:
            flat = {f"{task}/{m}": v for task, row in results.items() for m, v in row.items()}
            log.write("val", self.step, {"mean_NDCG": ndcg, **flat})
        return {"results": results, "ratios": metrics.ratios(), "mean_NDCG": ndcg, "table": metrics.table(),
                "examples": [{"task": s["task"], "target": s["output_text"], "generated": g}
                             for s, g in list(zip(samples, texts))[:3]]}

    def _after_validation(self, res: dict) -> None:
        self.history["after"] = {k: res[k] for k in ("results", "ratios", "mean_NDCG")}
        if res["mean_NDCG"] > self.best:
            self.best = res["mean_NDCG"]
            save_adapter(self.out / "best_adapter", self.model(), ADAPTER, config=self.lora_cfg,
                         base_model=str(self.model_path))
        self._write_metrics()

    def _write_metrics(self) -> None:
        tmp = self.out / "metrics.json.tmp"
        tmp.write_text(json.dumps(self.history, indent=2))
        tmp.replace(self.out / "metrics.json")

    # -- loop -----------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        save_config(cfg, self.out)
        resumed = cfg.resume and self.restore_latest()
        if cfg.resume and not resumed:
            print(f"no checkpoint in {self.out / 'checkpoints'}; starting from scratch")
        log = RunLog(self.out)
        val_samples = self.data.val_samples()
        if t.val_before and not resumed and val_samples:
            before = self.validate(val_samples, None, "base model", log)
            self.history["before"] = {k: before[k] for k in ("results", "ratios", "mean_NDCG")}
            self._write_metrics()
        start_time = time.time()
        base_key = jax.random.key(t.seed)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="SFT", unit="step", disable=not self.progress)
        stop = False
        last_val_step = -1
        try:
            while self.epoch < t.epochs and not stop and self.step < self.total_steps:
                it = self.data.epoch_batches(self.epoch)
                if self.data_state is not None:
                    it.set_state(self.data_state)
                    self.data_state = None
                t0, tokens_seen = time.time(), 0.0
                while True:
                    micro = take_step_batches(it, t.grad_accum)
                    if micro is None:
                        break
                    batch = self._shard(stack_micro_batches(micro, self.data.pad_id()))
                    rng = jax.random.fold_in(base_key, self.step)
                    self.trainable, self.opt_state, m = self.step_fn(self.trainable, self.opt_state, self.frozen,
                                                                     batch, rng)
                    self.step += 1
                    tokens_seen += float(m["tokens"])
                    bar.update(1)
                    if self.step % t.log_every == 0 or self.step == 1:
                        loss = float(m["loss"])
                        lr = float(self.schedule(self.step - 1))
                        rate = tokens_seen / max(time.time() - t0, 1e-9)
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}")
                        log.write("train", self.step, {"loss": loss, "lr": lr, "grad_norm": float(m["grad_norm"]),
                                                       "epoch": self.epoch, "label_tokens_per_s": rate})
                    out_of_time = t.time_budget_s > 0 and time.time() - start_time > t.time_budget_s
                    done = self.step >= self.total_steps or out_of_time
                    if self.step % t.save_every == 0 or done:
                        self.save_checkpoint(it.get_state())
                    if t.val_every > 0 and self.step % t.val_every == 0 and val_samples:
                        self._after_validation(self.validate(val_samples, ADAPTER, f"step {self.step}", log))
                        last_val_step = self.step
                    if _PAUSE_AT_STEP and self.step == _PAUSE_AT_STEP:
                        time.sleep(3600)  # fault-injection point for the kill-and-resume test
                    if done:
                        stop = True
                        if out_of_time:
                            print(f"\ntime budget of {t.time_budget_s:.0f}s reached at step {self.step}")
                        break
                if not stop:
                    self.epoch += 1
                    if self.store.latest_step() != self.step:
                        self.save_checkpoint(None)
                if t.val_every == 0 and val_samples and last_val_step != self.step:
                    self._after_validation(self.validate(val_samples, ADAPTER, f"epoch {self.epoch}", log))
                    last_val_step = self.step
        finally:
            bar.close()
            log.close()
        if val_samples and last_val_step != self.step:
            self._after_validation(self.validate(val_samples, ADAPTER, "final", log=None))
        save_adapter(self.out / "adapter", self.model(), ADAPTER, config=self.lora_cfg, base_model=str(self.model_path))
        self.store.close()
        return {"steps": self.step, "epochs_done": self.epoch, "best_mean_NDCG": self.best, **self.history}


def _accum_sharding(mesh, rows: int):
    """[A, B, T] arrays: the accumulation axis replicated, B over the mesh's data axes."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    spec = batch_sharding(mesh, 2, rows).spec
    return NamedSharding(mesh, P(None, *spec))


def trainable_leaves(trainer: SFTTrainer) -> list[np.ndarray]:
    """Host copies of the trainable params in a stable order (tests compare runs with it)."""
    return [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(trainer.trainable)]

