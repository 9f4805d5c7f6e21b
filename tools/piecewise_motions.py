"""Residual instance motions of a trained piece-wise run: parked against moving cars.

  python tools/piecewise_motions.py --workdir W [--batches 6] [--json PATH]

Issue 7's diagnostic. A residual instance motion M (instance transform = ego @ M) should stay at
identity for a parked car and carry a moving car's own motion. The tool restores the run's last
checkpoint, runs its ego and instance pose calls on every fifth training batch (eval order, no
augmentation) as the train step does (train-mode BatchNorm; with `instance_input` "ego_warped" the
depth net's depth makes the ego view), and reports, over the matched instance slots, |t_M| / |t_ego|
and M's rotation, split by the synthetic drive's meta file (which panoptic ids move). Slots are
labelled by the majority panoptic id under their target mask. Synthetic data only: KITTI has no
such meta file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jdepth import geometry
from jdepth.data import kitti, pipeline
from jdepth.eval import regions
from jdepth.training import checkpoint, loop, monodepth, piecewise, recipes


def slot_motions(residual_T: np.ndarray, global_T: np.ndarray, valid: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """|t_M| / |t_ego| and M's rotation angle (degrees) of every valid slot.

    Args:
      residual_T: ``[B, M, 4, 4]`` residual motions.
      global_T: ``[B, 4, 4]`` ego transforms of the pairs.
      valid: ``[B, M]`` bool.

    Returns:
      (ratios ``[N]``, angles ``[N]``) in ``np.nonzero(valid)`` order.
    """
    ego = np.linalg.norm(global_T[:, :3, 3], axis=-1)
    b, m = np.nonzero(valid)
    ratios = np.linalg.norm(residual_T[b, m, :3, 3], axis=-1) / np.maximum(ego[b], 1e-8)
    R = residual_T[b, m, :3, :3].astype(np.float64)
    # atan2(sin, cos): arccos of the trace alone loses angles under ~0.03 deg in float32.
    sin = np.linalg.norm(np.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0],
                                   R[:, 1, 0] - R[:, 0, 1]], -1), axis=-1) / 2
    angles = np.degrees(np.arctan2(sin, (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0))
    return ratios, angles


def majority_ids(panoptic: np.ndarray, masks: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[N]`` most frequent panoptic id under each valid slot's mask (``[B, H, W]``,
    ``[B, M, H, W]``, ``[B, M]``), in ``np.nonzero(valid)`` order."""
    ids = []
    for b, m in zip(*np.nonzero(valid)):
        values, counts = np.unique(panoptic[b][masks[b, m]], return_counts=True)
        ids.append(int(values[np.argmax(counts)]) if len(values) else -1)
    return np.asarray(ids, np.int64)


def summarise(moving: np.ndarray, ratios: np.ndarray, angles: np.ndarray) -> dict:
    """Per group ("parked", "moving"): slots, median and 90th percentile ratio, median angle."""
    out = {}
    for name, sel in (("parked", ~moving), ("moving", moving)):
        if sel.any():
            out[name] = {"slots": int(sel.sum()),
                         "ratio_median": float(np.median(ratios[sel])),
                         "ratio_p90": float(np.percentile(ratios[sel], 90)),
                         "rotation_median_deg": float(np.median(angles[sel]))}
    return out


def collect(workdir: str, batches: int) -> tuple[dict, int]:
    """Restores `workdir` and measures its residual motions (module docstring)."""
    config = checkpoint.load_config(workdir)
    if not piecewise.is_enabled(config) or config.piecewise.get(
            "instance_pose", "residual") not in piecewise.RESIDUAL_MODES:
        raise ValueError(f"{workdir}: not a piece-wise run with residual instance motions")
    recipe = recipes.get(config.recipe)
    networks = recipe.build_networks(config, bn_axis_name=None)
    shapes = jax.eval_shape(lambda: recipe.init_variables(networks, config, jax.random.key(0)))
    model, step = checkpoint.restore_params(
        workdir, {"params": shapes[0], "batch_stats": shapes[1], "extra": {}})
    params, stats = model["params"], model["batch_stats"]
    instance_net = ((networks[piecewise.INSTANCE_NET], params[piecewise.INSTANCE_NET],
                     stats[piecewise.INSTANCE_NET]) if piecewise.INSTANCE_NET in networks else None)
    pcfg = loop.pipeline_config(config)
    split = config.data.train_split
    refs = kitti.read_split_file(split)
    ids = tuple(config.data.frame_ids)
    moving, ratios, angles = [], [], []
    dataset = pipeline.make_dataset(pcfg, split, batch_size=config.train.batch_size, seed=0,
                                    train=False)
    for k, batch in enumerate(iter(dataset)):
        if k // 5 >= batches:
            break
        if k % 5:  # every fifth batch: spread over the drives
            continue
        batch = jax.tree_util.tree_map(jnp.asarray, batch)
        frames, _, _, K, inv_K = monodepth.prepare_batch(batch, config)
        ego_view = None
        if piecewise.uses_ego_view(config.piecewise):  # its depth as the step makes it (train BN)
            (disps, _), _ = networks["depth"].apply(
                {"params": params["depth"], "batch_stats": stats["depth"]}, frames[0],
                train=True, mutable=["batch_stats"])
            ego_view = (geometry.disp_to_depth(
                disps[0], config.model.min_depth, config.model.max_depth)[1], K, inv_K)
        # The train step's own pose calls, at the restored step.
        motions = piecewise.train_poses(
            networks["pose"], params["pose"], stats["pose"], frames, batch, ids, config.piecewise,
            jnp.int32(step), instance_net=instance_net, ego_view=ego_view)[-1]
        panoptic = np.asarray(batch["panoptic"][:, ids.index(0)])
        drives = [refs[int(i)].folder for i in np.asarray(batch["index"])]
        for m in motions.values():
            valid = np.asarray(m.valid)
            r, a = slot_motions(np.asarray(m.residual_T), np.asarray(m.global_T), valid)
            slot_ids = majority_ids(panoptic, np.asarray(m.target_masks), valid)
            for (b, _), pid in zip(zip(*np.nonzero(valid)), slot_ids):
                movers = regions.moving_panoptic_ids(os.path.join(pcfg.root, drives[b]))
                if movers is None:
                    raise ValueError(f"{os.path.join(pcfg.root, drives[b])}: no "
                                     f"{regions.META_FILE}; this tool needs the synthetic set")
                moving.append(pid in movers)
            ratios.append(r)
            angles.append(a)
    return summarise(np.asarray(moving, bool), np.concatenate(ratios), np.concatenate(angles)), step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--batches", type=int, default=6, help="training batches measured")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args(argv)
    summary, step = collect(args.workdir, args.batches)
    for name, row in summary.items():
        print(f"{args.workdir} step {step} {name}: {row['slots']} slots; residual |t| / ego |t| "
              f"median {row['ratio_median']:.2f} p90 {row['ratio_p90']:.2f}; rotation median "
              f"{row['rotation_median_deg']:.3f} deg")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workdir": args.workdir, "step": step, **summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
