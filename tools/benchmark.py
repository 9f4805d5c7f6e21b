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

`--against torch` (Monodepth2-family configs) also builds the RELEASED PyTorch Monodepth2 step
(tools/released_monodepth2.py: the PyPI `manydepth` package's networks and layers, Monodepth2's
trainer loss, Adam) on the same batch, shapes and thread count, and times the two IN THE SAME RUN,
alternating one step of each, so machine drift hits both alike; it prints the ratio
jdepth / PyTorch samples per second, the figure that carries across machines. The colour jitter
runs inside jdepth's timed step and outside PyTorch's (the reference does it in its loader).
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
_AGAINST = flags.DEFINE_enum("against", None, ["torch"],
                             "Also time the released PyTorch step, alternating (see above).")
_TORCH_ALLOCATOR = flags.DEFINE_enum(
    "torch_allocator", "same", ["same", "system"],
    "--against: the PyTorch process gets jdepth's allocator (same; the like-for-like figure) or "
    "the system one it ships with (system).")
_THREADS = flags.DEFINE_integer("threads", 0, "torch intra-op threads for --against (0: all cores; "
                                "XLA:CPU uses all cores).")
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


def run_against_torch(config, steps: int, steps_per_epoch: int, threads: int,
                      torch_allocator: str = "same") -> dict:
    """jdepth's compiled step and the released PyTorch step, alternating on the same batch.

    The PyTorch step runs in a process of its own (tools/released_monodepth2.py `serve`), as it
    runs in practice: in one process the two runtimes' allocators and thread pools interfere
    (each step of one after a step of the other pays for the other's heap), which is not what
    either user sees.
    """
    import os
    import subprocess
    import sys
    import tempfile

    import jax
    import numpy as np
    import released_monodepth2

    from jdepth.data import device_transforms
    from jdepth.training import synthetic_step

    if config.recipe != "monodepth2" or config.model.get("depth_arch", "resnet") != "resnet":
        raise SystemExit(f"--against torch compares the Monodepth2 step; {config.recipe} "
                         "has no released single-step counterpart here")
    released_monodepth2.import_released()  # a missing extra fails here, before the compile
    threads = threads or os.cpu_count()
    prepared = synthetic_step.compile_step(config, steps_per_epoch)
    compiled, state, batch, rng = prepared.compiled, prepared.state, prepared.batch, prepared.rng
    b, h, w = config.train.batch_size, config.data.height, config.data.width
    color, color_aug, pyramid = device_transforms.prepare_images(
        batch["images"], batch["jitter"], len(config.model.scales))
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        released_monodepth2.save_inputs(inputs, color, color_aug, pyramid, batch["K"][:, 0],
                                        batch["inv_K"][:, 0])
        env = dict(os.environ)
        if torch_allocator == "system":
            for key in ("LD_PRELOAD", "GLIBC_TUNABLES"):
                env.pop(key, None)
        worker = subprocess.Popen(
            [sys.executable, released_monodepth2.__file__, "--serve", inputs,
             "--lr", str(config.optim.lr), "--min_depth", str(config.model.min_depth),
             "--max_depth", str(config.model.max_depth), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        try:
            ready = _reply(worker)  # after its warm-up step
            state, metrics = compiled(state, batch, rng)  # jdepth's warm-up
            jax.block_until_ready(metrics)
            jdepth_s, torch_s = [], []
            for i in range(steps):
                start = time.perf_counter()
                state, metrics = compiled(state, batch, rng)
                jax.block_until_ready(metrics)
                jdepth_s.append(time.perf_counter() - start)
                worker.stdin.write("step\n")
                worker.stdin.flush()
                torch_s.append(_reply(worker)["seconds"])
                print(f"round {i}: jdepth {jdepth_s[-1]:.3f} s, PyTorch {torch_s[-1]:.3f} s",
                      flush=True)
        finally:
            if worker.poll() is None:
                worker.stdin.write("quit\n")
                worker.stdin.flush()
            worker.wait(timeout=60)
    j, t = float(np.median(jdepth_s)), float(np.median(torch_s))
    return {
        "recipe": config.recipe, "device": str(jax.devices()[0].device_kind),
        "platform": platform.processor() or platform.machine(), "batch_size": b, "height": h,
        "width": w, "torch_threads": ready["threads"], "torch_version": ready["torch_version"],
        "jax_version": jax.__version__, "cpu_count": os.cpu_count(),
        "jdepth_allocator": _allocator_in_use(), "torch_allocator": (
            _allocator_in_use() if torch_allocator == "same" else "system"),
        "compile_s": prepared.compile_s, "jdepth_step_times_s": jdepth_s,
        "torch_step_times_s": torch_s, "jdepth_ms_per_step": 1000 * j,
        "torch_ms_per_step": 1000 * t, "ratio_samples_per_s": t / j,
    }


def _allocator_in_use() -> str:
    import os

    preload = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload:
        return "tcmalloc"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "glibc-tuned"
    return "system"


def _reply(worker) -> dict:
    line = worker.stdout.readline()
    if not line:
        raise RuntimeError(f"the PyTorch step process exited (code {worker.wait()}); run "
                           "tools/released_monodepth2.py --serve to see why")
    return json.loads(line)


def _gib(x):
    return "n/a" if x is None else f"{x / 2**30:.2f} GiB"


def main(argv):
    del argv
    if _AGAINST.value:
        result = run_against_torch(_CONFIG.value, _STEPS.value, _STEPS_PER_EPOCH.value,
                                   _THREADS.value, _TORCH_ALLOCATOR.value)
        print(f"{result['recipe']}: batch {result['batch_size']} at {result['width']}x"
              f"{result['height']}, {result['torch_threads']} torch threads; median of "
              f"{len(result['jdepth_step_times_s'])} alternating rounds; allocators: jdepth "
              f"{result['jdepth_allocator']}, PyTorch {result['torch_allocator']}")
        print(f"  jdepth {result['jdepth_ms_per_step']:.0f} ms/step, released PyTorch "
              f"{result['torch_ms_per_step']:.0f} ms/step: jdepth / PyTorch samples/s = "
              f"{result['ratio_samples_per_s']:.2f}x")
        if _JSON.value:
            with open(_JSON.value, "w") as f:
                json.dump(result, f, indent=2)
        return
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
    from jdepth import allocator

    allocator.reexec_with_fast_allocator()  # what training runs with (jdepth/allocator.py)
    app.run(main)
