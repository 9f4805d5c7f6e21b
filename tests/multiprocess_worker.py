"""One process of a tiny multi-process training run (tests/test_distributed.py starts it, alone or
through tools/launch_local.py).

It exercises what `jdepth.training.loop` does in a run of several processes, on a model small
enough to compile in a second: `distributed.initialize_from_config` from the launcher's
environment, a grain dataset read as this process's rows of each global batch
(`pipeline.shard_sliced`), the jit step of `DataParallel` over every process's devices, and a
checkpoint of (state, iterator state) that any process count can resume.

  python tests/multiprocess_worker.py --workdir W --steps 4 --out result.json

resumes W's latest checkpoint if there is one, trains up to step `--steps`, saves a checkpoint
there, and (process 0) writes the losses of the steps it ran and the final state to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import ml_collections

GLOBAL_BATCH = 8
FEATURES = 3


def _sample(index, rng):
    """A regression sample drawn from grain's per-record RNG (as the KITTI pipeline draws its
    augmentation): the values depend on the record, never on the process that reads it."""
    import numpy as np

    x = rng.normal(size=FEATURES).astype(np.float32) + np.float32(index % 5)
    y = np.float32(x @ np.array([1.5, -2.0, 0.5], np.float32) + 0.3 + rng.normal() * 0.1)
    return {"x": x, "y": np.array([y], np.float32)}


def _step(state, batch, rng, axis_name):
    """Linear regression + a running mean of the inputs (BatchNorm-like global-batch statistic)."""
    import jax
    import jax.numpy as jnp

    del axis_name  # jit: the global batch is one array

    def loss_fn(params):
        pred = batch["x"] @ params["w"] + params["b"]
        noise = 1e-3 * jax.random.normal(jax.random.fold_in(rng, state.step), pred.shape)
        return jnp.mean((pred + noise - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    stats = {"mean": 0.9 * state.batch_stats["mean"] + 0.1 * jnp.mean(batch["x"], axis=0)}
    return state.apply_gradients(grads, stats), {"loss": loss}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from jdepth.training import distributed

    layout = distributed.initialize_from_config(ml_collections.ConfigDict())  # before any JAX use
    import grain
    import jax
    import numpy as np
    import optax

    from jdepth.data import pipeline
    from jdepth.training import checkpoint
    from jdepth.training.parallel import DataParallel
    from jdepth.training.state import TrainState

    assert (layout is None) == (jax.process_count() == 1)
    params = {"w": np.zeros((FEATURES, 1), np.float32), "b": np.zeros((1,), np.float32)}
    state = TrainState.create(params, {"mean": np.zeros(FEATURES, np.float32)}, optax.adam(0.05))
    ds = grain.MapDataset.range(40).seed(7).shuffle().repeat(None).random_map(_sample)
    ds = pipeline.shard_sliced(ds, GLOBAL_BATCH, jax.process_index(), jax.process_count())
    data_iter = pipeline.make_iterator(ds)

    ckpt = checkpoint.Checkpointer(args.workdir)
    start = 0
    if ckpt.latest_step() is not None:  # as loop._restore
        model, opt, data_state, start = ckpt.restore(
            {"params": state.params, "batch_stats": state.batch_stats, "extra": state.extra},
            {"step": np.int64(0), "opt_state": state.opt_state})
        data_iter.set_state(data_state)
        state = state.replace(step=int(opt["step"]), opt_state=opt["opt_state"], **model)

    dp = DataParallel(_step, mode="jit")
    state = dp.put_state(state)
    rng = dp.put_rng(jax.random.PRNGKey(3))
    losses = []
    for _ in range(start, args.steps):
        state, metrics = dp.step(state, dp.put_batch(next(data_iter)), rng)
        losses.append(dp.metrics_to_host(metrics)["loss"])
    host = dp.get_state(state)
    ckpt.save(args.steps, {"params": host.params, "batch_stats": host.batch_stats,
                           "extra": host.extra},
              {"step": np.int64(host.step), "opt_state": host.opt_state}, data_iter.get_state())
    ckpt.close()
    if jax.process_index() == 0:
        with open(args.out, "w") as f:
            json.dump({
                "process_count": jax.process_count(),
                "device_count": jax.device_count(),
                "start": start,
                "losses": losses,
                "step": int(host.step),
                "params": {k: np.asarray(v).ravel().tolist() for k, v in host.params.items()},
                "mean": np.asarray(host.batch_stats["mean"]).tolist(),
                "data_state": data_iter.get_state(),
                "num_traces": dp.num_traces,
            }, f)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
