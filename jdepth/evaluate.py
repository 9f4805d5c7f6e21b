"""Evaluate a trained workdir on a KITTI split.

  python -m jdepth.evaluate --workdir W --data_root ROOT --split_file FILE --gt OUT.npz \
      [--no_median_scaling] [--split_kind eigen|eigen_benchmark]
      [--matching_mode lookup|static|zero_cost_volume] [--teacher]   (multi-frame recipes)

Prints the Monodepth2-style table and writes W/eval/metrics.json. Median scaling is on by default
(relative-depth models) and off by default for recipes that predict absolute depth. Ground truth
that does not belong to the split (another split's export, another frame count, maps of another
size than the images) is refused with `kitti.GroundTruthMismatchError` naming the GT file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jdepth.data import kitti
from jdepth.eval import depth_eval
from jdepth.eval.metrics import format_metrics_table
from jdepth.inference import DepthPredictor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--split_file", required=True)
    parser.add_argument("--gt", required=True, help="npz from tools/export_gt_depth.py")
    parser.add_argument("--split_kind", default="eigen", choices=["eigen", "eigen_benchmark"])
    scaling = parser.add_mutually_exclusive_group()
    scaling.add_argument("--no_median_scaling", action="store_true")
    scaling.add_argument("--median_scaling", action="store_true")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--output", default=None, help="default W/eval/metrics.json")
    parser.add_argument("--matching_mode", default="lookup", choices=depth_eval.MATCHING_MODES,
                        help="multi-frame recipes: frame t-1, static camera or zero cost volume")
    parser.add_argument("--teacher", action="store_true",
                        help="multi-frame recipes: evaluate the single-frame teacher instead")
    args = parser.parse_args(argv)

    # The ground truth is checked against the split before the model is restored: GT of another
    # split or size would otherwise be scored into plausible numbers.
    gt = kitti.load_gt_file(args.gt)
    depth_eval.check_split_gt(args.data_root, args.split_file, gt)
    predictor = DepthPredictor.from_workdir(args.workdir, args.step)
    if args.teacher:
        config = predictor.config
        config.eval.teacher = True
        predictor = DepthPredictor(config, predictor.params, predictor.batch_stats, predictor.extra)
    median_scaling = not predictor.absolute
    if args.no_median_scaling:
        median_scaling = False
    if args.median_scaling:
        median_scaling = True
    result = depth_eval.evaluate_split(
        predictor, args.data_root, args.split_file, gt,
        median_scaling=median_scaling, split_kind=args.split_kind,
        matching_mode=args.matching_mode,
    )
    result["median_scaling"] = median_scaling
    if predictor.lookup_offsets or args.teacher:
        result["matching_mode"] = "teacher" if args.teacher else args.matching_mode
    print(f"{args.workdir}: {args.split_file} ({'median-scaled' if median_scaling else 'absolute'})")
    print(format_metrics_table(result))
    out = args.output or os.path.join(args.workdir, "eval", "metrics.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
