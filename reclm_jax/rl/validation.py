"""RL validation: greedy responses of the actor (or of the reference policy) to the validation samples, their
rewards per task and, for RL tasks of a dataset, the task metrics SFT's validation reports.

Decoding is ``eval.generation_eval.greedy_decode`` through the run's kept rollout ``Sampler`` (its prompts
tokenized as the policy sees them in training, ``rl.data.prompt_ids``; up to ``rollout.max_new_tokens`` new
tokens, the original's ``gen_max_length``). The texts are decoded as rollouts are (special tokens skipped, no
clean-up of spaces), scored by the run's ``Scorer`` and, given a ``MetricsSource``, by
``eval.generation_eval.generation_metrics``: the original's ``Metrics.add_sample`` per sample (``NDCG``,
``Recall`` and ``MRR`` at k = the item count, ``NonExistRate``, ``RepeatRate``, ``InHistoryRate``,
``CorrectCount``, ``TargetCategoryRate``, ``CategoryRateCorrect``, ...), with ``RewardSum`` = the NR-20.1 list
reward (x10), as the original's ``RL_val``. With the run's catalogue (``train.val_constrained``) every sample
decodes under its ``constraint_for_sample``, as SFT's constrained validation.

Per task the result holds ``reward`` (the mean of the summed token rewards), ``reward_last`` (the mean reward on
the last token: NR-20's list reward) and the metrics; ``mean_reward`` is the mean over tasks of the scorer's
selection figure (``reward_last`` for NR-20.1), by which the trainer keeps the best actor.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from reclm_jax.decoding import constraints_for_samples
from reclm_jax.eval.generation_eval import generation_metrics, greedy_decode, mean_metric
from reclm_jax.rl.config import RLConfig
from reclm_jax.rl.data import prompt_ids
from reclm_jax.rl.scoring import Scorer, score_with_list_rewards, selection_of

# What metrics.json keeps of a validation (the examples and the table are for the console and the log only).
KEPT = ("results", "ratios", "mean_reward", "mean_NDCG", "selection")


@dataclasses.dataclass(frozen=True)
class MetricsSource:
    """What the task metrics need: the run's item index and categories, and whether lists are numbered."""

    index: Any  # data.item_index.ItemIndex
    category2item: Mapping[str, Sequence[str]]
    idx: bool = True


def validate_policy(rollout: Any, tokenizer: Any, cfg: RLConfig, scorer: Scorer, samples: Sequence[dict],
                    adapter: str | None, metrics_source: MetricsSource | None = None, *, progress: bool = False,
                    desc: str = "validate", catalogue: Any = None) -> dict:
    """Validates ``adapter`` ("actor", or None = the reference) on ``samples``; see the module docstring.

    Returns ``{"results": {task: {"reward", "reward_last", metric...}}, "mean_reward", "selection"`` (the
    per-task key averaged into ``mean_reward``), and with a ``metrics_source`` also ``"ratios"`` (count metrics
    as fractions of the list), ``"mean_NDCG"`` and ``"table"`` (``Metrics.table``); ``"examples"``: the first
    three generated texts}``. ``catalogue``: a ``decoding.ConstrainedCatalogue`` to decode under."""
    samples = list(samples)
    ids = prompt_ids(samples, tokenizer, cfg)
    responses = greedy_decode(rollout.sampler, ids, adapter=adapter, max_new_tokens=cfg.rollout.max_new_tokens,
                              batch_size=cfg.train.val_batch_size, progress=progress, desc=desc, catalogue=catalogue,
                              constraints=constraints_for_samples(samples) if catalogue is not None else None)
    texts = rollout.decode(responses)
    scores, list_rewards = score_with_list_rewards(scorer, samples, texts, responses)
    per_task: dict[str, dict[str, list[float]]] = {}
    for s, r in zip(samples, scores):
        row = per_task.setdefault(s.get("task", "?"), {"reward": [], "reward_last": []})
        row["reward"].append(float(np.sum(r)))
        row["reward_last"].append(float(r[-1]) if len(r) else 0.0)
    results = {task: {k: float(np.mean(v)) for k, v in row.items()} for task, row in per_task.items()}
    key = "reward_last" if selection_of(scorer) == "last" else "reward"
    out: dict[str, Any] = {"results": results, "selection": key,
                           "mean_reward": float(np.mean([row[key] for row in results.values()])) if results else 0.0}
    if metrics_source is not None:
        m = generation_metrics(samples, texts, metrics_source.index, metrics_source.category2item,
                               idx=metrics_source.idx, list_rewards=list_rewards)
        for task, row in m.results().items():
            results[task].update(row)
        out.update(ratios=m.ratios(), mean_NDCG=mean_metric(m, "NDCG"), table=m.table())
    out["examples"] = [{"task": s.get("task"), "target": s.get("output_text"), "generated": g}
                       for s, g in list(zip(samples, texts))[:3]]
    return out


def log_record(res: dict) -> dict[str, float]:
    """The flat record a validation writes to the run log: means over tasks, then ``task/metric`` values."""
    rec = {k: res[k] for k in ("mean_reward", "mean_NDCG") if k in res}
    rec.update({f"{task}/{k}": v for task, row in res["results"].items() for k, v in row.items()})
    return rec
