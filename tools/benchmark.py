"""Train-step cost of a recipe: compile time, step time, samples/s and peak memory.

  python tools/benchmark.py --config configs/manydepth.py [--steps N] [--json PATH] \
      [--config.train.batch_size=12 --config.data.height=192 --config.data.width=640 ...]

The step is the recipe's own `train_step`, jitted on one device exactly as the training loop runs
it, on a synthetic pipeline-shaped batch (jdepth/training/synthetic_step.py; no data is read: this
measures the model, not the input pipeline; tools/benchmark_input.py measures that).
tools/profile_step.py splits the same step's time by operation.

Memory, three views:
  xla_peak_bytes    XLA's buffer assignment for the compiled step: arguments + outputs + temporaries
                    - aliased (donated) bytes; what the step needs on the device;
  device_peak_bytes the allocator's peak on GPU/TPU (`memory_stats`; not reported on CPU);
  rss_peak_bytes    the process' peak resident memory (includes compilation and the host copies).
For ManyDepth, `--config.manydepth.freeze_teacher_step=0` measures the frozen-teacher phase (the
default measures the joint phase).
"""

from __future__ import annotations

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


def run(config, steps: int, steps_per_epoch: int, compile_only: bool = False) -> dict:
    import jax
    import numpy as np

    from jdepth.training import synthetic_step

    prepared = synthetic_step.compile_step(config, steps_per_epoch)
    compiled, state, batch, rng = prepared.compiled, prepared.state, prepared.batch, prepared.rng
    compile_s = prepared.compile_s
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
