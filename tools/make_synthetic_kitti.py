"""Writes the synthetic KITTI raw dataset (see jdepth/data/synthetic.py for the layout).

Example:
  python tools/make_synthetic_kitti.py --out data/synthetic_kitti --seed 0 --drives 10 \
      --frames 100 --width 640 --height 192

With `--format video` the drives come out as plain videos instead, each with its intrinsics,
speed CSV and known depth (jdepth/data/synthetic_video.py): what configs/video.py trains on
(README "Train on your own video"). `--codec lossless` decodes to exactly the rendered frames.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

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
    parser.add_argument("--format", choices=("kitti", "video"), default="kitti",
                        help="kitti: the KITTI raw tree; video: one video per drive with "
                        "DRIVE.intrinsics.txt, DRIVE.speed.csv and DRIVE.depth/")
    parser.add_argument("--codec", choices=("h264", "lossless"), default="h264",
                        help="--format video: H.264 as a camera writes it, or lossless RGB")
    args = parser.parse_args(argv)
    kitti_out = args.out if args.format == "kitti" else tempfile.mkdtemp(prefix="synthetic_")
    try:
        summary = make_dataset(kitti_out, seed=args.seed, drives=args.drives, frames=args.frames,
                               width=args.width, height=args.height,
                               split_counts=args.split_counts, workers=args.workers)
        if args.format == "video":
            from jdepth.data import synthetic_video

            videos = synthetic_video.write_videos(kitti_out, args.out, codec=args.codec)
    except ValueError as error:
        parser.error(str(error))
    finally:
        if args.format == "video":
            shutil.rmtree(kitti_out, ignore_errors=True)
    if args.format == "video":
        print(f"wrote {len(videos)} videos of {args.frames} frames ({args.codec}) with "
              f"intrinsics, speed and depth to {args.out}: "
              f"{', '.join(os.path.basename(v) for v in videos)}")
        return 0
    print(f"wrote {summary['frames']} frames in {len(summary['drives'])} drives to {args.out} "
          f"({summary['seconds']:.1f} s, {summary['frames_per_minute']:.0f} frames/min); "
          f"split lines: {summary['splits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
