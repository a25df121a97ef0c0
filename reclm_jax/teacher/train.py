"""Trains the SASRec teacher: ``python -m reclm_jax.teacher.train --config configs/teacher_ml1m.yaml
data_path=DIR output_dir=DIR``.

Full-softmax cross-entropy over all items, Adam, early stopping on valid NDCG@10 and LR halving on plateau
(the original's UniRec recipe). Writes the run folder described in ``checkpoint.py`` plus the run log
(``reclm_jax.train.run_log.RunLog``): ``<output_dir>/log.jsonl`` and TensorBoard scalars under
``<output_dir>/tensorboard``, with step = epoch: ``train`` (loss, lr, and the wall seconds of the epoch's training
and of its validation: train_seconds, valid_seconds) and ``valid`` (hr/ndcg@10/20) per epoch, then
``final/<teacher|popularity>/<valid|test>`` at the best epoch. Prints valid/test HR@10/20 and NDCG@10/20 of
the best model next to the popularity baseline under the same protocol.

``train.max_minutes`` is a wall-clock budget for the whole run (loading included), checked after every chunk of
``train.steps_per_call`` steps (one dispatch): once spent, the epoch ends early, is validated, and training stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from reclm_jax.config import load_config, parse_stage_args, save_config
from reclm_jax.train.distributed import refuse_multi_process
from reclm_jax.atomic import write_json_atomic
from reclm_jax.cli import run_main
from reclm_jax.datasets.raw import load_raw
from reclm_jax.errors import UserError
from reclm_jax.teacher.checkpoint import ITEMS_FILE, METRICS_FILE, save_params
from reclm_jax.teacher.config import TeacherConfig, resolve_matmul_dtype
from reclm_jax.teacher.metrics import evaluate, popularity_score_fn
from reclm_jax.teacher.sasrec import SASRec
from reclm_jax.teacher.splits import build_splits
from reclm_jax.train.cadence import Budget
from reclm_jax.train.run_log import RunLog

KS = (10, 20)
LOG_FILE = "log.jsonl"  # what RunLog writes in the run folder
SELECT_METRIC = "ndcg@10"


def make_optimizer(cfg: TeacherConfig) -> optax.GradientTransformation:
    """Adam with the learning rate as state (so plateau halving needs no recompile) and torch-style L2."""

    def build(learning_rate):
        parts = [optax.add_decayed_weights(cfg.train.weight_decay)] if cfg.train.weight_decay else []
        return optax.chain(*parts, optax.adam(learning_rate))

    return optax.inject_hyperparams(build)(learning_rate=cfg.train.lr)


def make_train_steps(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, steps_per_call: int):
    """A jitted pure function that runs up to ``steps_per_call`` optimiser steps in one dispatch:

        (params, rest, opt_state, history [E, W] int32, target [E] int32, order [S, B] int32, weight [S, B] f32,
         key, step0, start, count) -> (params, opt_state, losses [steps_per_call] f32)

    Step ``i < count`` trains on the rows ``order[start + i]`` of the device-resident examples, with the dropout
    key ``fold_in(key, step0 + i)``; ``losses[:count]`` are their mean losses. Rows with weight 0 pad the last
    batch. One dispatch per chunk, not per step, because XLA:CPU allocates (and the kernel zero-fills) a step's
    temporaries on every call, about 200 MB for the MovieLens configs; inside one call the loop reuses them. ``count`` is traced, so a short
    last chunk compiles nothing new. params and opt_state are donated: their buffers are updated in place.
    """

    def loss_fn(params, rest, history, target, weight, key):
        model = nnx.merge(graphdef, params, rest)
        scores = model(history, deterministic=False, rngs=nnx.Rngs(dropout=key))
        nll = jax.nn.logsumexp(scores, axis=1) - jnp.take_along_axis(scores, target[:, None], axis=1)[:, 0]
        return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)

    @partial(jax.jit, donate_argnums=(0, 2))
    def steps(params, rest, opt_state, history, target, order, weight, key, step0, start, count):
        def body(i, carry):
            params, opt_state, losses = carry
            rows = order[start + i]
            loss, grads = jax.value_and_grad(loss_fn)(params, rest, history[rows], target[rows], weight[start + i],
                                                      jax.random.fold_in(key, step0 + i))
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, losses.at[i].set(loss)

        losses = jnp.zeros(steps_per_call, jnp.float32)
        return jax.lax.fori_loop(0, count, body, (params, opt_state, losses))

    return steps


def epoch_order(perm: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A permutation of the E examples -> (rows int32 [S, B], weight f32 [S, B]), S = ceil(E / B): batch s is
    ``perm[s*B:(s+1)*B]``; the last one is padded with row 0 at weight 0."""
    n_steps = math.ceil(len(perm) / batch_size)
    rows = np.zeros(n_steps * batch_size, np.int32)
    rows[:len(perm)] = perm
    weight = np.zeros(n_steps * batch_size, np.float32)
    weight[:len(perm)] = 1.0
    return rows.reshape(n_steps, batch_size), weight.reshape(n_steps, batch_size)


def make_score_fn(graphdef: nnx.GraphDef):
    """Jitted (params, rest, history [B,W] int32) -> scores float32 [B, n_items+1] (no dropout)."""

    @jax.jit
    def scores(params, rest, history):
        return nnx.merge(graphdef, params, rest)(history)

    return scores


def train(cfg: TeacherConfig) -> dict:
    """Runs training and the final evaluation; returns the report written to metrics.json."""
    if not cfg.data_path:
        raise UserError("data_path is not set: pass data_path=DIR (the raw dataset folder)")
    if not cfg.output_dir:
        raise UserError("output_dir is not set: pass output_dir=DIR")
    t0 = time.time()
    budget = time_budget(cfg.train.max_minutes)  # the whole run as the user sees it: loading and compiles too
    raw = load_raw(cfg.data_path, item_index="id")
    items = raw.items
    item_row = {item: k + 1 for k, item in enumerate(items)}
    window = cfg.model.window
    splits = build_splits(raw.sequential, item_row, window)
    n_rows = len(items) + 1
    n_train = len(splits.train_target)
    if n_train == 0:
        raise UserError(f"{cfg.data_path}: no training examples (every sequence has fewer than 4 items)")

    # The run records the products it used (a later load on another machine rebuilds the same model).
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, matmul_dtype=resolve_matmul_dtype(cfg.model.matmul_dtype)))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).unlink(missing_ok=True)  # a stale report must not make a new, unfinished run look done
    (out / LOG_FILE).unlink(missing_ok=True)  # every run starts from scratch, so its log holds this run only
    save_config(cfg, out)
    write_json_atomic(out / ITEMS_FILE, items)

    tc = cfg.train
    model = SASRec(len(items), cfg.model, nnx.Rngs(params=tc.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(cfg)
    opt_state = tx.init(params)
    chunk = max(1, tc.steps_per_call)
    run_steps = make_train_steps(graphdef, tx, chunk)
    score = make_score_fn(graphdef)
    bs = min(tc.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / bs)
    # The examples go to the device once; each epoch sends only its order of rows.
    train_history, train_target = jnp.asarray(splits.train_history), jnp.asarray(splits.train_target)
    eval_bs = min(tc.eval_batch_size, len(splits.valid))
    rng = np.random.default_rng(tc.seed)
    key = jax.random.key(tc.seed)

    print(f"teacher: {len(raw.sequential):,} users, {len(items):,} items, {n_train:,} training examples, "
          f"{steps_per_epoch} steps/epoch of {bs}")
    best, best_epoch, best_params = -1.0, -1, None
    bad_epochs = plateau = 0
    lr = tc.lr
    global_step = 0
    history_log = []

    def out_of_time() -> bool:
        return budget is not None and budget.exhausted()

    with contextlib.closing(RunLog(out, primary=True, tensorboard=True, progress=tc.progress)) as log:
        for epoch in range(1, tc.max_epochs + 1):
            order, weight = (jnp.asarray(a) for a in epoch_order(rng.permutation(n_train), bs))
            losses = []
            epoch_start = time.perf_counter()
            with log.bar(steps_per_epoch, desc=f"epoch {epoch}") as bar:
                bar.leave = False  # a transient bar per epoch; the epoch's summary line below stays
                while len(losses) < steps_per_epoch:
                    count = min(chunk, steps_per_epoch - len(losses))
                    params, opt_state, chunk_losses = run_steps(params, rest, opt_state, train_history,
                                                                train_target, order, weight, key, global_step,
                                                                len(losses), count)
                    losses.extend(np.asarray(chunk_losses)[:count].tolist())  # waits for the chunk
                    global_step += count
                    bar.update(count)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                    if out_of_time():  # validate what we have, then stop (an epoch can outlast the budget on CPU)
                        break
            train_loss = float(np.mean(losses))
            valid_start = time.perf_counter()
            valid = evaluate(lambda h: score(params, rest, h), splits.valid, n_rows, eval_bs, KS)
            seconds = {"train_seconds": round(valid_start - epoch_start, 3),
                       "valid_seconds": round(time.perf_counter() - valid_start, 3)}
            log.write("train", epoch, {"loss": train_loss, "lr": lr, **seconds})
            log.write("valid", epoch, valid)
            history_log.append({"epoch": epoch, "loss": train_loss, "lr": lr, **valid})
            improved = valid[SELECT_METRIC] > best
            if improved:
                best, best_epoch, bad_epochs, plateau = valid[SELECT_METRIC], epoch, 0, 0
                best_params = jax.tree.map(np.array, params)  # a copy: the next chunk donates params
                nnx.update(model, best_params)
                save_params(model, out)
            else:
                bad_epochs += 1
                plateau += 1
                if plateau > tc.lr_plateau_patience and lr > tc.min_lr:  # torch ReduceLROnPlateau semantics
                    lr = max(lr * tc.lr_factor, tc.min_lr)
                    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
                    plateau = 0
            if log.progress:
                tqdm.write(f"epoch {epoch}: loss {train_loss:.4f}  valid hr@10 {valid['hr@10']:.4f} "
                           f"ndcg@10 {valid['ndcg@10']:.4f}  lr {lr:.2e}  {seconds['train_seconds']:.1f}+"
                           f"{seconds['valid_seconds']:.1f} s{'  *best' if improved else ''}")
            if bad_epochs >= tc.early_stop_patience:
                break
            if out_of_time():
                if log.progress:
                    tqdm.write(f"stopping: time budget of {tc.max_minutes} minutes spent")
                break
        train_seconds = time.time() - t0

        assert best_params is not None
        report = {
            "best_epoch": best_epoch,
            "epochs_run": len(history_log),
            "train_seconds": round(train_seconds, 1),
            "users": len(raw.sequential),
            "items": len(items),
            "train_examples": n_train,
            **final_metrics(lambda h: score(best_params, rest, h), splits, n_rows, eval_bs),
            "history": history_log,
        }
        for who in ("teacher", "popularity"):
            for split_name, m in report[who].items():
                log.write(f"final/{who}/{split_name}", best_epoch, m)
    write_json_atomic(out / METRICS_FILE, report)
    return report


def time_budget(max_minutes: float | None) -> Budget | None:
    """``train.max_minutes`` as a ``Budget`` started now (None: no budget). ``Budget`` reads 0 seconds as no
    budget; 0 (or fewer) minutes here means no time at all, as it always did: stop after the first step."""
    if max_minutes is None:
        return None
    return Budget(max(60.0 * max_minutes, 1e-9))


def final_metrics(score_fn, splits, n_rows: int, batch_size: int) -> dict:
    """HR/NDCG@10/20 of ``score_fn`` and of the popularity baseline on valid and test."""
    splits_by_name = (("valid", splits.valid), ("test", splits.test))
    return {
        "teacher": {name: evaluate(score_fn, sp, n_rows, batch_size, KS) for name, sp in splits_by_name},
        "popularity": {name: evaluate(popularity_score_fn(splits.item_counts), sp, n_rows, batch_size, KS)
                       for name, sp in splits_by_name},
    }


def format_report(report: dict) -> str:
    cols = [f"{m}@{k}" for m in ("hr", "ndcg") for k in KS]
    lines = [f"{'model':<12}{'split':<7}" + "".join(f"{c:>10}" for c in cols)]
    for who in ("teacher", "popularity"):
        for split_name in ("valid", "test"):
            m = report[who][split_name]
            lines.append(f"{who:<12}{split_name:<7}" + "".join(f"{m[c]:>10.4f}" for c in cols))
    if "best_epoch" in report:
        lines.append(f"best epoch {report['best_epoch']} of {report['epochs_run']}; "
                     f"{report['train_seconds']:.0f} s in total")
    return "\n".join(lines)


def main() -> int:
    path, overrides = parse_stage_args(prog="python -m reclm_jax.teacher.train")
    cfg = load_config(TeacherConfig, path, overrides)
    refuse_multi_process("python -m reclm_jax.teacher.train")  # N processes would write one run folder
    report = train(cfg)
    print(format_report(report))
    print(f"run folder: {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    run_main(main)
