"""One recipe step on 1 device (jit) and on 2 devices (pmap) from the same state and global batch.

What tests/test_parallel.py checks for plain Monodepth2, for the plug-ins whose reductions
cross the batch (piece-wise pixel weights, the panoptic set loss): tests/test_piecewise.py and
tests/test_panoptic_train.py.
"""

import functools

import jax
import numpy as np
import optax

from jdepth.training import parallel as parallel_lib
from jdepth.training.state import TrainState


def run(recipe, config, params, batch_stats, batches, mode: str, devices):
    """(final state, per-step host metrics) of `recipe.train_step` under `mode`.

    Plain SGD: parameter differences are then gradient differences (Adam's sign-like first steps
    would turn reassociation noise in near-zero gradients into +-lr).
    """
    bn_axis = parallel_lib.AXIS if mode == "pmap" else None
    networks = recipe.build_networks(config, bn_axis_name=bn_axis)
    state = TrainState.create(params, batch_stats, optax.sgd(0.1))
    step_fn = functools.partial(recipe.train_step, networks=networks, config=config)
    dp = parallel_lib.DataParallel(step_fn, mode=mode, devices=devices)
    state = dp.put_state(state)
    metrics = []
    for batch in batches:
        state, step_metrics = dp.step(state, dp.put_batch(batch), jax.random.PRNGKey(1))
        metrics.append(dp.metrics_to_host(step_metrics))
    return dp.get_state(state), metrics


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def one_vs_two_devices(recipe, config, params, batch_stats, batches):
    """((state, metrics) on 1 device with jit, the same on 2 devices with pmap)."""
    devices = jax.local_devices()
    assert len(devices) >= 2, "tests/conftest.py must force 2 host devices"
    single = run(recipe, config, params, batch_stats, batches, "jit", devices[:1])
    double = run(recipe, config, params, batch_stats, batches, "pmap", devices[:2])
    return single, double
