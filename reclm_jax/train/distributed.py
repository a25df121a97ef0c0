"""``jax.distributed`` start-up for multi-host runs: one call at the top of every training stage's entry point.

Several processes (one per host, or one per GPU) form one JAX program: every process sees every device of the
mesh, builds the same jitted steps and feeds its own rows (``train.runtime.Runtime``). They find each other
through a coordinator (process 0's ``host:port``), and that must happen before anything touches a device: once a
backend exists, ``jax.distributed.initialize`` can no longer add the other processes' devices.

Where the settings come from, first match wins, key by key:

1. the stage config's ``distributed.*`` keys (``coordinator_address``, ``num_processes``, ``process_id``,
   ``local_device_ids``);
2. the environment: ``RECLM_JAX_COORDINATOR`` (``host:port``), ``RECLM_JAX_NUM_PROCESSES``,
   ``RECLM_JAX_PROCESS_ID``, ``RECLM_JAX_LOCAL_DEVICE_IDS`` (``0,1,2``), so one launcher line serves every stage
   (JAX's own ``JAX_COORDINATOR_ADDRESS`` and ``JAX_LOCAL_DEVICE_IDS`` are honoured too);
3. JAX's cluster detection (SLURM, Open MPI, Cloud TPU VMs, ...), exactly what ``jax.distributed.initialize()``
   with no arguments would find.

``distributed.mode``: ``auto`` (the default) starts the distributed runtime when 1 or 2 give a coordinator or
more than one process, or 3 finds a cluster of more than one process, and otherwise runs as one process, as
before; ``always`` always calls ``jax.distributed.initialize`` (a single-process cluster included); ``never``
never does (the launcher's variables are ignored).

On CPU, cross-process collectives need an implementation: jax 0.10.2's default
(``jax_cpu_collectives_implementation``) is already ``gloo``, which the two-process test runs on; it is set to
``gloo`` here only if a user's configuration left it empty (``none`` would hang the first cross-process sum).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal, Mapping

from reclm_jax.errors import UserError

ENV_COORDINATOR = "RECLM_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "RECLM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "RECLM_JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "RECLM_JAX_LOCAL_DEVICE_IDS"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """The ``distributed`` section of a stage config; every value unset means "from the environment"."""

    mode: Literal["auto", "always", "never"] = "auto"  # not on/off: YAML reads those as booleans
    coordinator_address: str = ""  # process 0's host:port, the same on every process
    num_processes: int = 0  # 0: unset
    process_id: int = -1  # -1: unset; 0 .. num_processes - 1, process 0 is the primary (writes the run's files)
    local_device_ids: tuple[int, ...] = ()  # this process's accelerators; (): JAX's default (all, or per launcher)
    timeout_s: int = 300  # how long process 0 waits for the others (and they for it) at start-up


@dataclasses.dataclass(frozen=True)
class Launch:
    """What ``resolve`` decided: ``via`` names the source ("config/env", a JAX cluster class, or "single")."""

    distributed: bool
    via: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def _env_ids(env: Mapping[str, str], name: str) -> tuple[int, ...] | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return tuple(int(x) for x in raw.split(","))
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not a comma-separated list of device ids") \
            from None


def detect_cluster() -> tuple[str, int] | None:
    """(cluster class name, its process count) of the launcher JAX detects (SLURM, Open MPI, Cloud TPU, ...),
    or None. JAX has no public query for this (``jax.distributed.initialize()`` raises when nothing is found, and
    on a plain machine we must not start a coordinator at all), so this asks JAX's own cluster registry."""
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:  # a jax that moved its registry: only explicit settings start the distributed runtime
        return None
    for env in ClusterEnv._cluster_types:
        if env.opt_in_only_method:  # mpi4py: only when asked for by name, as JAX does
            continue
        try:
            if env.is_env_present():
                return env.__name__, int(env.get_process_count())
        except Exception:  # a half-configured launcher (e.g. a TPU metadata query failing): not a cluster
            continue
    return None


def resolve(cfg: DistributedConfig, env: Mapping[str, str] | None = None, cluster=detect_cluster) -> Launch:
    """The launch this process is part of, from ``cfg``, ``env`` (default ``os.environ``) and ``cluster()``.

    Raises ``UserError`` naming the key or variable for values that cannot describe a launch."""
    env = os.environ if env is None else env
    if cfg.mode == "never":
        return Launch(False, "never")
    address = cfg.coordinator_address or env.get(ENV_COORDINATOR, "") or env.get("JAX_COORDINATOR_ADDRESS", "")
    count = cfg.num_processes if cfg.num_processes > 0 else _env_int(env, ENV_NUM_PROCESSES)
    pid = cfg.process_id if cfg.process_id >= 0 else _env_int(env, ENV_PROCESS_ID)
    ids = cfg.local_device_ids or _env_ids(env, ENV_LOCAL_DEVICE_IDS)
    if cfg.num_processes < 0 or (count is not None and count < 1):
        raise UserError(f"distributed.num_processes ({ENV_NUM_PROCESSES}) must be >= 1, got {count}")
    if address and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise UserError(f"distributed.coordinator_address ({ENV_COORDINATOR}) must be host:port, got {address!r}")
    if count is not None and pid is not None and not 0 <= pid < count:
        raise UserError(f"distributed.process_id ({ENV_PROCESS_ID}) must be in 0..{count - 1}, got {pid}")
    explicit = bool(address) or (count is not None and count > 1)
    if explicit:
        if count is None or pid is None or not address:
            found = cluster()  # the launcher may supply the rest (e.g. SLURM's task id with a given address)
            if found is None:
                missing = [k for k, v in (("coordinator_address", address), ("num_processes", count),
                                          ("process_id", pid)) if v in (None, "")]
                raise UserError("a multi-process launch needs distributed." + ", distributed.".join(missing) +
                                f" (or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), or a "
                                "launcher JAX detects (SLURM, Open MPI, Cloud TPU)")
        return Launch(True, "config/env", address or None, count, pid, ids)
    if cfg.mode == "always":
        return Launch(True, "jax", None, count, pid, ids)
    if count == 1:
        return Launch(False, "single")
    found = cluster()
    if found is not None and found[1] > 1:
        return Launch(True, found[0], None, None, None, ids)
    return Launch(False, "single")


def initialize(cfg: DistributedConfig = DistributedConfig(), env: Mapping[str, str] | None = None) -> Launch:
    """Starts ``jax.distributed`` when ``resolve`` says so (once per process; a second call is a no-op).

    Call it before anything touches a device (the stage entry points do, right after reading the config). Prints
    one line on process 0 when the run is distributed."""
    launch = resolve(cfg, env)
    if not launch.distributed:
        return launch
    import jax

    if jax.distributed.is_initialized():
        return launch
    if not jax.config.jax_cpu_collectives_implementation:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=launch.coordinator_address,
                                   num_processes=launch.num_processes, process_id=launch.process_id,
                                   local_device_ids=list(launch.local_device_ids) if launch.local_device_ids else None,
                                   initialization_timeout=cfg.timeout_s)
    except (ValueError, TypeError) as e:  # JAX's own checks of the values (none found, out of range)
        raise UserError(f"distributed: {e}") from None
    except Exception as e:  # noqa: BLE001 (jaxlib raises XlaRuntimeError): a peer never came or the port is taken
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "before any JAX" in text or "already initialized" in text:
            raise  # a bug in the entry point: a device was touched first
        raise UserError(f"distributed: could not join the coordinator at {launch.coordinator_address or '(auto)'} "
                        f"within distributed.timeout_s={cfg.timeout_s}s: {text}") from None
    if jax.process_index() == 0:
        print(f"distributed: {jax.process_count()} processes, {jax.device_count()} devices "
              f"({jax.local_device_count()} here), via {launch.via}", flush=True)
    return launch


def refuse_multi_process(stage: str, env: Mapping[str, str] | None = None) -> None:
    """For single-process stages (the teacher's training): a ``UserError`` when the launcher started several
    processes, which would all write the same run folder."""
    launch = resolve(DistributedConfig(), env)
    if launch.distributed:
        raise UserError(f"{stage} runs as one process, but this launch has several ({launch.via}); start it once, "
                        f"on one host (it trains a small model and needs no cluster)")
