"""Data parallelism: pmap over 2 host devices == jit on 1 device == jit sharded over 2 devices."""

import functools

import jax
import numpy as np
import optax
import pytest
from conftest import random_batch, tiny_config

from jdepth.training import monodepth
from jdepth.training import parallel as parallel_lib
from jdepth.training.state import TrainState


def _run(mode: str, devices, steps: int = 2):
    config = tiny_config(height=64, width=64)
    bn_axis = parallel_lib.AXIS if mode == "pmap" else None
    networks = monodepth.build_networks(config, bn_axis_name=bn_axis)
    params, batch_stats = monodepth.init_variables(networks, config, jax.random.PRNGKey(0))
    # Plain SGD: parameter differences are then gradient differences. Adam would turn float
    # reassociation noise in near-zero gradients into +-lr sign flips and hide what we test.
    state = TrainState.create(params, batch_stats, optax.sgd(0.1))
    step_fn = functools.partial(monodepth.train_step, networks=networks, config=config)
    dp = parallel_lib.DataParallel(step_fn, mode=mode, devices=devices)
    state = dp.put_state(state)
    rng = jax.random.PRNGKey(1)
    losses = []
    for i in range(steps):
        batch = dp.put_batch(random_batch(config, 4, seed=i))
        state, metrics = dp.step(state, batch, rng)
        losses.append(dp.metrics_to_host(metrics)["loss"])
    return dp.get_state(state), losses, dp.num_traces


def _max_diff(a, b):
    return max(
        float(np.max(np.abs(x - y)))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


@pytest.mark.slow
def test_pmap_two_devices_matches_one_device():
    devices = jax.local_devices()
    assert len(devices) >= 2, "tests/conftest.py must force 2 host devices"
    single, losses_1, traces_1 = _run("jit", devices[:1])
    pmapped, losses_2, traces_2 = _run("pmap", devices[:2])
    sharded, losses_3, traces_3 = _run("jit", devices[:2])
    # The step compiles once: same shapes every step means no retrace.
    assert traces_1 == traces_2 == traces_3 == 1
    np.testing.assert_allclose(losses_1, losses_2, rtol=1e-4)
    np.testing.assert_allclose(losses_1, losses_3, rtol=1e-4)
    # Params after 2 SGD steps: differences are float reassociation only.
    assert _max_diff(single.params, pmapped.params) < 1e-5
    assert _max_diff(single.params, sharded.params) < 1e-5
    # Synchronised BatchNorm: running statistics match the 1-device statistics of the global batch.
    assert _max_diff(single.batch_stats, pmapped.batch_stats) < 1e-4
    assert int(pmapped.step) == 2
