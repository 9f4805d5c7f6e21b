"""Where a recipe's train step spends its time: the networks, sampling, SSIM, cost volume, ...

  python tools/profile_step.py --config configs/demo.py [--steps 3] [--json PATH] \
      [--trace_dir DIR] [--config.train.batch_size=12 --config.data.height=192 ...]

Compiles the step as tools/benchmark.py does (jdepth/training/synthetic_step.py), runs one
warm-up step, then traces `--steps` steps with `jax.profiler` and attributes every executed HLO
instruction to a part of the step (jdepth/training/hlo_profile.py). Prints a table of each
part's share of the traced op time, its time per step and its top instructions. The trace stays
in `--trace_dir` for TensorBoard / Perfetto, with the compiled module (`train_step.hlo.txt`) whose
instruction names its events carry.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file.", lock_config=False)
_STEPS = flags.DEFINE_integer("steps", 3, "Traced steps (after the compile and one warm-up step).")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 1000, "For epoch-based schedules.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "Where the trace goes (default: a temp dir).")
_JSON = flags.DEFINE_string("json", None, "Write the table here as JSON.")
flags.mark_flags_as_required(["config"])


def profile(config, steps: int, steps_per_epoch: int, trace_dir: str) -> dict:
    import jax
    import numpy as np

    from jdepth.training import hlo_profile, synthetic_step

    prepared = synthetic_step.compile_step(config, steps_per_epoch)
    compiled, state = prepared.compiled, prepared.state
    print(f"compiled in {prepared.compile_s:.1f} s", flush=True)
    state, metrics = compiled(state, prepared.batch, prepared.rng)
    jax.block_until_ready(metrics)
    times = []
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    try:
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = compiled(state, prepared.batch, prepared.rng)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    finally:
        jax.profiler.stop_trace()
    hlo_text = compiled.as_text()
    with open(os.path.join(trace_dir, "train_step.hlo.txt"), "w") as f:
        f.write(hlo_text)  # the instruction names the trace's events carry
    instructions = hlo_profile.parse_module(hlo_text)
    parts = hlo_profile.attribute(hlo_profile.trace_events(trace_dir), instructions,
                                  module="jit_train_step")
    total_us = sum(p["us"] for p in parts.values())
    return {
        "recipe": config.recipe,
        "device": str(jax.devices()[0].device_kind),
        "batch_size": int(config.train.batch_size),
        "height": int(config.data.height),
        "width": int(config.data.width),
        "steps": steps,
        "step_s_median": float(np.median(times)),
        "op_ms_per_step": total_us / 1000 / steps,
        "parts": {
            name: {"share": p["us"] / total_us, "ms_per_step": p["us"] / 1000 / steps,
                   "events_per_step": p["count"] / steps,
                   "top": [(op, us / 1000 / steps) for op, us in p["top"]]}
            for name, p in parts.items()
        },
        "trace_dir": trace_dir,
    }


def main(argv):
    del argv
    trace_dir = _TRACE_DIR.value or tempfile.mkdtemp(prefix="jdepth_profile_")
    result = profile(_CONFIG.value, _STEPS.value, _STEPS_PER_EPOCH.value, trace_dir)
    print(f"{result['recipe']} on {result['device']}: batch {result['batch_size']} at "
          f"{result['width']}x{result['height']}; step {result['step_s_median'] * 1000:.0f} ms "
          f"(median of {result['steps']}), traced op time {result['op_ms_per_step']:.0f} ms/step")
    print(f"{'part':<55} {'share':>6} {'ms/step':>8}  top instructions (ms/step)")
    for name, part in result["parts"].items():
        top = ", ".join(f"{op} {ms:.0f}" for op, ms in part["top"])
        print(f"{name:<55} {part['share'] * 100:5.1f}% {part['ms_per_step']:8.1f}  {top}")
    print(f"trace: {trace_dir}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
