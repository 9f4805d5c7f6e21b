"""Exports KITTI evaluation ground truth for a split file (Monodepth2's export_gt_depth.py).

    python tools/export_gt_depth.py --data_root ROOT --split_file FILE --output OUT.npz \
        [--split_kind eigen|eigen_benchmark]

OUT.npz holds `data`: an object array of float32 [H, W] depth maps at native image size, in
split-file order (0 = no ground truth), as Monodepth2's file does, plus `split_fingerprint` (sha1 of
the split's frames) and `image_sizes` [N, 2], which `jdepth.evaluate` checks so that GT of another
split or size is refused. Read it with `jdepth.data.kitti.load_gt_file` or
`np.load(OUT, allow_pickle=True)["data"]`.

  eigen            raw velodyne projected into the frame's camera, LiDAR forward distance
                   (generate_depth_map(..., vel_depth=True)); needs velodyne_points and calibration.
  eigen_benchmark  the KITTI improved ground truth, proj_depth/groundtruth/image_0X/*.png / 256.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from jdepth.data import kitti


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_root", required=True, help="KITTI raw root (holds <date>/ folders)")
    parser.add_argument("--split_file", required=True, help="split file, one frame per line")
    parser.add_argument("--output", required=True, help="output .npz path")
    parser.add_argument("--split_kind", default="eigen", choices=kitti.GT_KINDS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refs = kitti.read_split_file(args.split_file)
    if not refs:
        raise kitti.DataError(f"{args.split_file}: split file has no frames")
    start = time.time()
    depths = kitti.export_gt_depths(args.data_root, refs, kind=args.split_kind)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    kitti.save_gt_depths(args.output, depths, refs)
    valid = [int(np.count_nonzero(d)) for d in depths]
    print(
        f"-> wrote {len(depths)} {args.split_kind} ground-truth maps to {args.output} "
        f"({time.time() - start:.1f} s; valid pixels per map: min {min(valid)}, "
        f"median {int(np.median(valid))}, max {max(valid)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
