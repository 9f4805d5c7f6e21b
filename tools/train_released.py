"""Trains the RELEASED PyTorch Monodepth2 on a jdepth config's data: the yardstick of the recipes.

  python tools/train_released.py --config configs/monodepth2.py --workdir runs/released \
      [--config.data.root=... --config.data.split_dir=... --config.train.num_epochs=20 ...]

The networks, layers and loss are nianticlabs' released code (tools/released_monodepth2.py: the PyPI
`manydepth` package's networks and layers, Monodepth2's trainer loss, Adam); everything around
them is jdepth's, so the comparison isolates the training recipe: the same grain pipeline (same
frames, shuffling seed, flips and colour-jitter draws, batch size), the same step count and
learning-rate schedule (`optim.lr`, `optim.decay_epochs`), and the same evaluation code
(jdepth/eval/depth_eval.py, Eigen protocol with median scaling). Only the config fields the
released trainer has are honoured: jdepth-only aids (pose_zero_init, pose_lr_scale,
automask_start_step, ...) are refused, so a run is the released recipe.

Writes `workdir/metrics.jsonl` (loss, translation norm, mean depth per logged step; val metrics per
evaluation) and `workdir/eval/train_final_test_metrics.json`, like `python -m jdepth.train`.
Optional extra: `pip install -e ".[reference]"`.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "jdepth config (data and schedule).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Logs and the final metrics go here.")
_THREADS = flags.DEFINE_integer("threads", 0, "torch intra-op threads (0: all cores).")
flags.mark_flags_as_required(["config", "workdir"])

# jdepth-only training aids the released trainer does not have: a run with any of them set would
# not be the released recipe.
_JDEPTH_ONLY = {
    "model.pose_zero_init": False, "optim.pose_lr_scale": 1.0, "loss.automask_start_step": 0,
    "optim.hold_depth_steps": 0, "optim.grad_clip_norm": 0.0, "model.init_depth": 0.0,
    "loss.velocity_weight": 0.0, "loss.v1_multiscale": False, "loss.avg_reprojection": False,
    "model.encoder_init": "scratch",
}


class ReleasedPredictor:
    """jdepth's predictor interface (depth_eval.evaluate_split) over the released networks."""

    lookup_offsets = ()
    absolute = False

    def __init__(self, model, height: int, width: int):
        self.model, self.height, self.width = model, height, width

    def predict_disparity(self, images, batch_size: int = 8, **unused):
        import numpy as np

        from jdepth.data import pipeline
        from jdepth.geometry import disp_to_depth

        out = []
        for start in range(0, len(images), batch_size):
            chunk = np.stack([
                pipeline.resize_image(np.asarray(im, np.uint8), self.height, self.width)
                for im in images[start:start + batch_size]])
            disp = self.model.predict_disp(chunk.astype(np.float32) / 255.0)
            out.append(np.asarray(disp_to_depth(disp, self.model.min_depth,
                                                self.model.max_depth)[0]))
        return np.concatenate(out).astype(np.float32)


def check_released_recipe(config) -> None:
    for key, default in _JDEPTH_ONLY.items():
        section, name = key.split(".")
        value = config[section].get(name, default)
        if value != default:
            raise SystemExit(f"config.{key}={value!r} is a jdepth-only setting; the released "
                             f"trainer has no counterpart (use {default!r})")
    for plugin in ("issl", "panoptic", "contrastive", "piecewise"):
        if plugin in config and config[plugin].get("enabled", False):
            raise SystemExit(f"config.{plugin}.enabled: plug-ins are not in the released trainer")
    if config.recipe != "monodepth2" or config.model.get("depth_arch", "resnet") != "resnet":
        raise SystemExit("train_released trains the released Monodepth2 (ResNet-18) only")


def train(config, workdir: str, threads: int = 0) -> dict:
    import jax
    import numpy as np
    import released_monodepth2

    from jdepth.data import device_transforms, pipeline
    from jdepth.eval.metrics import format_metrics_table
    from jdepth.training import loop
    from jdepth.training.datasets import resolve_data

    check_released_recipe(config)
    os.makedirs(workdir, exist_ok=True)
    config = resolve_data(config, workdir)
    pcfg = loop.pipeline_config(config)
    batch_size = int(config.train.batch_size)
    steps_per_epoch = max(1, pipeline.split_length(config.data.train_split) // batch_size)
    total_steps = config.train.get("max_steps") or config.train.num_epochs * steps_per_epoch
    model = released_monodepth2.ReleasedMonodepth2(
        batch_size, config.data.height, config.data.width, scales=tuple(config.model.scales),
        frame_ids=tuple(config.data.frame_ids), min_depth=config.model.min_depth,
        max_depth=config.model.max_depth, lr=config.optim.lr, ssim_weight=config.loss.ssim_weight,
        smoothness_weight=config.loss.smoothness_weight, automask=config.loss.automask,
        seed=config.seed, num_threads=threads or os.cpu_count())
    model.min_depth, model.max_depth = config.model.min_depth, config.model.max_depth
    data = pipeline.make_iterator(pipeline.make_dataset(
        pcfg, config.data.train_split, batch_size=batch_size, seed=config.seed, train=True),
        num_workers=config.data.num_workers)
    prepare = jax.jit(lambda images, jitter: device_transforms.prepare_images(
        images, jitter, len(config.model.scales)))
    predictor = ReleasedPredictor(model, config.data.height, config.data.width)
    eval_every = config.train.eval_every_epochs * steps_per_epoch
    log_path = os.path.join(workdir, "metrics.jsonl")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        for step in range(1, total_steps + 1):
            model.set_lr(loop.tx_lr(config, steps_per_epoch, step - 1))
            batch = next(data)
            color, color_aug, pyramid = prepare(batch["images"], batch["jitter"])
            inputs = model.tensors(color, color_aug, pyramid, batch["K"][:, 0],
                                   batch["inv_K"][:, 0])
            metrics = model.step(inputs)
            if not np.isfinite(metrics["loss"]):
                raise FloatingPointError(f"non-finite loss at step {step}")
            record = {"step": step, **metrics, "elapsed_s": time.perf_counter() - start}
            if eval_every and step % eval_every == 0 and step < total_steps:
                val = loop.evaluate(predictor, config, "val", workdir,
                                    config.train.get("eval_max_images"))
                record.update({f"val/{k}": v for k, v in val.items() if np.isscalar(v)})
                print(f"step {step}: val abs_rel {val['abs_rel']:.4f}", flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
            if step % config.train.log_every == 0 or step == 1:
                print(f"step {step}/{total_steps}: loss {metrics['loss']:.4f}, |t| "
                      f"{metrics['pose/t_norm']:.3f}, mean depth {metrics['depth/mean']:.3f}",
                      flush=True)
    result = loop.evaluate(predictor, config, "test", workdir)
    print(f"\nReleased PyTorch Monodepth2, test split ({config.data.test_split}), median-scaled:")
    print(format_metrics_table(result))
    result["baseline_mean_depth"] = loop.mean_depth_baseline(config, workdir)
    result["train_seconds"] = time.perf_counter() - start
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    with open(os.path.join(workdir, "eval", "train_final_test_metrics.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    return result


def main(argv):
    del argv
    train(_CONFIG.value, _WORKDIR.value, _THREADS.value)


if __name__ == "__main__":
    from jdepth import allocator

    allocator.reexec_with_fast_allocator()
    app.run(main)
