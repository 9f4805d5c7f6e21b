"""Splits for a real KITTI raw drive: training targets, then val and test frames held apart.

  python tools/prepare_kitti_drive.py --data_root /data/kitti_raw \
      --drive 2011_09_26/2011_09_26_drive_0013_sync --out /data/splits_0013 \
      [--train 1-109] [--test 112-140:2] [--val 113-141:4]

Ranges are `first-last[:step]` frame indices (inclusive). Without them the drive is cut by
position: training targets from frame 1 to 3 frames before the held-out block, which is the last
20 % of the drive; test = every 2nd frame of that block, val = every 4th odd one (for the periodic
evaluation only). The checks, before anything is written:
  * every training target has its neighbours (frame ids -1, +1) on disk;
  * no test or val frame is a training target or one of their neighbours (the photometric loss
    reads the neighbours, so a neighbour is trained on too);
  * every test and val frame has a velodyne scan (the Eigen protocol's ground truth);
  * the drive's calibration parses.
Writes `train_files.txt`, `val_files.txt`, `test_files.txt` and `split_summary.json` into `--out`;
train with `--config.data.root=DATA_ROOT --config.data.split_dir=OUT`. The drive itself can be
any KITTI raw drive: the README's "Real-data testbed" fetches one from a public repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jdepth.data import kitti


def parse_range(text: str) -> list[int]:
    """'a-b' or 'a-b:step' -> [a, a+step, ..., <= b]."""
    span, _, step = text.partition(":")
    first, _, last = span.partition("-")
    try:
        first_i, last_i = int(first), int(last or first)
        step_i = int(step or 1)
    except ValueError:
        raise SystemExit(f"range {text!r}: expected first-last[:step], e.g. 112-140:2") from None
    if step_i < 1 or last_i < first_i:
        raise SystemExit(f"range {text!r}: needs first <= last and step >= 1")
    return list(range(first_i, last_i + 1, step_i))


def drive_frames(data_root: str, drive: str, side: str = "l") -> list[int]:
    """Frame indices with a colour image for `side`, sorted."""
    folder = os.path.join(data_root, drive, f"image_0{kitti.side_to_camera(side)}", "data")
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder}: no such folder; --data_root must hold <date>/<drive>/ "
                         "(check the root is not one level too deep or too shallow)")
    frames = sorted(int(os.path.splitext(name)[0]) for name in os.listdir(folder)
                    if os.path.splitext(name)[1].lower() in (".png", ".jpg", ".jpeg"))
    if len(frames) < 10:
        raise SystemExit(f"{folder}: {len(frames)} frames; a testbed needs at least 10")
    return frames


def default_ranges(frames: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(train, val, test) by position: see the module docstring."""
    first, last = frames[1], frames[-2]  # the drive's ends have only one neighbour
    held_start = first + int(0.8 * (last - first))
    test = list(range(held_start + (held_start % 2), last + 1, 2))
    val = [f for f in range(test[0] + 1, last + 1, 4)]
    train = list(range(first, test[0] - 2))
    return train, val, test


def check_split(data_root: str, drive: str, train, val, test, side: str = "l") -> dict:
    """Raises SystemExit naming the first problem; returns a summary."""
    available = set(drive_frames(data_root, drive, side))
    problems = []
    for frame in train:
        for needed in (frame - 1, frame, frame + 1):
            if needed not in available:
                problems.append(f"training target {frame}: frame {needed} missing")
    seen_in_training = {f + d for f in train for d in (-1, 0, 1)}
    for name, frames in (("test", test), ("val", val)):
        overlap = sorted(set(frames) & seen_in_training)
        if overlap:
            problems.append(f"{name} frames {overlap[:5]}{'...' if len(overlap) > 5 else ''} are "
                            "training targets or their neighbours")
        for frame in frames:
            ref = kitti.FrameRef(drive, frame, side)
            if not os.path.isfile(kitti.velodyne_path(data_root, ref)):
                problems.append(f"{name} frame {frame}: no velodyne scan "
                                f"({kitti.velodyne_path(data_root, ref)})")
            if frame not in available:
                problems.append(f"{name} frame {frame}: no image")
    kitti.load_camera_calibration(os.path.join(data_root, drive.split("/")[0]),
                                  kitti.side_to_camera(side))
    if problems:
        raise SystemExit("split check failed:\n  " + "\n  ".join(problems))
    gap = min(test + val) - max(train)
    return {"drive": drive, "side": side, "frames_on_disk": len(available),
            "train": [min(train), max(train), len(train)],
            "val": [min(val), max(val), len(val)], "test": [min(test), max(test), len(test)],
            "gap_frames_between_last_training_target_and_first_held_out": gap}


def write_split(path: str, drive: str, frames, side: str) -> None:
    with open(path, "w") as f:
        f.writelines(f"{drive} {frame} {side}\n" for frame in frames)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--drive", required=True, help="<date>/<date>_drive_<NNNN>_sync")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train")
    parser.add_argument("--val")
    parser.add_argument("--test")
    parser.add_argument("--side", default="l", choices=["l", "r"])
    args = parser.parse_args(argv)
    drive = args.drive.strip("/")
    train, val, test = default_ranges(drive_frames(args.data_root, drive, args.side))
    train = parse_range(args.train) if args.train else train
    val = parse_range(args.val) if args.val else val
    test = parse_range(args.test) if args.test else test
    summary = check_split(args.data_root, drive, train, val, test, args.side)
    os.makedirs(args.out, exist_ok=True)
    for name, frames in (("train", train), ("val", val), ("test", test)):
        write_split(os.path.join(args.out, f"{name}_files.txt"), drive, frames, args.side)
    with open(os.path.join(args.out, "split_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
