"""Writes the synthetic KITTI raw dataset (see jdepth/data/synthetic.py for the layout).

Example:
  python tools/make_synthetic_kitti.py --out data/synthetic_kitti --seed 0 --drives 10 \
      --frames 100 --width 640 --height 192
"""

from __future__ import annotations

import argparse
import sys

from jdepth.data.synthetic import make_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drives", type=int, default=3)
    parser.add_argument("--frames", type=int, default=50, help="frames per drive (>= 3)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--split_counts", type=int, nargs=3, default=None,
                        metavar=("TRAIN", "VAL", "TEST"), help="drives per split")
    parser.add_argument("--workers", type=int, default=1, help="drives rendered in parallel")
    args = parser.parse_args(argv)
    try:
        summary = make_dataset(args.out, seed=args.seed, drives=args.drives, frames=args.frames,
                               width=args.width, height=args.height,
                               split_counts=args.split_counts, workers=args.workers)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {summary['frames']} frames in {len(summary['drives'])} drives to {args.out} "
          f"({summary['seconds']:.1f} s, {summary['frames_per_minute']:.0f} frames/min); "
          f"split lines: {summary['splits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
