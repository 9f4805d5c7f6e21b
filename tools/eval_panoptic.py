"""Panoptic quality of a trained workdir, and depth accuracy near object boundaries.

  python tools/eval_panoptic.py --workdir W [--split test] [--max_images N] [--band_radius 3] \
      [--depth_gt velodyne|dense] [--json PATH]

PQ / SQ / RQ (all, things, stuff) of the panoptic head against the split's label PNGs (skipped for
runs without the head), then the 7 depth metrics on the whole image, on independently moving
objects (synthetic data) and on the band of pixels within `band_radius` pixels (at label
resolution) of a thing-instance edge (jdepth/eval/regions.py). Ground truth: the Eigen-protocol
velodyne depth (`velodyne`, what the depth evaluation uses) or the dense `proj_depth/groundtruth`
maps with the benchmark protocol (`dense`; exact depth on the synthetic set). Compare runs with and without the
panoptic branch at the same budget on the band numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jdepth.eval import regions
from jdepth.eval.metrics import format_metrics_table
from jdepth.inference import DepthPredictor
from jdepth.training import panoptic as panoptic_plugin


def _depth(predictor: DepthPredictor, split_file: str, max_images, radius: int, gt_kind: str,
           workdir: str) -> dict:
    return regions.evaluate_regions(
        predictor, predictor.config.data.root, split_file, gt_kind=gt_kind, band_radius=radius,
        median_scaling=not predictor.absolute, max_images=max_images,
        cache_dir=os.path.join(workdir, "eval"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--band_radius", type=int, default=3)
    parser.add_argument("--depth_gt", default="velodyne", choices=["velodyne", "dense"])
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    predictor = DepthPredictor.from_workdir(args.workdir)
    split_file = predictor.config.data[f"{args.split}_split"]
    out = {"panoptic": panoptic_plugin.predictor_panoptic_quality(predictor, split_file,
                                                                   args.max_images)}
    if out["panoptic"] is not None:
        res = out["panoptic"]
        print(f"PQ {res['pq']:.1f}  SQ {res['sq']:.1f}  RQ {res['rq']:.1f}  | things PQ "
              f"{res['pq_things']:.1f}  stuff PQ {res['pq_stuff']:.1f}  "
              f"({res['num_images']} images)")
        print("  per class: " + ", ".join(
            f"{k[3:]} {v:.1f}" for k, v in res.items() if k.startswith("pq/")))
    out["depth"] = _depth(predictor, split_file, args.max_images, args.band_radius, args.depth_gt,
                          args.workdir)
    for name, metrics in out["depth"].items():
        print(f"depth ({name}, {args.depth_gt} gt, {metrics['num_images']} images):")
        if metrics["num_images"]:
            print(format_metrics_table(metrics))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
