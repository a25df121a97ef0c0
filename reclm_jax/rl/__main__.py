"""``python -m reclm_jax.rl --config configs/rl_X.yaml key=value ...``: PPO or GRPO (see ``trainer.py``)."""

from __future__ import annotations

from reclm_jax.cli import run_main
from reclm_jax.config import load_config, parse_stage_args
from reclm_jax.rl.config import RLConfig


def _table(before: dict | None, after: dict) -> str:
    key = after.get("selection", "reward")
    tasks = sorted(set(after["results"]) | set((before or {}).get("results", {})))
    lines = [f"{'task':<36} {'before':>10} {'after':>10}   ({key})"]
    for task in tasks:
        b = (before or {}).get("results", {}).get(task, {}).get(key)
        a = after["results"].get(task, {}).get(key)
        lines.append(f"{task:<36} {'' if b is None else f'{b:10.4f}':>10} {'' if a is None else f'{a:10.4f}':>10}")
    b = (before or {}).get("mean_reward")
    lines.append(f"{'mean over tasks':<36} {'' if b is None else f'{b:10.4f}':>10} {after['mean_reward']:10.4f}")
    return "\n".join(lines)


def main() -> int:
    path, overrides = parse_stage_args(prog="python -m reclm_jax.rl")
    cfg = load_config(RLConfig, path, overrides)
    from reclm_jax.rl.trainer import RLTrainer  # imports jax: after the config is known to be valid

    summary = RLTrainer(cfg).run()
    print(f"\n{cfg.algorithm.upper()} finished: {summary['iterations']} iterations, actor adapter in "
          f"{cfg.output_dir}/adapter")
    if "after" in summary:
        print(_table(summary.get("before"), summary["after"]))
    return 0


if __name__ == "__main__":
    run_main(main)
