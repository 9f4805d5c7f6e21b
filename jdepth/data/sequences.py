"""Your own sequences as training data: sources, intrinsics, speeds, static frames and splits.

A sequence is a video file (decoded with PyAV) or a folder of ordered frames (PNG/JPEG, natural
order: frame_2 before frame_10). `config.data.sequences.path` names one video, one frame folder,
or a folder holding several of either (each one sequence). Beside each sequence SEQ (the video
path without its extension, or the frame folder's path) may sit:

  SEQ.intrinsics.txt   the camera: `fx fy cx cy` (or `fx,fy,cx,cy`) in pixels of the native frame
                       size, or a KITTI calibration file (`P_rect_02:` with `S_rect_02:`, as
                       calib_cam_to_cam.txt; or `P2:` as the odometry calib.txt, in native pixels).
                       Without it, `config.data.sequences.intrinsics` (the same two forms) is used
                       for every sequence.
  SEQ.speed.csv        optional: `frame index, speed in m/s` per line (a header line is allowed);
                       feeds the speed loss (jdepth/losses/velocity.py) for metric scale.
  SEQ.depth/           optional known depth for evaluation: `%06d.png` per frame index, uint16 of
                       depth * 256 (KITTI's encoding, 0 = none), e.g. from
                       tools/make_synthetic_kitti.py --format video.

Everything here is pure (numpy, no files written): jdepth/data/sequence_cache.py decodes and
writes the prepared tree that the KITTI pipeline then reads unchanged.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from jdepth.data import calibration, video
from jdepth.data.calibration import DataError

INTRINSICS_SUFFIX = ".intrinsics.txt"
SPEED_SUFFIX = ".speed.csv"
DEPTH_SUFFIX = ".depth"
HOLDOUTS = ("auto", "sequences", "ranges")
# Width of the grey thumbnails the static-frame test compares: coarse enough that sensor noise and
# codec artefacts average out, fine enough that a car moving 1 m still changes many of them.
THUMBNAIL_WIDTH = 64


@dataclasses.dataclass(frozen=True)
class Source:
    """One sequence: its frames' origin and its sidecar files (None where absent).

    Attributes:
      name: a folder-safe unique name (the file or folder name).
      path: the video file or frame folder.
      kind: 'video' or 'folder'.
      intrinsics: SEQ.intrinsics.txt, speed: SEQ.speed.csv, depth: the SEQ.depth folder.
    """

    name: str
    path: str
    kind: str
    intrinsics: str | None = None
    speed: str | None = None
    depth: str | None = None


def sidecar_stem(path: str) -> str:
    return os.path.splitext(path)[0] if os.path.isfile(path) else path.rstrip("/")


def _source(path: str, kind: str) -> Source:
    stem = sidecar_stem(path)

    def sidecar(suffix, is_dir=False):
        candidate = stem + suffix
        return candidate if (os.path.isdir if is_dir else os.path.isfile)(candidate) else None

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(stem))
    return Source(name, path, kind, sidecar(INTRINSICS_SUFFIX), sidecar(SPEED_SUFFIX),
                  sidecar(DEPTH_SUFFIX, is_dir=True))


def _has_images(folder: str) -> bool:
    return any(n.lower().endswith(video.IMAGE_EXTENSIONS) for n in os.listdir(folder))


def find_sources(path: str) -> list[Source]:
    """The sequences under `path` (module docstring), in natural order.

    Raises:
      MissingFileError: `path` does not exist.
      DataError: it holds neither frames nor videos (names the path and what it holds).
    """
    if not os.path.exists(path):
        raise calibration.MissingFileError(f"{path}: no such video or frame folder "
                                           "(config.data.sequences.path)")
    if os.path.isfile(path):
        if not path.lower().endswith(video.VIDEO_EXTENSIONS):
            raise DataError(f"{path}: not a video ({'/'.join(video.VIDEO_EXTENSIONS)}) nor a "
                            "folder of frames")
        return [_source(path, "video")]
    if _has_images(path):
        return [_source(path, "folder")]
    sources = []
    for name in sorted(os.listdir(path), key=video.natural_key):
        child = os.path.join(path, name)
        if video.is_video(child):
            sources.append(_source(child, "video"))
        elif os.path.isdir(child) and not name.endswith(DEPTH_SUFFIX) and _has_images(child):
            sources.append(_source(child, "folder"))
    if not sources:
        raise DataError(f"{path}: holds no video ({'/'.join(video.VIDEO_EXTENSIONS)}) and no "
                        f"folder of {'/'.join(video.IMAGE_EXTENSIONS)} frames")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: two sequences share a name ({names}); rename one")
    return sources


# ----------------------------------------------------------------------------------- intrinsics


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                      where: str) -> np.ndarray:
    """Normalised [4, 4] intrinsics (calibration.normalised_intrinsics) of pixel values at the
    native size `width` x `height`.

    Raises:
      DataError: naming `where`, for values calibration.intrinsics_problems refuses (focal
        lengths <= 0, a principal point outside the image, a non-finite value).
    """
    values = np.array([fx, fy, cx, cy], np.float64)
    if not np.all(np.isfinite(values)):
        raise DataError(f"{where}: intrinsics {values.tolist()} are not all finite")
    p_rect = np.array([[fx, 0.0, cx, 0.0], [0.0, fy, cy, 0.0], [0.0, 0.0, 1.0, 0.0]])
    calib = calibration.CameraCalibration(2, p_rect, np.eye(4), np.eye(4), (width, height))
    problems = calibration.intrinsics_problems(calib)
    if problems:
        raise DataError(f"{where}: " + "; ".join(p.replace("P_rect_02", "intrinsics")
                                                 .replace("S_rect_02", "the frames")
                                                 for p in problems))
    return calibration.normalised_intrinsics(calib)


def _four_values(text: str, where: str) -> tuple[float, float, float, float]:
    tokens = text.replace(",", " ").split()
    try:
        values = tuple(float(t) for t in tokens)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise DataError(f"{where}: expected 'fx fy cx cy' (4 numbers in pixels of the native "
                        f"frame size, or a KITTI calibration file), got {text.strip()[:80]!r}")
    return values


def read_intrinsics(spec: str, width: int, height: int, cam: int = 2) -> np.ndarray:
    """Normalised [4, 4] intrinsics from `fx,fy,cx,cy` text or a file (module docstring).

    Args:
      spec: 'fx,fy,cx,cy' (pixels of the native size) or the path of an intrinsics file.
      width, height: the sequence's native frame size.
      cam: the camera whose `P_rect_0{cam}` / `P{cam}` a KITTI calibration file is read for.

    A KITTI `calib_cam_to_cam.txt` carries its image size (`S_rect_0{cam}`), so its values are
    normalised by that size and fit frames of another size with the same field of view; the
    other forms are in pixels of the frames themselves.

    Raises:
      MissingFileError, DataError: naming the file (or the text) and the problem.
    """
    if not os.path.isfile(spec):
        if os.sep in spec or spec.endswith(".txt"):
            raise calibration.MissingFileError(f"{spec}: intrinsics file not found")
        return intrinsics_matrix(*_four_values(spec, f"intrinsics {spec!r}"), width, height,
                                 f"intrinsics {spec!r}")
    with open(spec, "r", encoding="utf-8", errors="replace") as f:
        text = f.read()
    if ":" not in text:
        return intrinsics_matrix(*_four_values(text, spec), width, height, spec)
    calib = calibration.read_calib_file(spec)  # raises naming file:line for a damaged line
    for key, size_key in ((f"P_rect_0{cam}", f"S_rect_0{cam}"), (f"P{cam}", None)):
        if key not in calib:
            continue
        if calib[key].size != 12:
            raise DataError(f"{spec}: key {key!r} has {calib[key].size} values, expected 12")
        p = calib[key].reshape(3, 4)
        size = (width, height)
        if size_key in calib and calib[size_key].size == 2:
            size = tuple(round(float(v)) for v in calib[size_key])
        k_norm = intrinsics_matrix(p[0, 0], p[1, 1], p[0, 2], p[1, 2], *size, spec)
        return k_norm
    raise DataError(f"{spec}: a KITTI calibration file needs 'P_rect_0{cam}:' (with "
                    f"'S_rect_0{cam}:') or 'P{cam}:'; found {sorted(calib)}")


# ---------------------------------------------------------------------------------------- speed


def read_speed_csv(path: str) -> dict[int, float]:
    """{frame index: speed in m/s} of a speed CSV (`index, speed` per line; one header allowed).

    Raises:
      MissingFileError, DataError: naming `path:line` for a line that is not two numbers, a
        non-integer or repeated index, or a speed that is negative or not finite.
    """
    calibration.require_file(path, "speed CSV")
    speeds: dict[int, float] = {}
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or cells[0].startswith("#"):
                continue
            try:
                index, speed = float(cells[0]), float(cells[1]) if len(cells) == 2 else None
            except ValueError:
                if line_no == 1:
                    continue  # a header
                index, speed = None, None
            if speed is None or index is None or index != int(index) or index < 0:
                raise DataError(f"{path}:{line_no}: expected 'frame index, speed in m/s', got "
                                f"{','.join(row)!r}")
            if not math.isfinite(speed) or speed < 0:
                raise DataError(f"{path}:{line_no}: speed {speed!r} must be finite and >= 0")
            if int(index) in speeds:
                raise DataError(f"{path}:{line_no}: frame {int(index)} is listed twice")
            speeds[int(index)] = speed
    if not speeds:
        raise DataError(f"{path}: speed CSV has no rows")
    return speeds


# ------------------------------------------------------------------------------- static frames


def thumbnail(frame: np.ndarray, width: int = THUMBNAIL_WIDTH) -> np.ndarray:
    """uint8 [h, width] grey thumbnail of a uint8 [H, W, 3] frame (box filter: an area mean)."""
    height = max(1, round(frame.shape[0] * width / frame.shape[1]))
    grey = Image.fromarray(frame).convert("L")
    return np.asarray(grey.resize((width, height), Image.Resampling.BOX))


def static_targets(thumbs: np.ndarray, offsets: Sequence[int], threshold: float) -> np.ndarray:
    """Which frames are static targets: a neighbour at one of `offsets` barely differs.

    Args:
      thumbs: uint8 [N, h, w] thumbnails (`thumbnail`) of one sequence, in order.
      offsets: the frame ids of a training sample, e.g. (0, -1, 1); 0 is ignored.
      threshold: mean absolute grey difference (0-255) below which two frames count as the same
        view. A pair that does not move carries no depth signal (the automask drops it at best,
        and a stopped camera pulls the pose toward zero motion at worst).

    Returns:
      bool [N]: True where some existing neighbour t + o differs from t by less than
      `threshold`. Frames without a neighbour (sequence ends) are False here; the split leaves
      them out as targets anyway.
    """
    thumbs = np.asarray(thumbs, np.int16)
    n = len(thumbs)
    static = np.zeros(n, bool)
    for o in offsets:
        if o == 0 or abs(o) >= n:
            continue
        lo, hi = max(0, -o), min(n, n - o)  # targets t with t + o inside the sequence
        mad = np.abs(thumbs[lo + o:hi + o] - thumbs[lo:hi]).mean(axis=(1, 2))
        static[lo:hi] |= mad < threshold
    return static


# --------------------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """Frames of each split as (sequence index, frame index), and what was left out.

    Attributes:
      train: training targets; each has every neighbour at `offsets` inside its sequence's
        training frames.
      val, test: held-out frames (evaluated one at a time, no neighbours).
      skipped_static: per sequence, training targets left out as static.
      holdout: 'sequences' or 'ranges', the rule used.
    """

    train: list[tuple[int, int]]
    val: list[tuple[int, int]]
    test: list[tuple[int, int]]
    skipped_static: list[int]
    holdout: str


def _held_out_count(fraction: float, n: int) -> int:
    return 0 if fraction <= 0 else max(1, round(fraction * n))


def plan_splits(lengths: Sequence[int], static: Sequence[np.ndarray], offsets: Sequence[int],
                holdout: str = "auto", val_fraction: float = 0.1, test_fraction: float = 0.1,
                names: Sequence[str] | None = None) -> SplitPlan:
    """Train / val / test frames with no neighbour leakage.

    Rules: 'sequences' holds out whole sequences (the last ones in order: test last, val before
    it); 'ranges' holds out the last frames of every sequence (test = the last `test_fraction`,
    val = the `val_fraction` before). 'auto' is 'sequences' from 3 sequences on, else 'ranges'.
    A training target t needs t + o inside its sequence's training frames for every offset o, so
    no held-out frame is ever a target or a neighbour of a training sample; static targets
    (`static_targets`) are skipped and counted.

    Args:
      lengths: frames per sequence.
      static: bool [N] per sequence.
      offsets: frame ids of a training sample, e.g. (0, -1, 1).
      holdout, val_fraction, test_fraction: as above.
      names: sequence names for error messages.

    Raises:
      DataError: a sequence too short for one sample, too few sequences to hold out, or no
        training target left (names the sequence or says which rule).
    """
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {HOLDOUTS}, got {holdout!r}")
    names = list(names) if names is not None else [f"sequence {i}" for i in range(len(lengths))]
    lo, hi = min(min(offsets), 0), max(max(offsets), 0)
    span = hi - lo + 1
    for name, n in zip(names, lengths):
        if n < span:
            raise DataError(f"{name}: {n} frame(s), too short: a training sample needs {span} "
                            f"consecutive frames (offsets {tuple(offsets)})")
    count = len(lengths)
    if holdout == "auto":
        holdout = "sequences" if count >= 3 else "ranges"
    train, val, test, skipped = [], [], [], []
    if holdout == "sequences":
        n_test = _held_out_count(test_fraction, count)
        n_val = _held_out_count(val_fraction, count)
        if count - n_test - n_val < 1:
            raise DataError(f"{count} sequence(s) cannot hold out {n_val} val and {n_test} test "
                            "sequence(s) and keep one for training; add sequences or use "
                            "config.data.sequences.holdout='ranges'")
        roles = ["train"] * (count - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
        train_end = [n if role == "train" else 0 for role, n in zip(roles, lengths)]
    else:
        roles = ["ranges"] * count
        train_end = []
        for name, n in zip(names, lengths):
            n_test, n_val = _held_out_count(test_fraction, n), _held_out_count(val_fraction, n)
            if n - n_test - n_val < span:
                raise DataError(f"{name}: {n} frames, too short to hold out {n_val} val and "
                                f"{n_test} test frames and keep {span} for training")
            train_end.append(n - n_test - n_val)
    for s, (role, n, end, moving) in enumerate(zip(roles, lengths, train_end, static)):
        targets = range(-lo, end - hi)  # every neighbour inside [0, end)
        kept = [t for t in targets if not moving[t]]
        skipped.append(len(targets) - len(kept))
        train.extend((s, t) for t in kept)
        if role == "val":
            val.extend((s, t) for t in range(n))
        elif role == "test":
            test.extend((s, t) for t in range(n))
        elif role == "ranges":
            n_test = _held_out_count(test_fraction, n)
            val.extend((s, t) for t in range(end, n - n_test))
            test.extend((s, t) for t in range(n - n_test, n))
    if not train:
        raise DataError(f"no training frame left: {sum(skipped)} target(s) were static "
                        "(config.data.sequences.static_threshold); lower the threshold or add "
                        "frames where the camera moves")
    return SplitPlan(train, val, test, skipped, holdout)
