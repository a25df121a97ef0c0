"""The LoRA SFT loop, built from the shared training layer (``reclm_jax.train``): backbone on the runtime's mesh,
the jitted accumulation step, validation, checkpoints and exact resume.

Outputs under ``output_dir`` (written by the primary process only)::

    config.yaml            the resolved config
    checkpoints/<step>/    Orbax: trainable params, optimiser state, step, data-iterator position
    adapter/               the final adapter (``reclm_jax.models.adapter_io`` format; ``python -m reclm_jax.export``)
    best_adapter/          the adapter with the best mean validation NDCG
    log.jsonl, tensorboard/  train loss / lr / throughput and validation metrics
    metrics.json           validation metrics before training (base model) and after the last validation
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from reclm_jax.errors import UserError
from reclm_jax.eval.generation_eval import (evaluate_generation, mean_metric, validation_catalogue, validation_length,
                                            validation_sampler)
from reclm_jax.models.adapter_io import save_adapter
from reclm_jax.sft.config import SFTConfig
from reclm_jax.atomic import write_json_atomic
from reclm_jax.models.tokenizer import load_tokenizer
from reclm_jax.sft.data import SFTData, stack_micro_batches, take_step_batches
from reclm_jax.sft.step import Batch, make_train_step
from reclm_jax.train.backbone import load_backbone, resolve_model_path
from reclm_jax.train.cadence import Budget, Cadence, Hooks
from reclm_jax.train.checkpoint import CheckpointStore
from reclm_jax.train.optim import lr_schedule, make_optimizer
from reclm_jax.train.run_log import RunLog, Throughput
from reclm_jax.train.run_start import start_run
from reclm_jax.train.runtime import Runtime
from reclm_jax.train.state import place_state

ADAPTER = "default"


class SFTTrainer:
    """One SFT run. ``run()`` trains to the end (or ``max_steps`` / the time budget) and returns a summary.

    ``runtime``: the mesh and process layout (default: built from ``cfg.mesh`` over every device).
    ``hooks``: callables run at fixed points of the loop (tests use ``hooks.after_step`` to interrupt a run).
    """

    def __init__(self, cfg: SFTConfig, progress: bool = True, runtime: Runtime | None = None,
                 hooks: Hooks | None = None):
        self.cfg = cfg
        t = cfg.train
        self.runtime = runtime or Runtime.create(cfg.mesh)
        self.hooks = hooks or Hooks()
        self.progress = progress and self.runtime.is_primary
        self.out = Path(cfg.output_dir)
        if t.batch_size < 1 or t.grad_accum < 1:
            raise UserError("train.batch_size and train.grad_accum must be >= 1")
        self.local_batch = self.runtime.local_rows(t.batch_size, "train.batch_size")
        self.model_path = resolve_model_path(cfg.model.path)
        self.tokenizer = load_tokenizer(self.model_path, key="model.path")
        self.data = SFTData(cfg, self.tokenizer, local_batch_size=self.local_batch)
        self.steps_per_epoch = self.data.steps_per_epoch()
        if self.steps_per_epoch == 0:
            raise UserError(f"an epoch has {self.data.samples_per_epoch()} samples per process, fewer than one "
                            f"step's {self.local_batch * t.grad_accum} (train.batch_size x train.grad_accum)")
        self.total_steps = self.steps_per_epoch * t.epochs
        if t.max_steps > 0:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.cadence = Cadence(log_every=t.log_every, save_every=t.save_every, val_every=t.val_every)

        self.backbone = load_backbone(cfg.model, {ADAPTER: cfg.lora}, self.runtime, seed=t.seed,
                                      progress=self.progress)
        self.tx = make_optimizer(cfg.optim, self.total_steps)
        self.trainable, self.opt_state, shardings = place_state(
            self.backbone.trainable, self.tx.init(self.backbone.trainable), self.runtime)
        self.frozen = self.backbone.frozen
        self.schedule = lr_schedule(cfg.optim, self.total_steps)
        self.step_fn = make_train_step(self.backbone.graphdef, self.tx, adapter=ADAPTER,
                                       weighting=t.loss_weighting, dropout=cfg.lora.dropout > 0,
                                       state_shardings=shardings)
        # One Sampler for every validation: its programs compile once and take the new adapter weights each time.
        self.val_sampler = validation_sampler((self.backbone.graphdef, self.trainable, self.frozen), self.tokenizer,
                                              batch_size=t.val_batch_size, runtime=self.runtime)
        # train.val_constrained: the catalogue every validation decodes over (tokenized once, here).
        self.catalogue = validation_catalogue(self.data.ctx, self.tokenizer, progress=self.progress) \
            if t.val_constrained else None
        self.store = CheckpointStore(self.out / "checkpoints", keep=t.keep_checkpoints)
        self.step = 0
        self.epoch = 0
        self.data_state: dict | None = None
        self.best = -1.0
        self.history: dict[str, Any] = {}
        self._val_tokens: int | None = None  # validation's max_new_tokens (see _val_length)
        self.last_val_step = -1  # the step of the latest validation (saved, so a resume does not repeat it)

    # -- state ----------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"trainable": self.trainable, "opt_state": self.opt_state}

    def save_checkpoint(self, data_state: dict | None, replace: bool = False) -> None:
        """A collective (every process calls it). The metadata carries the validation results so far, so a
        checkpoint is (re)written after any validation at its step."""
        self.data_state = data_state
        meta = {"step": self.step, "epoch": self.epoch, "data_state": data_state, "best": self.best,
                "history": self.history, "last_val_step": self.last_val_step}
        self.store.save(self.step, self._state(), meta, replace=replace)

    def restore_latest(self) -> bool:
        step = self.store.latest_step()
        if step is None:
            return False
        state, meta = self.store.restore(step, self._state())
        self.trainable, self.opt_state = state["trainable"], state["opt_state"]
        self.step, self.epoch, self.data_state = meta["step"], meta["epoch"], meta["data_state"]
        self.best, self.history = meta["best"], meta.get("history", {})
        self.last_val_step = meta.get("last_val_step", -1)
        return True

    def model(self) -> nnx.Module:
        return self.backbone.model(self.trainable)

    def save_adapter(self, where: str) -> None:
        """Gathers the adapter to every host (a collective: all processes call it), then the primary writes it."""
        host = self.backbone.model(self.runtime.to_host(self.trainable))
        if self.runtime.is_primary:
            save_adapter(self.out / where, host, ADAPTER, config=self.cfg.lora, base_model=str(self.model_path))

    def _place(self, arrays: dict[str, np.ndarray]) -> Batch:
        # [A, B_local, T] -> global [A, B, T]: the batch is dim 1, the accumulation axis stays whole.
        put = {k: self.runtime.place(v, batch_dim=1) for k, v in arrays.items()}
        return Batch(put["tokens"], put["attention_mask"], put["loss_mask"])

    # -- validation -----------------------------------------------------------------------------------
    def validate(self, samples: list[dict], adapter: str | None, label: str, log: RunLog | None) -> dict:
        t = self.cfg.train
        self.val_sampler.update_params(self.trainable)
        metrics, texts = evaluate_generation(
            self.val_sampler, self.tokenizer, samples, self.data.index, self.data.ctx.raw.category2item,
            adapter=adapter, batch_size=t.val_batch_size, max_new_tokens=self._val_length(samples),
            max_prompt_length=self.cfg.data.max_prompt_length, progress=self.progress, desc=f"validate ({label})",
            catalogue=self.catalogue)
        results = metrics.results()
        ndcg = mean_metric(metrics, "NDCG")
        if log is not None:
            flat = {f"{task}/{m}": v for task, row in results.items() for m, v in row.items()}
            log.write("val", self.step, {"mean_NDCG": ndcg, **flat})
        return {"results": results, "ratios": metrics.ratios(), "mean_NDCG": ndcg, "table": metrics.table(),
                "examples": [{"task": s["task"], "target": s["output_text"], "generated": g}
                             for s, g in list(zip(samples, texts))[:3]]}

    def _val_length(self, samples: list[dict]) -> int:
        """``train.val_max_new_tokens``, or (<= 0) the automatic length, worked out once per run: it tokenizes
        the whole catalogue."""
        if self._val_tokens is None:
            t = self.cfg.train
            self._val_tokens = t.val_max_new_tokens if t.val_max_new_tokens > 0 else \
                validation_length(samples, self.data.index, self.tokenizer)
        return self._val_tokens

    def _validate_adapter(self, samples: list[dict], label: str, log: RunLog | None) -> None:
        self._after_validation(self.validate(samples, ADAPTER, label, log))
        self.last_val_step = self.step

    def _after_validation(self, res: dict) -> None:
        self.history["after"] = {k: res[k] for k in ("results", "ratios", "mean_NDCG")}
        if res["mean_NDCG"] > self.best:
            self.best = res["mean_NDCG"]
            self.save_adapter("best_adapter")
        self._write_metrics()

    def _write_metrics(self) -> None:
        if not self.runtime.is_primary:
            return
        write_json_atomic(self.out / "metrics.json", self.history)

    # -- loop -----------------------------------------------------------------------------------------
    def run(self) -> dict:
        with self.runtime.activate():  # the models' activation sharding constraints apply inside
            return self._run()

    def _run(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        resumed, log = start_run(cfg, self.out, self.runtime, self.restore_latest, self.progress)
        val_samples = self.data.val_samples()
        if t.val_before and not resumed and val_samples:
            before = self.validate(val_samples, None, "base model", log)
            self.history["before"] = {k: before[k] for k in ("results", "ratios", "mean_NDCG")}
            self._write_metrics()
        budget = Budget(t.time_budget_s)
        base_key = jax.random.key(t.seed)
        bar = log.bar(self.total_steps, initial=self.step, desc="SFT")
        speed = Throughput()
        stop = False
        try:
            while self.epoch < t.epochs and not stop and self.step < self.total_steps:
                it = self.data.epoch_batches(self.epoch)
                if self.data_state is not None:
                    it.set_state(self.data_state)
                while True:
                    micro = take_step_batches(it, t.grad_accum)
                    if micro is None:
                        break
                    batch = self._place(self._stack(micro))
                    rng = jax.random.fold_in(base_key, self.step)
                    self.trainable, self.opt_state, m = self.step_fn(self.trainable, self.opt_state, self.frozen,
                                                                     batch, rng)
                    self.step += 1
                    speed.add(m["tokens"])  # the global label-token count, summed on device
                    bar.update(1)
                    if self.cadence.log(self.step):
                        loss = float(m["loss"])  # waits for the step: the throughput window ends here
                        lr = float(self.schedule(self.step - 1))
                        rate = speed.rate()
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                        **({"tok_s": f"{rate:.0f}"} if rate is not None else {}))
                        record = {"loss": loss, "lr": lr, "grad_norm": float(m["grad_norm"]), "epoch": self.epoch}
                        if rate is not None:
                            record["label_tokens_per_s"] = rate
                        log.write("train", self.step, record)
                    # One clock decides for every process, so all of them stop (and save) at the same step.
                    out_of_time = self.runtime.primary_decides(budget.exhausted())
                    done = self.step >= self.total_steps or out_of_time
                    # Validate before saving: the checkpoint then carries this validation's best and history.
                    if self.cadence.validate(self.step) and val_samples:
                        self._validate_adapter(val_samples, f"step {self.step}", log)
                        speed.restart()
                    if self.cadence.save(self.step) or done:
                        self.save_checkpoint(it.get_state())
                        speed.restart()
                    self.hooks.run_after_step(self.step)
                    if done:
                        stop = True
                        if out_of_time and self.runtime.is_primary:
                            print(f"\ntime budget of {t.time_budget_s:.0f}s reached at step {self.step}")
                        break
                if not stop:
                    if t.val_every == 0 and val_samples and self.last_val_step != self.step:
                        self._validate_adapter(val_samples, f"epoch {self.epoch + 1}", log)
                    self.epoch += 1
                    self.save_checkpoint(None, replace=True)  # the next epoch starts from a fresh iterator
                    speed.restart()
        finally:
            bar.close()
            log.close()
        if val_samples and self.last_val_step != self.step:
            self._validate_adapter(val_samples, "final", log=None)
            self.save_checkpoint(self.data_state, replace=True)  # a resumed finished run does not validate again
        self.save_adapter("adapter")
        self.store.close()
        return {"steps": self.step, "epochs_done": self.epoch, "best_mean_NDCG": self.best, **self.history}

    def _stack(self, micro: list[dict]) -> dict[str, np.ndarray]:
        """This process's micro-batches as [A, B_local, T]; with several processes T is agreed first, so the
        rows of all processes form one global array."""
        width = 0
        if self.runtime.process_count > 1:
            width = self.runtime.agree_max([max(b["input_ids"].shape[1] for b in micro)])[0]
        return stack_micro_batches(micro, self.data.pad_id(), width)


def trainable_leaves(trainer: SFTTrainer) -> list[np.ndarray]:
    """Host copies of the trainable params in a stable order (tests compare runs with it)."""
    return [np.asarray(x) for x in jax.tree.leaves(trainer.runtime.to_host(trainer.trainable))]
