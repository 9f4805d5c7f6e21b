"""Train-step cost of a recipe: compile time, step time, samples/s and peak memory.

  python tools/benchmark.py --config configs/manydepth.py [--steps N] [--json PATH] \
      [--config.train.batch_size=12 --config.data.height=192 --config.data.width=640 ...]

The step is the recipe's own `train_step`, jitted on one device exactly as the training loop runs
it, on a synthetic pipeline-shaped batch (no data is read: this measures the model, not the input
pipeline; tools/benchmark_input.py measures that). Variables are filled by numpy from the recipe's
`eval_shape` trees (He-scaled kernels), which skips compiling the initialisers.

Memory, three views:
  xla_peak_bytes    XLA's buffer assignment for the compiled step: arguments + outputs + temporaries
                    - aliased (donated) bytes; what the step needs on the device;
  device_peak_bytes the allocator's peak on GPU/TPU (`memory_stats`; not reported on CPU);
  rss_peak_bytes    the process' peak resident memory (includes compilation and the host copies).
For ManyDepth, `--config.manydepth.freeze_teacher_step=0` measures the frozen-teacher phase (the
default measures the joint phase).
"""

from __future__ import annotations

import functools
import json
import platform
import resource
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file.", lock_config=False)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps (after one compile + warm-up step).")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 1000, "For epoch-based schedules.")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Stop after compiling: XLA's memory plan without running a step."
)
flags.mark_flags_as_required(["config"])


def synthetic_batch(config, seed: int = 0) -> dict:
    """A batch with the pipeline's keys, dtypes and shapes (jdepth/data/pipeline.py)."""
    import numpy as np

    from jdepth.data import pipeline

    rng = np.random.default_rng(seed)
    b, h, w = config.train.batch_size, config.data.height, config.data.width
    frames = len(config.data.frame_ids)
    coarse = rng.integers(0, 256, (b, frames, h // 8, w // 8, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    k_norm = np.array([[0.58, 0, 0.5, 0], [0, 1.92, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
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
        from jdepth.data import instances

        slots = int(piecewise.max_instances)
        ids = np.full((frames, h, w), 10, np.int32)
        step = w // slots
        for m in range(slots):
            ids[:, h // 2:, m * step:(m + 1) * step] = 13000 + m + 1
        targets = instances.match_instances(ids, slots, float(piecewise.min_area_fraction))
        batch["panoptic"] = np.broadcast_to(ids, (b, frames, h, w)).copy()
        for key, value in targets.items():
            batch[key] = np.broadcast_to(value, (b,) + value.shape).copy()
    return batch


def random_variables(recipe, networks, config, seed: int = 0):
    """(params, batch_stats) of the recipe's trees, He-scaled kernels, unit BN scale/var."""
    import jax
    import numpy as np

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


def run(config, steps: int, steps_per_epoch: int, compile_only: bool = False) -> dict:
    import jax
    import numpy as np

    from jdepth.training import recipes
    from jdepth.training.state import TrainState, make_optimizer

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
    compiled = step.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    xla_peak = None
    if analysis is not None:
        xla_peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                    + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    result = {
        "recipe": config.recipe,
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.processor() or platform.machine(),
        "batch_size": int(config.train.batch_size),
        "height": int(config.data.height),
        "width": int(config.data.width),
        "compile_s": compile_s,
        "xla_peak_bytes": xla_peak,
        "xla_temp_bytes": None if analysis is None else analysis.temp_size_in_bytes,
        "rss_after_compile_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(f"compiled in {compile_s:.1f} s; XLA plan {_gib(xla_peak)}", flush=True)
    if compile_only:
        return result
    start = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    first_s = time.perf_counter() - start
    print(f"first step {first_s:.1f} s", flush=True)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
        print(f"step {times[-1]:.1f} s", flush=True)
    stats = jax.devices()[0].memory_stats() or {}
    loss = float(np.asarray(metrics["loss"]))
    step_s = float(np.median(times)) if times else first_s
    result.update({
        "first_step_s": first_s,
        "ms_per_step": 1000 * step_s,
        "step_times_s": times,
        "samples_per_s": config.train.batch_size / step_s,
        "device_peak_bytes": stats.get("peak_bytes_in_use"),
        "rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "loss": loss,
    })
    return result


def _gib(x):
    return "n/a" if x is None else f"{x / 2**30:.2f} GiB"


def main(argv):
    del argv
    result = run(_CONFIG.value, _STEPS.value, _STEPS_PER_EPOCH.value, _COMPILE_ONLY.value)
    print(f"{result['recipe']} on {result['device']}: batch {result['batch_size']} at "
          f"{result['width']}x{result['height']}")
    if _COMPILE_ONLY.value:
        print(f"  compile {result['compile_s']:.1f} s; XLA peak {_gib(result['xla_peak_bytes'])} "
              f"(temporaries {_gib(result['xla_temp_bytes'])})")
        if _JSON.value:
            with open(_JSON.value, "w") as f:
                json.dump(result, f, indent=2)
        return
    print(f"  compile {result['compile_s']:.1f} s, first step {result['first_step_s']:.1f} s")
    print(f"  {result['ms_per_step']:.0f} ms/step, {result['samples_per_s']:.2f} samples/s "
          f"(median of {len(result['step_times_s'])})")
    print(f"  peak memory: XLA {_gib(result['xla_peak_bytes'])} "
          f"(temporaries {_gib(result['xla_temp_bytes'])}), device "
          f"{_gib(result['device_peak_bytes'])}, process RSS {_gib(result['rss_peak_bytes'])}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
