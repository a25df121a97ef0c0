"""What the PPO-iteration benchmarks share: the config they run, synthetic prompts, and the trainer's own iteration
timed phase by phase (``rl_step.py`` on the CPU against transformers, ``gpu_ppo.py`` on an accelerator).

Both run ``RLTrainer.train_iteration`` with ``sync_timing`` (each phase waits for its device work), first a
warm-up iteration that compiles, then timed ones; compile time per phase = the warm-up's time minus the median
timed iteration's (``compile_split``). Imports only the standard library at module level, so a parent process
that never touches JAX can import it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "rl_smollm2_ml1m.yaml"  # the paper run's PPO settings
PHASES = ("rollout", "reward", "logprobs", "update")
_WORDS = ("Silent", "River", "Night", "Crimson", "Garden", "Iron", "Summer", "Empire", "Lost", "City", "Star",
          "Heart", "Shadow", "Winter", "Golden", "Road", "Storm", "Island", "Secret", "Dream", "Fire", "Ocean")


def rl_overrides(args: Any, work: Path) -> list[str]:
    """The config's overrides: configs/rl_smollm2_ml1m.yaml with the benchmark's sizes and data.

    ``args`` has ``model`` (folder), ``prompts``, ``samples``, ``new_tokens``, ``prompt_len`` and optionally
    ``data_path`` / ``teacher_checkpoint`` (real RL prompts and the NR-20.1 reward); without them, synthetic
    prompts capped at ``prompt_len`` tokens in one bucket and the toy token reward. One response bucket of
    ``new_tokens``, so no shape changes between iterations."""
    o = [f"model.path={args.model}", f"output_dir={work / 'rl_run'}", f"rollout.prompts={args.prompts}",
         f"rollout.sample_num={args.samples}", f"rollout.max_new_tokens={args.new_tokens}",
         f"rollout.response_buckets=[{args.new_tokens},{2 * args.new_tokens}]", "optim.warmup_steps=0",
         "train.val_before=false"]
    if getattr(args, "data_path", None):  # the config's prompt lengths (left-truncated to 512)
        return o + [f"data_path={args.data_path}", f"teacher.checkpoint={args.teacher_checkpoint}"]
    cap = max(args.prompt_len, 64)
    return o + [f"rollout.max_prompt_length={cap}", f"rollout.prompt_buckets=[{cap}]", "data.source=toy",
                "reward.kind=toy_tokens", "rollout.trajectory=sampled", "data.val_tasks=[]"]


def synthetic_samples(tokenizer, n: int, prompt_len: int, seed: int = 0) -> list[dict]:
    """``n`` recommendation prompts of made-up titles, each grown to about ``prompt_len`` tokens (chat template)."""
    import numpy as np

    from reclm_jax.rl.toy import TOY_TASK

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        titles: list[str] = []
        while True:
            text = ("Here is the watching history of a user: " + ", ".join(titles) + ". Please recommend 10 movies "
                    "the user will watch next, one title per line, numbered.")
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                   add_generation_prompt=True) if tokenizer.chat_template else text
            if len(tokenizer(prompt)["input_ids"]) >= prompt_len - 12 or len(titles) > 200:
                break
            words = rng.choice(len(_WORDS), size=int(rng.integers(1, 4)), replace=False)
            titles.append(f"The {' '.join(_WORDS[w] for w in words)} ({int(rng.integers(1930, 2020))})")
        out.append({"task": TOY_TASK, "input_text": prompt, "output_text": "", "input_field_data": {"index": i}})
    return out


class CountingScorer:
    """A ``Scorer`` that passes through to ``scorer`` and counts the response tokens it is given: the tokens the
    rollout generated (each response up to and including its stop token), which the iteration's record lacks."""

    def __init__(self, scorer):
        self.scorer, self.selection, self.tokens = scorer, getattr(scorer, "selection", "sum"), 0

    def __call__(self, samples: Sequence[dict], texts: Sequence[str], token_ids: Sequence[Sequence[int]]):
        self.tokens = sum(len(ids) for ids in token_ids)
        return self.scorer(samples, texts, token_ids)


def run_iterations(trainer, samples: list[dict], n: int) -> list[dict]:
    """``n`` iterations of ``trainer`` (an ``RLTrainer`` built with ``sync_timing=True``) on the same ``samples``:
    per iteration its phase seconds (``PHASES``; logprobs includes the advantages' small pass), optimiser
    updates, programs compiled during it, mean reward, and generated tokens when the scorer is a
    ``CountingScorer`` (else None)."""
    out = []
    for _ in range(n):
        traces = sum(trainer.traces().values())
        t = time.perf_counter()
        rec = trainer.train_iteration(samples)
        wall = time.perf_counter() - t
        trainer.iteration += 1
        out.append({"rollout": rec["time_rollout"], "reward": rec["time_reward"],
                    "logprobs": rec["time_logprobs"] + rec["time_stats"], "update": rec["time_update"],
                    "wall": wall, "updates": rec["updates"], "epochs": rec["epochs"],
                    "compiled": sum(trainer.traces().values()) - traces, "reward_mean": rec["reward"],
                    "tokens": getattr(trainer.scorer, "tokens", None)})
    return out


def compile_split(iterations: list[dict]) -> dict[str, float | None]:
    """Per phase: the first (warm-up) iteration's seconds minus the median of the later ones'; None without any."""
    first, steady = iterations[0], iterations[1:]
    return {p: None if not steady else round(first[p] - statistics.median(it[p] for it in steady), 2)
            for p in PHASES}


def median(xs: Sequence, digits: int | None = None) -> float | None:
    """The median of the values that are not None (None if there are none), rounded to ``digits`` if given."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    m = statistics.median(xs)
    return m if digits is None else round(m, digits)


def timed_summary(timed: Sequence[dict], digits: int | None = None) -> dict:
    """``run_iterations`` records of the timed iterations -> the median of each phase, of the iteration (the
    phases' sum) and of the optimiser updates, and how many programs compiled while timed (should be 0)."""
    return {"phases_s": {p: median([it[p] for it in timed], digits) for p in PHASES},
            "iteration_s": median([sum(it[p] for p in PHASES) for it in timed], digits),
            "updates": median([it["updates"] for it in timed], digits),
            "recompiled_in_timed_iterations": sum(it["compiled"] for it in timed)}


def dash(x, fmt: str = "{:.2f}") -> str:
    """A figure for a printed line: ``fmt`` of it, or a dash when there is none."""
    return "–" if x is None else fmt.format(x)
