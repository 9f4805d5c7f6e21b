"""A recipe's train step, compiled for one device, on a pipeline-shaped synthetic batch.

What tools/benchmark.py times and tools/profile_step.py traces: the recipe's own `train_step`,
jitted exactly as the training loop runs it (state donated), with variables filled by numpy from
the recipe's `eval_shape` trees (He-scaled kernels; no initialiser is compiled) and a batch with
the pipeline's keys, dtypes and shapes (no data is read: this measures the model, not the input
pipeline).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import numpy as np

from jdepth.data import calibration, instances, pipeline
from jdepth.training import compile_options, recipes
from jdepth.training.state import TrainState, make_optimizer


def synthetic_batch(config, seed: int = 0) -> dict:
    """A batch with the pipeline's keys, dtypes and shapes (jdepth/data/pipeline.py)."""
    rng = np.random.default_rng(seed)
    b, h, w = config.train.batch_size, config.data.height, config.data.width
    frames = len(config.data.frame_ids)
    coarse = rng.integers(0, 256, (b, frames, h // 8, w // 8, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    k_norm = calibration.MONODEPTH2_NORMALISED_INTRINSICS
    K, inv_K = pipeline.intrinsics_pyramid(k_norm, h, w, len(config.model.scales))
    batch = {
        "images": images,
        "K": np.broadcast_to(K, (b,) + K.shape).copy(),
        "inv_K": np.broadcast_to(inv_K, (b,) + inv_K.shape).copy(),
        "jitter": np.tile(np.array([1, 1.1, 0.9, 1.05, 0.02], np.float32), (b, 1)),
        "flipped": np.zeros(b, bool),
        "index": np.arange(b, dtype=np.int32),
    }
    if config.data.get("load_velocity"):
        batch["velocity"] = np.full((b, frames), 10.0, np.float32)
    if config.data.get("load_panoptic"):
        batch["panoptic"] = np.zeros((b, frames, h, w), np.int32)
    piecewise = config.get("piecewise")
    if piecewise is not None and piecewise.enabled:
        # Every slot filled: the cost does not depend on it (static shapes), the values look real.
        slots = int(piecewise.max_instances)
        ids = np.full((frames, h, w), 10, np.int32)
        step = w // slots
        for m in range(slots):
            ids[:, h // 2:, m * step:(m + 1) * step] = 13000 + m + 1
        targets = instances.match_instances(ids, slots, float(piecewise.min_area_fraction))
        batch["panoptic"] = np.broadcast_to(ids, (b, frames, h, w)).copy()
        for key, value in targets.items():
            batch[key] = np.broadcast_to(value, (b,) + value.shape).copy()
    masking = config.get("masking")
    if masking is not None and masking.get("small_objects", False):
        small = instances.small_object_mask(batch["panoptic"][0], float(masking.min_area_fraction))
        batch["small_object_mask"] = np.broadcast_to(small, (b,) + small.shape).copy()
    return batch


def random_variables(recipe, networks, config, seed: int = 0):
    """(params, batch_stats) of the recipe's trees, He-scaled kernels, unit BN scale/var."""
    shapes = jax.eval_shape(lambda: recipe.init_variables(networks, config, jax.random.key(0)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "kernel":
            value = rng.normal(0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:
            value = rng.normal(0, 0.01, leaf.shape)
        return np.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@dataclasses.dataclass
class CompiledStep:
    """The compiled step and its first arguments: `compiled(state, batch, rng) -> (state,
    metrics)`; `compiled` is a `jax.stages.Compiled` (memory_analysis(), as_text()). The state
    is donated: pass each call the state the previous one returned."""

    compiled: Any
    state: Any
    batch: dict
    rng: jax.Array
    compile_s: float


def compile_step(config, steps_per_epoch: int) -> CompiledStep:
    """Builds the recipe's state and batch and compiles its train step (timed)."""
    config.train.steps_per_epoch = steps_per_epoch
    recipe = recipes.get(config.recipe)
    networks = recipe.build_networks(config, bn_axis_name=None)
    params, batch_stats = random_variables(recipe, networks, config)
    if hasattr(recipe, "make_optimizer"):
        tx = recipe.make_optimizer(config, steps_per_epoch)
    else:
        tx = make_optimizer(config.optim, steps_per_epoch)
    state = jax.device_put(TrainState.create(params, batch_stats, tx,
                                             recipes.init_extra(recipe, config)))
    batch = jax.device_put(synthetic_batch(config))
    rng = jax.random.PRNGKey(0)
    step = jax.jit(functools.partial(recipe.train_step, networks=networks, config=config,
                                     axis_name=None), donate_argnums=(0,))
    start = time.perf_counter()
    compiled = compile_options.compile_lowered(step.lower(state, batch, rng),
                                               jax.devices()[0].platform)
    return CompiledStep(compiled, state, batch, rng, time.perf_counter() - start)
