"""The panoptic terms against the photometric term at initialisation, per config.

  python tools/panoptic_loss_scale.py [--configs demo_panoptic,monodepth2_panoptic]
      [--batch_size 2] [--seed 0] [--set panoptic.temperature=1.0 ...]

For each config: the real initialisers (`init_variables`, as a run starts), one batch of the
synthetic KITTI set rendered at the config's resolution (exact panoptic labels; generated once
into the cache, jdepth/training/datasets.py), and ONE call of the recipe's own train step (an
SGD step with learning rate 0: the numbers a run logs at step 0). Printed: each weighted term of
the panoptic set loss (lambda_Pan x lambda_term x term, per stage), the contrastive term, the
photometric term and every term's ratio to the photometric one. The issue this answers (24,
item 6) is how far the auxiliary losses outweigh the depth objective when a run starts.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import numpy as np
import optax
from ml_collections import config_dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jdepth import config_files
from jdepth.config_files import sibling
from jdepth.data import pipeline
from jdepth.training import datasets, loop, recipes
from jdepth.training.state import TrainState

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
TERMS = (("ce", "class_weight"), ("mask", "mask_weight"), ("dice", "dice_weight"))


def load(name: str, batch_size: int, overrides=()):
    """The config with a small synthetic set at its own resolution and the given batch."""
    config = sibling(os.path.join(CONFIGS, "x.py"), name).get_config()
    for assignment in overrides:
        config_files.override(config, assignment)
    d = config.data
    # Synthetic frames in place of KITTI: the loss scale at step 0 needs labels, not real scenes.
    d.root = ""
    d.synthetic = config_dict.ConfigDict(
        {"seed": 0, "drives": 1, "frames": 6, "width": int(d.width), "height": int(d.height)})
    d.num_workers = 0
    config.train.batch_size = batch_size
    return datasets.resolve_data(config, workdir="")


def first_batch(config, batch_size: int) -> dict:
    dataset = pipeline.make_dataset(loop.pipeline_config(config), config.data.train_split,
                                    batch_size=batch_size, seed=0, train=True)
    return next(iter(dataset))


def step_zero_metrics(config, batch: dict, seed: int) -> dict[str, float]:
    """The metrics of the recipe's train step at initialisation (nothing is updated)."""
    recipe = recipes.get(config.recipe)
    networks = recipe.build_networks(config, bn_axis_name=None)
    params, batch_stats = recipe.init_variables(networks, config, jax.random.PRNGKey(seed))
    state = TrainState.create(params, batch_stats, optax.sgd(0.0))
    step = jax.jit(functools.partial(recipe.train_step, networks=networks, config=config,
                                     axis_name=None))
    _, metrics = step(state, jax.tree_util.tree_map(np.asarray, batch), jax.random.PRNGKey(seed))
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def report(name: str, config, metrics: dict[str, float]) -> list[tuple[str, float]]:
    """(label, weighted value) rows: photometric, smoothness, the panoptic terms, contrastive."""
    pan = config.panoptic
    rows = [("photometric", metrics["photometric"]), ("smoothness", metrics["smoothness"])]
    stages = sorted({k.split("/")[1].split("_")[0] for k in metrics
                     if k.startswith("panoptic/s") and k.split("_")[-1] in ("ce", "mask", "dice")})
    for stage in stages:
        for term, weight in TERMS:
            key = f"panoptic/{stage}_{term}"
            if key in metrics:
                factor = pan.weight * pan[weight]
                label = (f"panoptic {stage} {term} ({pan.weight:g} x {pan[weight]:g} x "
                         f"{metrics[key]:.4f})")
                rows.append((label, factor * metrics[key]))
    rows.append((f"panoptic total (lambda_Pan {pan.weight:g})", metrics.get("panoptic", 0.0)))
    if "contrastive" in metrics:
        label = (f"contrastive ({config.contrastive.weight:g} x "
                 f"{metrics['contrastive/unweighted']:.4f})")
        rows.append((label, metrics["contrastive"]))
    photometric = metrics["photometric"]
    print(f"\n{name}: {config.data.width}x{config.data.height}, batch {config.train.batch_size}, "
          f"temperature {pan.temperature:g}, normalisation "
          f"{pan.get('normalization', 'per_image')}, segments/image "
          f"{metrics.get('panoptic/segments', float('nan')):.1f}")
    print(f"  {'term':58s} {'weighted':>10s} {'/ photometric':>14s}")
    for label, value in rows:
        print(f"  {label:58s} {value:10.5f} {value / photometric:14.2f}")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="demo_panoptic,monodepth2_panoptic")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override, e.g. panoptic.temperature=1.0 (repeatable)")
    args = parser.parse_args(argv)
    for name in args.configs.split(","):
        config = load(name, args.batch_size, args.set)
        batch = first_batch(config, args.batch_size)
        report(name, config, step_zero_metrics(config, batch, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
