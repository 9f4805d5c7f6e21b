"""Per-car depth errors of a trained run: parked against moving cars, base against top.

  python tools/instance_depth.py --workdir W [--split test] [--json PATH]

Issue 7's diagnostic for where the depth of cars goes wrong. For every thing instance of at least
1 % of the image in every frame of the split (synthetic set: exact dense depth, panoptic labels and
the list of moving cars), the run's median-scaled depth (one scale per image, as the region metrics
use) is compared with the truth over

  car   the instance's pixels;
  base  its lowest two image rows (where it stands on the road);
  top   its upper half (roof, cabin: the pixels next to the far background above it);
  road  the stuff pixels in the two rows below it, within its column span;

(base and road are the ground-contact prior's regions, jdepth/losses/ground_contact.py) as the
ratio of mean predicted to mean true depth (1 is right, above 1 too far). The scale is one per
image: the median of true over predicted depth on every pixel with truth in (1e-3, 80) m (the
region metrics also use the Garg crop). It prints the
median ratio of each, and the instance-mean pixel AbsRel, separately for parked and moving cars.
A piece-wise pose that helps should move the moving cars' numbers, not the parked ones'. Synthetic
data only: KITTI has neither the dense truth nor the list of moving cars.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax.numpy as jnp
import numpy as np

from jdepth.data import kitti
from jdepth.data import panoptic_labels as pl
from jdepth.eval import depth_eval, regions
from jdepth.losses import ground_contact

PARTS = ("car", "base", "top", "road")


def instance_ratios(depth: np.ndarray, gt: np.ndarray, ids: np.ndarray, moving: frozenset,
                    min_area_fraction: float = 0.01) -> list[dict]:
    """One row per thing instance of a frame: {"moving", "absrel", and a ratio per PARTS}.

    Args:
      depth: ``[H, W]`` predicted depth, already scaled to the truth.
      gt: ``[H, W]`` true depth, 0 where unknown.
      ids: ``[H, W]`` canonical panoptic ids.
      moving: panoptic ids of the moving instances.

    A part without valid pixels (a car cut by the frame has no road below it) gets NaN.
    """
    valid = gt > 0
    thing = pl.is_thing_class(pl.class_of(ids))
    row = np.arange(ids.shape[0])[:, None]
    out = []
    for instance in np.unique(ids[thing]):
        mask = ids == instance
        if mask.mean() < min_area_fraction or not np.any(mask & valid):
            continue
        rows = np.nonzero(mask.any(1))[0]
        base, road = (np.asarray(region[0, 0]) for region in ground_contact.contact_regions(
            jnp.asarray(mask[None, None]), jnp.asarray(thing[None])))
        parts = {"car": mask, "base": base,
                 "top": mask & (row <= (rows.min() + rows.max()) / 2), "road": road}
        entry = {"moving": int(instance) in moving}
        for name, part in parts.items():
            part = part & valid
            entry[name] = float(depth[part].mean() / gt[part].mean()) if part.any() else np.nan
        car = mask & valid
        entry["absrel"] = float(np.mean(np.abs(depth[car] - gt[car]) / gt[car]))
        out.append(entry)
    return out


def summarise(rows: list[dict]) -> dict:
    """Per group ("parked", "moving"): instances, the median of each part's ratio (NaNs left
    out) and the mean pixel AbsRel over the instances."""
    out = {}
    for name, moving in (("parked", False), ("moving", True)):
        group = [r for r in rows if r["moving"] == moving]
        if group:
            medians = {}
            for part in PARTS:
                values = np.array([r[part] for r in group], np.float64)
                values = values[np.isfinite(values)]
                medians[part] = float(np.median(values)) if len(values) else float("nan")
            out[name] = {"instances": len(group), "ratio_median": medians,
                         "absrel_mean": float(np.mean([r["absrel"] for r in group]))}
    return out


def collect(workdir: str, split: str) -> list[dict]:
    """Predicts the split with the run's last checkpoint and measures every instance."""
    from jdepth.inference import DepthPredictor

    predictor = DepthPredictor.from_workdir(workdir)
    root = predictor.config.data.root
    refs = kitti.read_split_file(predictor.config.data[f"{split}_split"])
    rows = []
    for ref, disp in zip(refs, depth_eval.predict_split(predictor, root, refs)):
        gt = kitti.load_benchmark_depth(kitti.benchmark_gt_path(root, ref))
        if gt.shape != disp.shape:
            raise ValueError(f"{kitti.benchmark_gt_path(root, ref)}: truth {gt.shape} against "
                             f"predictions {disp.shape}; this tool needs the synthetic set")
        moving = regions.moving_panoptic_ids(os.path.join(root, ref.folder))
        if moving is None:
            raise ValueError(f"{os.path.join(root, ref.folder)}: no {regions.META_FILE}; this "
                             "tool needs the synthetic set")
        ids = pl.canonical_ids(kitti.load_panoptic(kitti.panoptic_path(root, ref)).astype(
            np.int64))
        depth = 1.0 / disp
        valid = (gt > 1e-3) & (gt < 80.0)  # the region metrics' range
        depth = depth * np.median(gt[valid]) / np.median(depth[valid])
        rows += instance_ratios(depth, np.where(valid, gt, 0.0), ids, moving)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--json", help="also write the summary and every instance here")
    args = parser.parse_args(argv)
    rows = collect(args.workdir, args.split)
    summary = summarise(rows)
    for name, row in summary.items():
        ratios = "  ".join(f"{p} {v:.2f}" for p, v in row["ratio_median"].items())
        print(f"{args.workdir} {args.split} {name}: {row['instances']} instances; predicted / "
              f"true depth, median: {ratios}; pixel AbsRel {row['absrel_mean']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workdir": args.workdir, "split": args.split, **summary,
                       "instances": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
