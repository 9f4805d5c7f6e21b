"""Data parallelism behind one pure step function: `jax.pmap` (default) or `jax.jit` + NamedSharding.

pmap (what the users asked for): the state is replicated on every local device, each device gets
`global_batch / n` samples, gradients are `pmean`-ed over the axis named "batch" and BatchNorm
statistics are synchronised over it (the networks are built with `bn_axis_name="batch"`).

jit (pmap is in maintenance upstream): one program over a 1-D ("data",) mesh, batch sharded on its
leading axis, state replicated; XLA inserts the same all-reduces. BatchNorm statistics are then
computed over the global batch directly.

Both give the numbers of a 1-device run with the same global batch (tests/test_parallel.py).

Several processes (jdepth/training/distributed.py) run the jit mode only: the mesh then spans every
process's devices, each process passes its own rows of the global batch (`put_batch`), and state
and metrics, replicated, are read from this process's copy (tests/test_distributed.py).
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jdepth.training import compile_options

AXIS = "batch"


class DataParallel:
    """Compiles `step_fn(state, batch, rng, *, axis_name)` for the chosen mode and moves data.

    The step is compiled once, ahead of time, at the first call, with the backend's XLA options
    (jdepth/training/compile_options.py); a later batch of another shape or dtype is an error
    from the compiled program, never a silent recompile.

    Attributes:
      num_traces: how many times the step was traced (1 for a run).
      compile_seconds: wall time of the first call (trace + compile + one step).
    """

    def __init__(self, step_fn: Callable, mode: str = "pmap", devices=None):
        if mode not in ("pmap", "jit"):
            raise ValueError(f"parallel mode must be 'pmap' or 'jit', got {mode!r}")
        if mode == "pmap" and jax.process_count() > 1:
            raise ValueError("parallel mode 'pmap' runs on one host; a run of "
                             f"{jax.process_count()} processes needs 'jit' (config.train.parallel)")
        self.mode = mode
        self.devices = list(devices or default_devices(mode))
        self.num_devices = len(self.devices)
        self.num_traces = 0
        self.compile_seconds = None
        self._compiled = None
        self._mesh = Mesh(np.array(self.devices), (AXIS,))

        def counted(state, batch, rng, axis_name):
            self.num_traces += 1  # runs at trace time only
            new_state, metrics = step_fn(state, batch, rng, axis_name=axis_name)
            # Cumulative, so the loop sees a skipped update at its next log step.
            metrics = {**metrics, "skipped_steps": new_state.skipped_steps}
            return new_state, metrics

        if mode == "pmap":
            self._step = jax.pmap(
                functools.partial(counted, axis_name=AXIS),
                axis_name=AXIS,
                in_axes=(0, 0, None),
                donate_argnums=(0,),
                devices=self.devices,
            )
        else:
            self._step = jax.jit(functools.partial(counted, axis_name=None), donate_argnums=(0,))

    @property
    def bn_axis_name(self) -> str | None:
        """Axis name the networks' BatchNorm must average over (None under jit)."""
        return AXIS if self.mode == "pmap" else None

    @property
    def multiprocess(self) -> bool:
        """Whether the mesh spans devices of other processes."""
        return any(d.process_index != jax.process_index() for d in self.devices)

    def put_state(self, state):
        """Host (or device) state -> replicated on every device of the mode's mesh.

        With several processes each passes the same host values (the same init seed or the same
        restored checkpoint), which become this process's replicas of one global array.
        """
        if self.mode == "pmap":
            sharding = NamedSharding(self._mesh, P(AXIS))
            return jax.tree_util.tree_map(
                lambda x: jax.device_put(
                    np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x)), sharding
                ),
                state,
            )
        replicated = NamedSharding(self._mesh, P())
        if self.multiprocess:
            return jax.tree_util.tree_map(
                lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), state)
        return jax.device_put(state, replicated)

    def get_state(self, state):
        """Host copy of the state (replica 0 under pmap; this process's replica under jit)."""
        if self.mode == "pmap":
            return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x[0])), state)
        return jax.tree_util.tree_map(_local_replica, state)

    def put_batch(self, batch: dict):
        """Host batch -> device arrays laid out for the step.

        One process: the global batch [B, ...], B divisible by the device count. Several: this
        process's rows of it [B / processes, ...] (jdepth/data/pipeline.py `shard_sliced`), which
        must divide over its local devices; process p's devices come p-th in the mesh, so its
        rows are rows p * B / processes ... of the global batch.
        """
        b = len(next(iter(batch.values())))
        local = [d for d in self.devices if d.process_index == jax.process_index()]
        if b % len(local):
            what = "process-local batch" if self.multiprocess else "global batch size"
            raise ValueError(f"{what} {b} does not divide over {len(local)} devices")
        sharding = NamedSharding(self._mesh, P(AXIS))
        if self.mode == "pmap":
            return {
                k: jax.device_put(
                    np.asarray(v).reshape(self.num_devices, -1, *np.shape(v)[1:]), sharding
                )
                for k, v in batch.items()
            }
        if self.multiprocess:
            return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
                    for k, v in batch.items()}
        return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}

    def put_rng(self, rng):
        """The step's key as the step takes it: under jit with several processes, one global
        replicated array (a key made here lives on one local device, which a program spanning
        other processes cannot take); otherwise unchanged."""
        if self.mode == "jit" and self.multiprocess and (
                not isinstance(rng, jax.Array) or rng.is_fully_addressable):
            return self.put_state(np.asarray(rng))
        return rng

    def step(self, state, batch, rng):
        rng = self.put_rng(rng)  # a no-op for a key already put
        start = time.perf_counter() if self.compile_seconds is None else None
        if self._compiled is None:
            self._compiled = compile_options.compile_lowered(
                self._step.lower(state, batch, rng), self.devices[0].platform)
        state, metrics = self._compiled(state, batch, rng)
        if start is not None:
            jax.block_until_ready(metrics)
            self.compile_seconds = time.perf_counter() - start
        return state, metrics

    def metrics_to_host(self, metrics) -> dict[str, float]:
        if self.mode == "jit":  # replicated scalars: this process's copy, no cross-process read
            return {k: float(_local_replica(v)) for k, v in metrics.items()}
        host = jax.device_get(metrics)
        return {k: float(np.asarray(v)[0]) for k, v in host.items()}


def batch_devices(mode: str) -> int:
    """How many devices the global batch is split over in `mode` (all processes' under jit)."""
    return len(default_devices(mode))


def default_devices(mode: str) -> list:
    """pmap: this process's devices. jit: every process's, grouped by process so that process
    p's batch rows come p-th (`DataParallel.put_batch`); in one process both are the same."""
    if mode == "pmap":
        return jax.local_devices()
    return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def _local_replica(x) -> np.ndarray:
    """This process's copy of a replicated array (`np.asarray` of a global array would need the
    other processes' shards)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))
