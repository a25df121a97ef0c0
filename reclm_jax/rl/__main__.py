"""``python -m reclm_jax.rl --config configs/rl_X.yaml key=value ...``: PPO or GRPO (see ``trainer.py``).

Configs: configs/rl_smollm2_ml1m.yaml (the embedded default: the merged SFT SmolLM2 on MovieLens-1M),
configs/rl_llama2_7b_paper.yaml (the paper run's settings), configs/rl_tiny.yaml (tests: the toy problem).
Every key is a field of ``reclm_jax.rl.config.RLConfig`` (e.g. model.path=RUN/merged, train.max_iterations=N,
algorithm=grpo, data.train_data_file=RL_dataset_train.pickle, resume=true).
"""

from __future__ import annotations

from reclm_jax.cli import run_main
from reclm_jax.config import load_config, parse_stage_args
from reclm_jax.train.distributed import initialize
from reclm_jax.eval.compare import HEADLINE, before_after_table
from reclm_jax.rl.config import RLConfig
from reclm_jax.xla_flags import apply_xla_flags


def main() -> int:
    path, overrides = parse_stage_args(prog="python -m reclm_jax.rl", description=__doc__.split("\n\n", 1)[1])
    cfg = load_config(RLConfig, path, overrides)
    apply_xla_flags(cfg.mesh.xla_flags)  # the mesh preset's flags: before JAX starts its backend
    initialize(cfg.distributed)  # before anything touches a device: the other hosts' devices join the mesh
    import jax

    from reclm_jax.rl.trainer import RLTrainer  # imports jax: after the config is known to be valid

    summary = RLTrainer(cfg).run()
    if jax.process_index():  # the primary process reports; the others have written nothing
        return 0
    print(f"\n{cfg.algorithm.upper()} finished: {summary['iterations']} iterations, actor adapter in "
          f"{cfg.output_dir}/adapter")
    if "after" in summary:
        key = summary["after"].get("selection", "reward")  # the reward validation keeps the best actor by
        print(before_after_table(summary.get("before"), summary["after"],
                                 (key,) + tuple(m for m in HEADLINE if m != "RewardSum")))
    return 0


if __name__ == "__main__":
    run_main(main)
