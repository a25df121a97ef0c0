"""A preset's XLA flags join XLA_FLAGS; the launch environment's own value of a flag wins."""

from reclm_jax.xla_flags import apply_xla_flags, merged_xla_flags

PRESET = ("--xla_gpu_enable_latency_hiding_scheduler=true", "--xla_gpu_all_gather_combine_threshold_bytes=134217728")


def test_flags_are_added_once_and_the_user_s_value_wins():
    env = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/d"}
    out = apply_xla_flags(PRESET, env)
    assert env["XLA_FLAGS"] == out
    assert out.split() == ["--xla_gpu_enable_latency_hiding_scheduler=false", "--xla_dump_to=/tmp/d",
                           "--xla_gpu_all_gather_combine_threshold_bytes=134217728"]
    assert apply_xla_flags(PRESET, env) == out  # applying again changes nothing


def test_no_flags_leave_the_environment_alone():
    env = {}
    assert apply_xla_flags((), env) == "" and "XLA_FLAGS" not in env
    assert merged_xla_flags("", PRESET).split() == list(PRESET)
