"""Trains the SASRec teacher: ``python -m reclm_jax.teacher.train --config configs/teacher_ml1m.yaml
data_path=DIR output_dir=DIR``.

Full-softmax cross-entropy over all items, Adam, early stopping on valid NDCG@10 and LR halving on plateau
(the original's UniRec recipe). Writes the run folder described in ``checkpoint.py`` plus the run log
(``reclm_jax.train.run_log.RunLog``): ``<output_dir>/log.jsonl`` and TensorBoard scalars under
``<output_dir>/tensorboard``, with step = epoch: ``train`` (loss, lr) and ``valid`` (hr/ndcg@10/20) per epoch,
then ``final/<teacher|popularity>/<valid|test>`` at the best epoch. Prints valid/test HR@10/20 and NDCG@10/20 of
the best model next to the popularity baseline under the same protocol.

``train.max_minutes`` is a wall-clock budget for the whole run (loading included), checked after every step:
once spent, the epoch ends early, is validated, and training stops.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from reclm_jax.config import load_config, parse_stage_args, save_config
from reclm_jax.atomic import write_json_atomic
from reclm_jax.cli import run_main
from reclm_jax.datasets.raw import load_raw
from reclm_jax.errors import UserError
from reclm_jax.teacher.checkpoint import ITEMS_FILE, METRICS_FILE, save_params
from reclm_jax.teacher.config import TeacherConfig
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


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
    """A jitted pure step (params, rest, opt_state, history [B,W] int32, target [B] int32, weight [B] f32, key)
    -> (params, opt_state, mean loss). Rows with weight 0 are padding of the last batch."""

    def loss_fn(params, rest, history, target, weight, key):
        model = nnx.merge(graphdef, params, rest)
        scores = model(history, deterministic=False, rngs=nnx.Rngs(dropout=key))
        nll = jax.nn.logsumexp(scores, axis=1) - jnp.take_along_axis(scores, target[:, None], axis=1)[:, 0]
        return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)

    @jax.jit
    def step(params, rest, opt_state, history, target, weight, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, history, target, weight, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


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
    step = make_train_step(graphdef, tx)
    score = make_score_fn(graphdef)
    bs = min(tc.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / bs)
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
            perm = rng.permutation(n_train)
            losses = []
            with log.bar(steps_per_epoch, desc=f"epoch {epoch}") as bar:
                bar.leave = False  # a transient bar per epoch; the epoch's summary line below stays
                for b in range(steps_per_epoch):
                    idx = perm[b * bs:(b + 1) * bs]
                    weight = np.ones(bs, np.float32)
                    if len(idx) < bs:  # pad the last batch to the fixed shape; padded rows carry no weight
                        weight[len(idx):] = 0.0
                        idx = np.concatenate([idx, np.zeros(bs - len(idx), idx.dtype)])
                    params, opt_state, loss = step(params, rest, opt_state, splits.train_history[idx],
                                                   splits.train_target[idx], weight,
                                                   jax.random.fold_in(key, global_step))
                    losses.append(loss)
                    global_step += 1
                    bar.update()
                    if b % 50 == 0:  # reading the loss also keeps dispatch near the device (budget checks)
                        bar.set_postfix(loss=f"{float(loss):.4f}")
                    if out_of_time():  # validate what we have, then stop (an epoch can outlast the budget on CPU)
                        break
            train_loss = float(np.mean([float(x) for x in losses]))
            valid = evaluate(lambda h: score(params, rest, h), splits.valid, n_rows, eval_bs, KS)
            log.write("train", epoch, {"loss": train_loss, "lr": lr})
            log.write("valid", epoch, valid)
            history_log.append({"epoch": epoch, "loss": train_loss, "lr": lr, **valid})
            improved = valid[SELECT_METRIC] > best
            if improved:
                best, best_epoch, bad_epochs, plateau = valid[SELECT_METRIC], epoch, 0, 0
                best_params = jax.tree.map(np.asarray, params)
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
                           f"ndcg@10 {valid['ndcg@10']:.4f}  lr {lr:.2e}{'  *best' if improved else ''}")
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
    report = train(cfg)
    print(format_report(report))
    print(f"run folder: {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    run_main(main)
