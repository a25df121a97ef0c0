"""The RL loop (PPO or GRPO), built from the shared training layer (``reclm_jax.train``).

One iteration: ``rollout.prompts`` prompts -> ``sample_num`` responses each (``rollout.py``) -> token rewards
(the ``Scorer``, ``scoring.py``) -> old / reference log-probs and values (one jitted pass) -> advantages
(``ppo_step.make_prepare``) -> ``ppo.epochs`` epochs of shuffled mini-batch updates, stopped early once an
epoch's mean policy KL passes ``ppo.policy_kl_threshold`` -> KL controller update -> log, validate, checkpoint.

The learning rate is one value per iteration: ``lr_schedule(optim, total iterations)(iteration)`` (1-based), warm-up
then power-2 decay, as the original stepped its scheduler once per learn call. Shuffles and sampling seeds come
from (seed, iteration, epoch), the data position is (episode, prompts taken), so a checkpoint holds the whole
state: trainable parameters, optimiser state, KL controller, whitening moments, data position, iteration.

Outputs under ``output_dir`` (written by the primary process only)::

    config.yaml            the resolved config
    checkpoints/<it>/      Orbax: trainable params (adapters, value head), optimiser, KL coefficient, whitening
    adapter/               the actor adapter (LoRA + its lm_head copy; ``python -m reclm_jax.export`` merges it)
    critic/                PPO: the critic adapter and ``value_head.safetensors``
    best_adapter/          the actor with the best mean validation reward
    log.jsonl, tensorboard/  per-iteration reward, KL, clip fraction, value loss, entropy, lr, timings; validation
                           rewards and task metrics per task (``validation.py``)
    metrics.json           validation before training (the reference) and after the last validation (the actor)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from reclm_jax.atomic import write_json_atomic
from reclm_jax.errors import UserError
from reclm_jax.eval.generation_eval import validation_catalogue
from reclm_jax.models.adapter_io import save_adapter
from reclm_jax.models.tokenizer import load_tokenizer
from reclm_jax.rl.actor_critic import ACTOR, CRITIC, Roles, new_value_head
from reclm_jax.rl.advantages import WhiteningState
from reclm_jax.rl.config import RLConfig
from reclm_jax.rl.data import RLData, episode_order, prompt_ids
from reclm_jax.rl.kl_control import init_kl_control, update_kl_control
from reclm_jax.rl.ppo_step import Counter, UpdateBatch, make_prepare, make_update_step
from reclm_jax.rl.rollout import Rollout
from reclm_jax.rl.scoring import Scorer
from reclm_jax.rl.validation import KEPT, MetricsSource, log_record, validate_policy
from reclm_jax.train.backbone import load_backbone, resolve_model_path
from reclm_jax.train.cadence import Budget, Cadence, Hooks
from reclm_jax.train.checkpoint import CheckpointStore
from reclm_jax.train.optim import adamw_direction, lr_schedule
from reclm_jax.train.run_log import RunLog
from reclm_jax.train.run_start import start_run
from reclm_jax.train.runtime import Runtime
from reclm_jax.train.state import place_state

# Logged per iteration (means over the iteration's updates where they come from the update step).
UPDATE_METRICS = ("loss", "pg_loss", "value_loss", "entropy", "policy_kl", "approx_kl", "clip_frac",
                  "value_clip_frac", "ratio", "grad_norm")


class RLTrainer:
    """One RL run. ``run()`` trains to the end (episodes, ``max_iterations`` or the time budget).

    ``scorer``: a ``Scorer`` replacing the configured reward (tests use toy rewards); ``source``: a
    ``data.PromptSource`` replacing the configured prompts; ``val_samples``: replace the validation samples.
    ``runtime`` / ``hooks`` as SFT's trainer (``hooks.after_step(iteration)`` runs after each iteration's
    checkpoint). ``sync_timing``: wait for the old / reference log-probs before the reward is computed, so the
    iteration's times split cleanly (``time_logprobs`` apart; benchmarks); by default that pass runs while the
    host scores the responses.
    """

    def __init__(self, cfg: RLConfig, progress: bool = True, runtime: Runtime | None = None,
                 hooks: Hooks | None = None, scorer: Scorer | None = None, source: Any = None,
                 val_samples: Sequence[dict] | None = None, sync_timing: bool = False):
        self.cfg = cfg
        self.sync_timing = sync_timing
        r, p, t = cfg.rollout, cfg.ppo, cfg.train
        self._check(cfg)
        self.runtime = runtime or Runtime.create(cfg.mesh)
        self.hooks = hooks or Hooks()
        self.progress = progress and self.runtime.is_primary
        self.out = Path(cfg.output_dir)
        self.local_prompts = self.runtime.local_rows(r.prompts, "rollout.prompts")
        self.model_path = resolve_model_path(cfg.model.path)
        self.tokenizer = load_tokenizer(self.model_path, key="model.path")
        self.data = RLData(cfg, self.tokenizer) if source is None or scorer is None else None
        self.source = source if source is not None else self.data.source
        self.scorer = scorer if scorer is not None else self.data.scorer()
        self._val = list(val_samples) if val_samples is not None else (self.data.val_samples() if self.data else [])
        self.iterations_per_episode = len(self.source) // r.prompts
        if self.iterations_per_episode == 0:
            raise UserError(f"an episode has {len(self.source)} prompts, fewer than one iteration's "
                            f"rollout.prompts = {r.prompts}")
        self.total = self.iterations_per_episode * t.episodes
        if t.max_iterations > 0:
            self.total = min(self.total, t.max_iterations)
        self.rows = r.prompts * r.sample_num  # global rows per rollout
        self.micro = p.micro_batch_size or p.mini_batch_size
        self.accum = p.mini_batch_size // self.micro
        self.cadence = Cadence(log_every=t.log_every, save_every=t.save_every, val_every=t.val_every)

        adapters = {ACTOR: cfg.adapters.actor}
        if cfg.uses_critic:
            adapters[CRITIC] = cfg.adapters.critic
        full = {ACTOR: ("lm_head",)} if cfg.adapters.lm_head_full_tune else None
        self.backbone = load_backbone(cfg.model, adapters, self.runtime, seed=t.seed, full_tune=full,
                                      progress=self.progress)
        trainable: dict[str, Any] = {"lora": self.backbone.trainable}
        head_graphdef = None
        if cfg.uses_critic:
            hidden = self.backbone.model().config.hidden_size
            head_graphdef, trainable["value_head"] = new_value_head(hidden, cfg.adapters.value_head_inner,
                                                                    t.seed + 1000)
        self.roles = Roles(self.backbone.graphdef, head_graphdef)
        self.frozen = self.backbone.frozen
        self.tx = adamw_direction(cfg.optim)
        self.trainable, self.opt_state, shardings = place_state(trainable, self.tx.init(trainable), self.runtime)
        self.schedule = lr_schedule(cfg.optim, self.total)
        self.catalogue = self._catalogue()
        self.rollout = Rollout(self.roles, self.trainable, self.frozen, self.tokenizer, r, self.runtime,
                               critic=cfg.uses_critic, chunk=p.logprob_chunk, seed=t.seed, idx=cfg.data.idx,
                               catalogue=self.catalogue if r.constrained else None)
        self.prepare_traces, self.update_traces = Counter(), Counter()
        self.prepare = make_prepare(cfg, self.prepare_traces)
        self.update = make_update_step(self.roles, self.tx, cfg, state_shardings=shardings,
                                       counter=self.update_traces)
        self.kl_state = self.runtime.replicate(init_kl_control(p.kl))
        self.whitening = self.runtime.replicate(WhiteningState.zeros())
        self.store = CheckpointStore(self.out / "checkpoints", keep=t.keep_checkpoints)
        self.iteration = 0  # iterations done
        self.episode = 0
        self.offset = 0  # prompts of this episode taken so far
        self.best: float | None = None  # the best mean validation reward so far
        self.history: dict[str, Any] = {}
        self.last_val_step = -1
        self.last_metrics: dict[str, float] = {}

    def _catalogue(self):
        """The catalogue constrained rollouts and validation decode over (``rollout.constrained``,
        ``train.val_constrained``), built once per run from the task data; None when neither asks for it."""
        keys = _constrained_keys(self.cfg)
        if not keys:
            return None
        if self.data is None or self.data.ctx is None:
            raise UserError(f"{keys}: constrained decoding needs the run's task data (not a given prompt source)")
        return validation_catalogue(self.data.ctx, self.tokenizer, progress=self.progress)

    @staticmethod
    def _check(cfg: RLConfig) -> None:
        r, p = cfg.rollout, cfg.ppo
        if r.prompts < 1 or r.max_new_tokens < 1:
            raise UserError("rollout.prompts and rollout.max_new_tokens must be >= 1")
        if cfg.algorithm == "grpo" and r.sample_num < 2:
            raise UserError("algorithm grpo compares a group of responses per prompt: rollout.sample_num must be >= 2")
        if cfg.algorithm == "grpo" and cfg.grpo.item_weight and cfg.grpo.outcome != "last":
            raise UserError("grpo.item_weight > 0 takes the item rewards from the tokens before the last one: it "
                            "needs grpo.outcome=last")
        if p.epochs < 1 or p.mini_batch_size < 1 or p.micro_batch_size < 0:
            raise UserError("ppo.epochs and ppo.mini_batch_size must be >= 1, ppo.micro_batch_size >= 0")
        if p.micro_batch_size and p.mini_batch_size % p.micro_batch_size:
            raise UserError(f"ppo.micro_batch_size {p.micro_batch_size} must divide ppo.mini_batch_size "
                            f"{p.mini_batch_size}")
        keys = _constrained_keys(cfg)
        if keys and cfg.data.source != "tasks":
            raise UserError(f"{keys}: constrained decoding needs a dataset's catalogue, data.source=tasks")
        if keys and not cfg.data.idx:
            raise UserError(f"{keys}: constrained decoding writes numbered lists, data.idx=true")
        if p.reward_whitening == "rows" or p.advantage_whitening == "rows":
            if (r.prompts * r.sample_num) % p.whitening_rows:
                raise UserError(f"the rows whitening scope needs rollout.prompts x rollout.sample_num "
                                f"({r.prompts * r.sample_num}) to be a multiple of ppo.whitening_rows "
                                f"({p.whitening_rows})")

    # -- state ----------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"trainable": self.trainable, "opt_state": self.opt_state, "kl": self.kl_state,
                "whitening": self.whitening}

    def save_checkpoint(self, replace: bool = False) -> None:
        meta = {"iteration": self.iteration, "episode": self.episode, "offset": self.offset, "best": self.best,
                "history": self.history, "last_val_step": self.last_val_step}
        self.store.save(self.iteration, self._state(), meta, replace=replace)

    def restore_latest(self) -> bool:
        step = self.store.latest_step()
        if step is None:
            return False
        state, meta = self.store.restore(step, self._state())
        self.trainable, self.opt_state = state["trainable"], state["opt_state"]
        self.kl_state, self.whitening = state["kl"], state["whitening"]
        self.iteration, self.episode, self.offset = meta["iteration"], meta["episode"], meta["offset"]
        self.best, self.history = meta["best"], meta.get("history", {})
        self.last_val_step = meta.get("last_val_step", -1)
        return True

    def traces(self) -> dict[str, int]:
        """How often each jitted program was traced (= compiled) so far."""
        return {"sampler": self.rollout.sampler.traces, "stats": self.rollout.stats_traces,
                "prepare": self.prepare_traces.n, "update": self.update_traces.n}

    def host_trainable(self) -> dict:
        return self.runtime.to_host(self.trainable)

    def save_adapters(self, where: str = "adapter", critic: bool = True) -> None:
        """The actor adapter to ``where`` (and, with a critic, the critic adapter and value head to ``critic/``).
        A collective: the parameters are gathered on every process; the primary writes."""
        host = self.host_trainable()
        model = self.backbone.model(host["lora"])
        if not self.runtime.is_primary:
            return
        base = str(self.model_path)
        save_adapter(self.out / where, model, ACTOR, config=self.cfg.adapters.actor, base_model=base)
        if critic and self.cfg.uses_critic:
            from safetensors.numpy import save_file

            save_adapter(self.out / "critic", model, CRITIC, config=self.cfg.adapters.critic, base_model=base)
            flat = {".".join(str(k) for k in path): np.asarray(v) for path, v in
                    nnx.to_flat_state(host["value_head"])}
            save_file(flat, str(self.out / "critic" / "value_head.safetensors"))

    # -- one iteration --------------------------------------------------------------------------------
    def next_prompts(self) -> list[dict]:
        """This process's prompts of the next iteration; advances the data position."""
        n, per = len(self.source), self.cfg.rollout.prompts
        if self.offset + per > n:
            self.episode, self.offset = self.episode + 1, 0
        order = episode_order(n, self.cfg.train.seed, self.episode)
        take = order[self.offset:self.offset + per]
        self.offset += per
        mine = take[self.runtime.process_index * self.local_prompts:][:self.local_prompts]
        return self.source.take(self.episode, mine)

    def train_iteration(self, samples: list[dict]) -> dict[str, float]:
        cfg, p = self.cfg, self.cfg.ppo
        it = self.iteration + 1  # 1-based number of the iteration being run
        times = {}
        t0 = time.perf_counter()
        ids = prompt_ids(samples, self.tokenizer, cfg)
        self.rollout.sampler.update_params(self.trainable["lora"])  # the update step donated the old buffers
        traj = self.rollout.collect(self.trainable, self.frozen, samples, ids, it, stats=not self.sync_timing)
        times["time_rollout"] = time.perf_counter() - t0
        if self.sync_timing:
            t0 = time.perf_counter()
            traj.stats = jax.block_until_ready(self.rollout.stats(self.trainable, self.frozen, traj))
            times["time_logprobs"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = self.scorer(traj.samples, traj.texts, traj.response_ids)
        times["time_reward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with self.runtime.activate():
            adv, returns, self.whitening, prep = self.prepare(self.rollout.place_scores(traj, scores), traj.stats,
                                                              traj.action_mask, self.kl_state.coef, self.whitening)
        prep = {k: float(v) for k, v in jax.device_get(prep).items()}
        times["time_stats"] = time.perf_counter() - t0
        s = traj.stats
        batch = UpdateBatch(traj.tokens, traj.attention_mask, traj.action_mask, s.logp_old, s.logp_ref, s.values,
                            adv, returns)
        t0 = time.perf_counter()
        lr = float(self.schedule(it))
        sums: dict[str, float] = {}
        steps = epochs = 0
        for epoch in range(p.epochs):
            epoch_metrics = []
            for rows, valid in self._mini_batches(it, epoch):
                with self.runtime.activate():
                    self.trainable, self.opt_state, m = self.update(self.trainable, self.opt_state, self.frozen,
                                                                    batch, rows, valid, np.float32(lr))
                epoch_metrics.append(m)
            host = jax.device_get(epoch_metrics)
            for m in host:
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            steps += len(host)
            epochs += 1
            epoch_kl = float(np.mean([m["policy_kl"] for m in host]))
            if p.policy_kl_threshold > 0 and epoch_kl > p.policy_kl_threshold:
                break
        times["time_update"] = time.perf_counter() - t0
        self.kl_state = update_kl_control(p.kl, self.kl_state, prep["kl"], self.rows)
        record = {**prep, **{k: sums[k] / steps for k in UPDATE_METRICS if k in sums},
                  "kl_coef": float(self.kl_state.coef), "lr": lr, "epochs": epochs, "updates": steps,
                  "episode": self.episode, "stopped": float(np.mean(traj.stopped)), **times}
        record.update(self._task_rewards(traj.samples, scores))
        return record

    def _mini_batches(self, it: int, epoch: int):
        rows, valid = mini_batch_rows(self.rows, self.cfg.ppo.mini_batch_size, self.micro, self.cfg.train.seed,
                                      it, epoch)
        for r, v in zip(rows, valid):
            yield self.runtime.replicate(r), self.runtime.replicate(v)

    @staticmethod
    def _task_rewards(samples: Sequence[dict], scores: Sequence[np.ndarray]) -> dict[str, float]:
        by_task: dict[str, list[float]] = {}
        for s, r in zip(samples, scores):
            by_task.setdefault(s.get("task", "?"), []).append(float(np.sum(r)))
        if len(by_task) < 2:
            return {}
        return {f"reward/{task}": float(np.mean(v)) for task, v in by_task.items()}

    # -- validation -----------------------------------------------------------------------------------
    def validate(self, samples: list[dict], adapter: str | None, label: str, log: RunLog | None) -> dict:
        """Greedy responses to the validation samples: rewards and (RL tasks) task metrics per task, and the mean
        over tasks of the scorer's selection figure (NR-20.1: the list reward x10 on the last token, the
        original's RewardSum); see ``validation.validate_policy``."""
        self.rollout.sampler.update_params(self.trainable["lora"])
        res = validate_policy(self.rollout, self.tokenizer, self.cfg, self.scorer, samples, adapter,
                              self._metrics_source(), progress=self.progress, desc=f"validate ({label})",
                              catalogue=self.catalogue if self.cfg.train.val_constrained else None)
        if log is not None:
            log.write("val", self.iteration, log_record(res))
        return res

    def _metrics_source(self) -> MetricsSource | None:
        """The task metrics need the dataset's item index: RL tasks only (not the toy problem or given samples)."""
        ctx = self.data.ctx if self.data is not None else None
        return None if ctx is None else MetricsSource(ctx.index, ctx.raw.category2item, self.cfg.data.idx)

    def _validate_actor(self, label: str, log: RunLog | None) -> None:
        res = self.validate(self._val, ACTOR, label, log)
        self.history["after"] = {k: res[k] for k in KEPT if k in res}
        self.last_val_step = self.iteration
        if self.best is None or res["mean_reward"] > self.best:
            self.best = res["mean_reward"]
            self.save_adapters("best_adapter", critic=False)
        self._write_metrics()

    def _write_metrics(self) -> None:
        if self.runtime.is_primary:
            write_json_atomic(self.out / "metrics.json", self.history)

    # -- loop -----------------------------------------------------------------------------------------
    def run(self) -> dict:
        with self.runtime.activate():
            return self._run()

    def _run(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        resumed, log = start_run(cfg, self.out, self.runtime, self.restore_latest, self.progress)
        if t.val_before and not resumed and self._val:
            before = self.validate(self._val, None, "reference", log)
            self.history["before"] = {k: before[k] for k in KEPT if k in before}
            self._write_metrics()
        budget = Budget(t.time_budget_s)
        bar = log.bar(self.total, initial=self.iteration, desc=cfg.algorithm.upper(), unit="it")
        try:
            while self.iteration < self.total:
                record = self.train_iteration(self.next_prompts())
                self.iteration += 1
                self.last_metrics = record
                bar.update(1)
                if self.cadence.log(self.iteration):
                    bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl']:.3f}",
                                    clip=f"{record.get('clip_frac', 0.0):.2f}",
                                    vf=f"{record.get('value_loss', 0.0):.3f}", ent=f"{record['entropy']:.2f}")
                    log.write("train", self.iteration, record)
                out_of_time = self.runtime.primary_decides(budget.exhausted())
                done = self.iteration >= self.total or out_of_time
                if self.cadence.validate(self.iteration) and self._val:
                    self._validate_actor(f"iteration {self.iteration}", log)
                if self.cadence.save(self.iteration) or done:
                    self.save_checkpoint()
                self.hooks.run_after_step(self.iteration)
                if done:
                    if out_of_time and self.runtime.is_primary:
                        print(f"\ntime budget of {t.time_budget_s:.0f}s reached at iteration {self.iteration}")
                    break
        finally:
            bar.close()
            log.close()
        if self._val and self.last_val_step != self.iteration:
            self._validate_actor("final", log=None)
            self.save_checkpoint(replace=True)  # a resumed finished run does not validate again
        self.save_adapters("adapter")
        self.store.close()
        return {"iterations": self.iteration, "best_mean_reward": self.best, **self.history}


def _constrained_keys(cfg: RLConfig) -> str:
    """The settings that ask for constrained decoding, for messages ("" when none does)."""
    return " and ".join(k for k, on in (("rollout.constrained", cfg.rollout.constrained),
                                        ("train.val_constrained", cfg.train.val_constrained)) if on)


def mini_batch_rows(rows: int, mini_batch: int, micro_batch: int, seed: int, iteration: int,
                    epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The optimiser steps of one PPO epoch: (rows int32 [S, A, b], valid bool [S, A, b]) for S steps of A
    micro-batches of b = ``micro_batch`` rows (A * b = ``mini_batch``). A (seed, iteration, epoch) shuffle of the
    ``rows`` global rows, cut in order; the last step is filled with invalid entries (row 0, valid False)."""
    order = np.random.default_rng([seed, iteration, epoch]).permutation(rows)
    steps = -(-rows // mini_batch)
    idx = np.zeros(steps * mini_batch, np.int32)
    valid = np.zeros(steps * mini_batch, bool)
    idx[:rows], valid[:rows] = order, True
    shape = (steps, mini_batch // micro_batch, micro_batch)
    return idx.reshape(shape), valid.reshape(shape)


def trainable_leaves(trainer: RLTrainer) -> list[np.ndarray]:
    """Host copies of every trainable parameter in a stable order (tests compare runs with it)."""
    return [np.asarray(x) for x in jax.tree.leaves(trainer.host_trainable())]
