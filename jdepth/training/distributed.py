"""Multi-process (multi-host) runs: who this process is, and `jax.distributed.initialize`.

A run of N processes trains one model on one global batch: each process feeds its slice of every
batch (jdepth/data/pipeline.py `shard_sliced`) to one jitted step over a mesh of all processes'
devices (jdepth/training/parallel.py), process 0 alone writes logs, config.json and evaluations,
and orbax writes each checkpoint once (jdepth/training/checkpoint.py). README, "Multi-host
training".

Where the process layout comes from, first match wins:
  1. `config.distributed.{coordinator_address, num_processes, process_id}` when num_processes > 0;
  2. the environment: JDEPTH_NUM_PROCESSES, JDEPTH_PROCESS_ID, JDEPTH_COORDINATOR_ADDRESS (what
     tools/launch_local.py sets; JAX's own JAX_COORDINATOR_ADDRESS also works for the address);
  3. a SLURM job step of several tasks (`srun`): JAX's cluster detection reads SLURM_NTASKS,
     SLURM_PROCID and the first node of SLURM_STEP_NODELIST itself;
  4. otherwise one process, and `jax.distributed` is not started at all.

`initialize` must run before anything touches a JAX device: the backend is created with the
distributed client, and JAX refuses to start it afterwards.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

ENV_NUM_PROCESSES = "JDEPTH_NUM_PROCESSES"
ENV_PROCESS_ID = "JDEPTH_PROCESS_ID"
ENV_COORDINATOR = "JDEPTH_COORDINATOR_ADDRESS"
# What JAX's SLURM detection needs (jax/_src/clusters/slurm_cluster.py); SLURM_STEP_NODELIST is
# only set inside an `srun` step, so an sbatch script's own shell stays a single process.
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
              "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Layout:
    """The arguments of `jax.distributed.initialize`; None leaves one to JAX's detection.

    Attributes:
      source: 'config', 'environment' or 'slurm' (for the start-up line).
    """

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None
    source: str


def _device_ids(text) -> tuple[int, ...] | None:
    text = str(text or "").strip()
    return tuple(int(x) for x in text.split(",")) if text else None


def resolve(cfg: Mapping | None, environ: Mapping[str, str]) -> Layout | None:
    """The process layout of this run (module docstring), or None for a single process.

    Args:
      cfg: `config.distributed` (or None: a config without the section).
      environ: the process environment.

    Raises:
      ValueError: a layout of several processes that lacks the coordinator or the process id,
        naming the config keys and variables that set them.
    """
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    devices = _device_ids(cfg.get("local_device_ids"))
    if int(cfg.get("num_processes") or 0) > 0:
        source = "config"
        num = int(cfg["num_processes"])
        pid = cfg.get("process_id", -1)
        pid = None if pid is None or int(pid) < 0 else int(pid)
        address = cfg.get("coordinator_address") or environ.get("JAX_COORDINATOR_ADDRESS")
    elif environ.get(ENV_NUM_PROCESSES):
        source = "environment"
        num = int(environ[ENV_NUM_PROCESSES])
        pid = int(environ[ENV_PROCESS_ID]) if environ.get(ENV_PROCESS_ID) else None
        address = environ.get(ENV_COORDINATOR) or environ.get("JAX_COORDINATOR_ADDRESS")
    elif (cfg.get("auto_detect", True) and all(v in environ for v in SLURM_VARS)
          and int(environ["SLURM_NTASKS"]) > 1):
        # JAX fills in all but the devices; with one task per GPU it makes GPU SLURM_LOCALID the
        # only local device, which `local_device_ids` overrides for one task per node.
        return Layout(None, None, None, devices, "slurm")
    else:
        return None
    if num == 1:
        return None
    missing = []
    if pid is None:
        missing.append(f"the process id (config.distributed.process_id or ${ENV_PROCESS_ID})")
    if not address:
        missing.append("the coordinator address host:port (config.distributed.coordinator_address"
                       f" or ${ENV_COORDINATOR})")
    if missing:
        raise ValueError(f"a run of {num} processes (from the {source}) needs "
                         + " and ".join(missing))
    return Layout(address, num, pid, devices, source)


def initialize(layout: Layout | None, *, shutdown_timeout_seconds: int = 1800) -> None:
    """Starts `jax.distributed` for `layout` (nothing for None); call before any other JAX call.

    Args:
      shutdown_timeout_seconds: how long a finished process waits at JAX's exit barrier for the
        others. Process 0 alone evaluates the test split after training (jdepth/training/loop.py),
        while the other processes wait there; JAX's default of 5 minutes is short for KITTI.
    """
    if layout is None:
        return
    import jax

    # Cross-process collectives of the CPU backend: gloo over TCP (jax 0.10's default; set for
    # versions that had none). Must precede the backend's creation, like initialize itself.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=layout.coordinator_address,
        num_processes=layout.num_processes,
        process_id=layout.process_id,
        local_device_ids=list(layout.local_device_ids) if layout.local_device_ids else None,
        shutdown_timeout_seconds=shutdown_timeout_seconds,
    )
    # One collective now, while every process has just left initialize's rendezvous: on the CPU,
    # the first collective of a device group sets up its gloo context and gives up when a peer
    # is more than 30 s late. Later collectives reuse the context and wait as long as needed
    # (a process compiling slower, process 0 evaluating). Without this, the first one (orbax's
    # barrier in the checkpoint manager) failed in the 2-process test on a loaded machine, where
    # one process's validation and network setup ran more than 30 s behind the other's.
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("jdepth: processes started")


def initialize_from_config(config, environ: Mapping[str, str] | None = None) -> Layout | None:
    """`resolve` then `initialize` for a run config; returns the layout (None: one process)."""
    cfg = config.get("distributed")
    layout = resolve(cfg, os.environ if environ is None else environ)
    timeout = int(cfg.get("shutdown_timeout_seconds", 1800)) if cfg else 1800
    initialize(layout, shutdown_timeout_seconds=timeout)
    return layout
