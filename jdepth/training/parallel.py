"""Data parallelism behind one pure step function: `jax.pmap` (default) or `jax.jit` + NamedSharding.

pmap (what the users asked for): the state is replicated on every local device, each device gets
`global_batch / n` samples, gradients are `pmean`-ed over the axis named "batch" and BatchNorm
statistics are synchronised over it (the networks are built with `bn_axis_name="batch"`).

jit (pmap is in maintenance upstream): one program over a 1-D ("data",) mesh, batch sharded on its
leading axis, state replicated; XLA inserts the same all-reduces. BatchNorm statistics are then
computed over the global batch directly.

Both give the numbers of a 1-device run with the same global batch (tests/test_parallel.py).
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
        self.mode = mode
        self.devices = list(devices or jax.local_devices())
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

    def put_state(self, state):
        if self.mode == "pmap":
            sharding = NamedSharding(self._mesh, P(AXIS))
            return jax.tree_util.tree_map(
                lambda x: jax.device_put(
                    np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x)), sharding
                ),
                state,
            )
        return jax.device_put(state, NamedSharding(self._mesh, P()))

    def get_state(self, state):
        """Host copy of the state (replica 0 under pmap)."""
        if self.mode == "pmap":
            return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x[0])), state)
        return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), state)

    def put_batch(self, batch: dict):
        """Host batch [B, ...] -> device arrays laid out for the step; B must divide by #devices."""
        b = len(next(iter(batch.values())))
        if b % self.num_devices:
            raise ValueError(
                f"global batch size {b} does not divide over {self.num_devices} devices"
            )
        sharding = NamedSharding(self._mesh, P(AXIS))
        if self.mode == "pmap":
            return {
                k: jax.device_put(
                    np.asarray(v).reshape(self.num_devices, -1, *np.shape(v)[1:]), sharding
                )
                for k, v in batch.items()
            }
        return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}

    def step(self, state, batch, rng):
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
        host = jax.device_get(metrics)
        if self.mode == "pmap":
            return {k: float(np.asarray(v)[0]) for k, v in host.items()}
        return {k: float(v) for k, v in host.items()}
