"""KITTI raw layout: split files, frame paths, file loaders and ground-truth export.

Layout under a data root (Monodepth2's, the official raw-data archives unpacked in place):

  <root>/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt
  <root>/<date>/<date>_drive_<NNNN>_sync/ (the drive folder) holding, per frame %010d:
      image_0{2,3}/data/%010d.png|jpg               colour images (camera 2 left, 3 right)
      velodyne_points/data/%010d.bin                LiDAR scans
      oxts/data/%010d.txt                           GPS/IMU records
      panoptic_0{2,3}/data/%010d.png                panoptic pseudo labels (jdepth addition)
      proj_depth/groundtruth/image_0{2,3}/%010d.png improved benchmark ground truth

A frame is named by a split-file line `<date>/<drive folder> <frame index> <side>`, side l/r (or
2/3) selecting camera 2/3. Every loader raises `DataError` (a ValueError) naming the file and the
problem; a missing file raises `MissingFileError`, which is also a FileNotFoundError. Nothing is
ever replaced by zeros silently (a wrong root gave all-black frames and abs_rel 0.454 in
manydepth#4).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from jdepth.data.calibration import (  # re-exported: the KITTI reader API lives here
    CameraCalibration,
    DataError,
    MissingFileError,
    load_camera_calibration,
    normalised_intrinsics,
    read_calib_file,
    require_file,
    scale_intrinsics,
)
from jdepth.data.velodyne import generate_depth_map, load_velodyne_points

__all__ = [
    "CameraCalibration", "DataError", "FrameRef", "GT_KINDS", "GroundTruth",
    "GroundTruthMismatchError", "IMAGE_EXTENSIONS", "SplitLine", "check_ground_truth",
    "drive_folder_hint", "load_gt_file", "read_image_size", "read_split_lines",
    "require_ground_truth_matches", "split_fingerprint",
    "MissingFileError", "OXTS_FIELDS", "benchmark_gt_path", "calib_dir", "export_gt_depths",
    "generate_depth_map", "image_path", "load_benchmark_depth", "load_camera_calibration",
    "load_gt_depths", "load_image", "load_panoptic", "load_velodyne_points", "neighbour_index",
    "normalised_intrinsics", "oxts_path", "panoptic_path", "read_calib_file", "read_oxts",
    "read_split_file", "save_gt_depths", "scale_intrinsics", "side_map", "side_to_camera",
    "velodyne_path",
]

log = logging.getLogger("jdepth")

side_map: dict[str, int] = {"2": 2, "3": 3, "l": 2, "r": 3}
_CANONICAL_SIDE = {"2": "l", "3": "r", "l": "l", "r": "r"}
# Auto-detection order: the raw KITTI PNGs first, Monodepth2's converted JPEGs second.
IMAGE_EXTENSIONS = ("png", "jpg")
GT_KINDS = ("eigen", "eigen_benchmark")


def side_to_camera(side: str) -> int:
    """Camera number (2 = left, 3 = right) of a split-file side token."""
    if side not in side_map:
        raise ValueError(f"unknown side {side!r}; expected one of {sorted(side_map)}")
    return side_map[side]


@dataclasses.dataclass(frozen=True)
class FrameRef:
    """One frame of a split file.

    Attributes:
      folder: drive folder relative to the root, `<date>/<date>_drive_<NNNN>_sync`.
      frame_index: frame number within the drive.
      side: 'l' or 'r' ('2' / '3' are normalised to these by `read_split_file`).
    """

    folder: str
    frame_index: int
    side: str

    def __post_init__(self):
        side_to_camera(self.side)

    @property
    def camera(self) -> int:
        return side_map[self.side]

    @property
    def date(self) -> str:
        return self.folder.split("/")[0]


# `<folder>/image_0{2,3}/data/<index>.<ext>`: the two-path lines of PackNet-style split files.
_IMAGE_PATH_RE = re.compile(
    r"^(?P<folder>.+)/image_0(?P<cam>[23])/data/(?P<index>\d+)\.(png|jpe?g)$"
)


def _parse_split_line(tokens: list[str]) -> FrameRef | None:
    if len(tokens) == 3:
        folder, index, side = tokens
        if side in _CANONICAL_SIDE and re.fullmatch(r"\d+", index):
            return FrameRef(folder.rstrip("/"), int(index), _CANONICAL_SIDE[side])
        return None
    if len(tokens) in (1, 2):
        # Image-path lines (e.g. kitti_tiny.txt: left and right image of one stereo pair): the
        # first path names the frame; the second, if any, is its stereo partner.
        match = _IMAGE_PATH_RE.match(tokens[0])
        if match:
            side = _CANONICAL_SIDE[match["cam"]]
            return FrameRef(match["folder"], int(match["index"]), side)
    return None


@dataclasses.dataclass(frozen=True)
class SplitLine:
    """One non-empty, non-comment line of a split file: its number, text and frame (None: malformed)."""

    line_no: int
    text: str
    ref: FrameRef | None


SPLIT_LINE_FORMAT = "'<date>/<drive folder> <frame index> <side l|r>' or an image path"


def read_split_lines(path: str) -> list[SplitLine]:
    """Every frame line of a split file, malformed ones included (`ref` None), for reporting all
    bad lines at once. Format as `read_split_file`.

    Raises:
      MissingFileError: the split file does not exist.
    """
    require_file(path, "split file")
    lines = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                lines.append(SplitLine(line_no, stripped, _parse_split_line(stripped.split())))
    return lines


def read_split_file(path: str) -> list[FrameRef]:
    """Reads a split file, one frame per non-empty line.

    Accepted line formats:
      `2011_09_26/2011_09_26_drive_0022_sync 473 r` (Monodepth2; zero-padded indices such as the
      Eigen test split's `0000000069` are fine, side l/r/2/3), and
      `<folder>/image_02/data/0000000001.png [<folder>/image_03/data/0000000001.png]` (image paths;
      the first path gives the frame and side). Lines starting with '#' are comments.

    Raises:
      MissingFileError: the split file does not exist.
      DataError: a line matches neither format; the message gives the file and line number.
    """
    refs = []
    for line in read_split_lines(path):
        if line.ref is None:
            raise DataError(f"{path}:{line.line_no}: expected {SPLIT_LINE_FORMAT}, got {line.text!r}")
        refs.append(line.ref)
    return refs


def split_fingerprint(refs: Sequence[FrameRef]) -> str:
    """sha1 (hex) of the frames of a split in order, independent of how the lines were written.

    Each frame counts as `<folder> <index> <l|r>` (no zero padding, canonical side), so
    `... 0000000069 l`, `... 69 2` and the image-path form of the same frame agree, while another
    split of the same length (e.g. val against test) does not.
    """
    text = "".join(f"{r.folder} {r.frame_index} {r.side}\n" for r in refs)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------- paths


def calib_dir(root: str, ref: FrameRef) -> str:
    """`<root>/<date>`: the folder holding the drive's calibration files."""
    return os.path.join(root, ref.date)


def _index(ref: FrameRef, offset: int, frame_index: int | None) -> int:
    return ref.frame_index + offset if frame_index is None else frame_index


def _frame_file(root: str, ref: FrameRef, subdir: str, index: int, ext: str) -> str:
    return os.path.join(root, ref.folder, subdir, f"{index:010d}.{ext}")


def image_path(
    root: str,
    ref: FrameRef,
    offset: int = 0,
    ext: str | None = None,
    *,
    frame_index: int | None = None,
) -> str:
    """Path of the colour image of `ref` (or of its neighbour `offset` frames away).

    Args:
      root: data root.
      ref: the frame; its side selects image_02 / image_03.
      offset: temporal offset added to `ref.frame_index` (ignored when `frame_index` is given).
      ext: 'png' or 'jpg' (a leading dot is accepted); None auto-detects, PNG first.
      frame_index: absolute frame index, e.g. one returned by `neighbour_index`.

    Raises:
      MissingFileError: with ext=None, when neither a .png nor a .jpg exists; lists the tried paths.
    """
    index = _index(ref, offset, frame_index)
    subdir = os.path.join(f"image_0{ref.camera}", "data")
    if ext is not None:
        return _frame_file(root, ref, subdir, index, ext.lstrip("."))
    tried = [_frame_file(root, ref, subdir, index, e) for e in IMAGE_EXTENSIONS]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise MissingFileError(f"{tried[0]}: image not found (tried {', '.join(tried)})")


def velodyne_path(
    root: str, ref: FrameRef, offset: int = 0, *, frame_index: int | None = None
) -> str:
    """`<root>/<folder>/velodyne_points/data/%010d.bin`."""
    subdir = os.path.join("velodyne_points", "data")
    return _frame_file(root, ref, subdir, _index(ref, offset, frame_index), "bin")


def oxts_path(
    root: str, ref: FrameRef, offset: int = 0, *, frame_index: int | None = None
) -> str:
    """`<root>/<folder>/oxts/data/%010d.txt`."""
    subdir = os.path.join("oxts", "data")
    return _frame_file(root, ref, subdir, _index(ref, offset, frame_index), "txt")


def panoptic_path(
    root: str, ref: FrameRef, offset: int = 0, *, frame_index: int | None = None
) -> str:
    """`<root>/<folder>/panoptic_0{cam}/data/%010d.png`."""
    subdir = os.path.join(f"panoptic_0{ref.camera}", "data")
    return _frame_file(root, ref, subdir, _index(ref, offset, frame_index), "png")


def benchmark_gt_path(
    root: str, ref: FrameRef, offset: int = 0, *, frame_index: int | None = None
) -> str:
    """`<root>/<folder>/proj_depth/groundtruth/image_0{cam}/%010d.png` (benchmark GT)."""
    subdir = os.path.join("proj_depth", "groundtruth", f"image_0{ref.camera}")
    return _frame_file(root, ref, subdir, _index(ref, offset, frame_index), "png")


def neighbour_index(
    root: str,
    ref: FrameRef,
    offset: int,
    on_missing: str = "raise",
    ext: str | None = None,
) -> int:
    """Index of the frame `offset` away from `ref`, with an explicit sequence-boundary rule.

    A frame exists when its colour image exists. When `ref.frame_index + offset` does not exist:
      on_missing='raise' (default): MissingFileError (a FileNotFoundError) naming the path and
        the cause: a wrong root, drive folder or camera, a centre frame the drive lacks, or a
        sequence boundary (`_missing_frame_message`). Monodepth2's split files already exclude
        boundary frames, so on a standard split this only fires on a wrong root or an incomplete
        download.
      on_missing='clamp': the nearest existing index between the requested one and `ref` (stepping
        toward the centre frame), i.e. the frame at a drive's first/last frame repeats itself.
        A repeated frame has zero motion, which the automask removes from the photometric loss.
    The centre frame itself (offset 0 or nothing left to clamp to) missing always raises.

    Returns:
      The absolute frame index to load.
    """
    if on_missing not in ("raise", "clamp"):
        raise ValueError(f"on_missing must be 'raise' or 'clamp', got {on_missing!r}")

    exts = IMAGE_EXTENSIONS if ext is None else (ext.lstrip("."),)
    subdir = os.path.join(f"image_0{ref.camera}", "data")

    def exists(index: int) -> bool:
        return index >= 0 and any(
            os.path.isfile(_frame_file(root, ref, subdir, index, e)) for e in exts
        )

    target = ref.frame_index + offset
    if exists(target):
        return target
    if on_missing == "clamp" and offset != 0:
        step = -1 if offset > 0 else 1
        for index in range(target + step, ref.frame_index + step, step):
            if exists(index):
                return index
    raise MissingFileError(_missing_frame_message(root, ref, offset, target, subdir, exts))


def _missing_frame_message(root, ref, offset, target, subdir, exts) -> str:
    """Why frame `target` of `ref`'s drive is missing, told apart by what does exist.

    An absent root, drive or camera folder means the root or the split line is wrong, never a
    sequence boundary; neither is a missing centre frame (offset 0). Only a neighbour before frame
    0 or past the drive's last frame is a boundary.
    """
    frame_dir = os.path.join(root, ref.folder, subdir)
    tried = "/".join(exts)
    if not os.path.isdir(root):
        return f"{root}: data root not found (config.data.root / --data_root)"
    if not os.path.isdir(os.path.join(root, ref.folder)):
        return (f"{os.path.join(root, ref.folder)}: drive folder not found: the data root or the "
                f"split line is wrong ({drive_folder_hint(root, ref.folder)})")
    if not os.path.isdir(frame_dir):
        return (f"{frame_dir}: no such folder: the drive has no camera {ref.camera} images "
                f"(side {ref.side!r} of the split line)")
    if offset == 0:
        path = _frame_file(root, ref, subdir, target, exts[0])
        return (f"{path}: frame {target} of {ref.folder} not found (tried {tried}): the split "
                "line names a frame the drive does not have")
    if target < 0:
        return (f"{frame_dir}: frame {ref.frame_index} has no frame {target} (offset {offset:+d}): "
                "sequence boundary, the first frame of a drive has no previous frame; drop the "
                "line or set config.data.on_missing='clamp'")
    path = _frame_file(root, ref, subdir, target, exts[0])
    return (f"{path}: frame {target} (offset {offset:+d} from frame {ref.frame_index} of "
            f"{ref.folder}, tried {tried}) does not exist: sequence boundary or missing data; "
            "drop the line or set config.data.on_missing='clamp'")


def drive_folder_hint(root: str, folder: str) -> str:
    """A guess at why `<root>/<folder>` does not exist, for error messages."""
    drive = os.path.basename(folder.rstrip("/"))
    if "/" not in folder:
        date = folder[:10]
        return (f"the split line's folder {folder!r} has no date folder: expected "
                f"'{date}/{folder}'")
    if os.path.isdir(os.path.join(root, drive)):
        return (f"{os.path.join(root, drive)} exists, so the data root is one level too deep: "
                f"use {os.path.dirname(os.path.abspath(root))}")
    date = folder.split("/")[0]
    if os.path.isdir(os.path.join(root, date)):
        return f"{os.path.join(root, date)} exists but has no {drive}: an incomplete download?"
    try:
        entries = sorted(os.listdir(root))[:5]
    except OSError:
        entries = []
    return f"the data root has no {date} folder (it holds {entries or 'nothing'})"


# --------------------------------------------------------------------------------------- loaders


def _open_decoded(path: str, what: str) -> Image.Image:
    """Opens an image and forces a full decode, so truncated files fail here, not later."""
    require_file(path, what)
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise DataError(f"{path}: cannot decode {what}: {exc}") from exc
    return img


def load_image(path: str) -> np.ndarray:
    """Reads a colour image as uint8 [H, W, 3]; grayscale, palette and RGBA are converted to RGB.

    Raises:
      MissingFileError: the file does not exist.
      DataError: the file is not a decodable image, or is truncated.
    """
    with _open_decoded(path, "image") as img:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        return np.array(rgb, dtype=np.uint8)


# Field names of the 30 values of a KITTI raw oxts line (devkit dataformat.txt; its second 'ay'
# is the z acceleration, named 'az' here).
OXTS_FIELDS = (
    "lat", "lon", "alt", "roll", "pitch", "yaw", "vn", "ve", "vf", "vl", "vu",
    "ax", "ay", "az", "af", "al", "au", "wx", "wy", "wz", "wf", "wl", "wu",
    "pos_accuracy", "vel_accuracy", "navstat", "numsats", "posmode", "velmode", "orimode",
)


def read_oxts(path: str) -> dict[str, float]:
    """Reads one KITTI oxts record (GPS/IMU) as {field: value}, fields as `OXTS_FIELDS`.

    Units: degrees for lat/lon, metres, radians, m/s (vf = forward speed), m/s^2, rad/s.

    Raises:
      MissingFileError, DataError (non-numeric values or not exactly 30 values).
    """
    require_file(path, "oxts record")
    with open(path, "r", encoding="utf-8") as f:
        tokens = f.read().split()
    try:
        values = [float(t) for t in tokens]
    except ValueError as exc:
        raise DataError(f"{path}: oxts record has a non-numeric value ({exc})") from exc
    if len(values) != len(OXTS_FIELDS):
        raise DataError(
            f"{path}: oxts record has {len(values)} values, expected {len(OXTS_FIELDS)}"
        )
    return dict(zip(OXTS_FIELDS, values))


def load_panoptic(path: str) -> np.ndarray:
    """Reads a panoptic label PNG as int32 [H, W] Cityscapes panoptic ids.

    Accepts a single-channel PNG (8 or 16 bit, id stored directly) or an RGB PNG with
    id = R + 256 * G + 256^2 * B (the Cityscapes / COCO panoptic encoding).

    Raises:
      MissingFileError, DataError (undecodable, or a mode such as palette/RGBA that holds no ids).
    """
    with _open_decoded(path, "panoptic label PNG") as img:
        if img.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
            return np.array(img).astype(np.int32)
        if img.mode == "RGB":
            rgb = np.array(img).astype(np.int32)
            return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        raise DataError(
            f"{path}: panoptic PNG has mode {img.mode!r}; expected 8/16-bit grayscale ids or "
            "RGB-encoded ids (R + 256 G + 256^2 B)"
        )


def load_benchmark_depth(path: str) -> np.ndarray:
    """Reads a KITTI depth-benchmark PNG (uint16 depth * 256) as float32 metres [H, W]; 0 = invalid.

    Raises:
      MissingFileError, DataError (undecodable or not a 16-bit PNG).
    """
    with _open_decoded(path, "benchmark depth PNG") as img:
        if img.mode not in ("I", "I;16", "I;16B", "I;16L"):
            raise DataError(f"{path}: depth PNG has mode {img.mode!r}; expected 16-bit grayscale")
        return np.array(img).astype(np.float32) / 256.0


# --------------------------------------------------------------------------- ground-truth export


def export_gt_depths(root: str, refs: Sequence[FrameRef], kind: str = "eigen") -> list[np.ndarray]:
    """Evaluation ground truth for each frame, in `refs` order (Monodepth2's export_gt_depth.py).

    Args:
      root: data root.
      refs: frames, typically `read_split_file(<split>/test_files.txt)`.
      kind: 'eigen': projected raw velodyne, `generate_depth_map(..., vel_depth=True)` (LiDAR
        forward distance); 'eigen_benchmark': the improved ground truth PNGs / 256. Both use the
        frame's own camera (the reference always uses camera 2; every line of both splits is 'l').

    Returns:
      list of float32 [H, W] maps at native image size; 0 = no ground truth.
    """
    if kind not in GT_KINDS:
        raise ValueError(f"unknown ground-truth kind {kind!r}; expected one of {GT_KINDS}")
    depths = []
    for ref in refs:
        if kind == "eigen":
            depth = generate_depth_map(
                calib_dir(root, ref), velodyne_path(root, ref), cam=ref.camera, vel_depth=True
            )
        else:
            depth = load_benchmark_depth(benchmark_gt_path(root, ref))
        depths.append(depth.astype(np.float32))
    return depths


GT_FILE_FORMAT = 2  # 1: `data` only (Monodepth2's layout); 2: + split fingerprint and sizes


@dataclasses.dataclass
class GroundTruth:
    """Evaluation ground truth of a split, as read from (or written to) a GT npz.

    Attributes:
      depths: float32 [H, W] per frame, in split order; 0 = no ground truth.
      path: the file it came from (None: computed in memory).
      split_fingerprint: `split_fingerprint` of the split it was exported from; None for files
        written by Monodepth2 or an older jdepth, which can be checked only by count and size.
      image_sizes: int [N, 2] (height, width) of each frame's image at export, or None.
    """

    depths: list[np.ndarray]
    path: str | None = None
    split_fingerprint: str | None = None
    image_sizes: np.ndarray | None = None

    # List-like, so callers written for a list of maps keep working.
    def __len__(self) -> int:
        return len(self.depths)

    def __iter__(self):
        return iter(self.depths)

    def __getitem__(self, index):
        return self.depths[index]


class GroundTruthMismatchError(DataError):
    """A ground-truth file does not belong to the split it is scored on (another split, another
    frame count, or maps whose size is not the image's)."""


def save_gt_depths(path: str, depths: Iterable[np.ndarray], refs: Sequence[FrameRef] | None = None
                   ) -> None:
    """Writes depth maps as `np.savez_compressed(path, data=<object array>, ...)`, atomically.

    An object array, filled element by element: `np.array(list_of_maps)` of maps with different
    sizes raises "inhomogeneous shape" on NumPy >= 1.24 (monodepth2#481), and with equal sizes it
    would silently become one 3-D array. With `refs` (the split's frames, in order) the file also
    holds `split_fingerprint` and `image_sizes` [N, 2] (the maps' (height, width), which export at
    native image size), so evaluation can tell GT of another split or size from the right one.
    `data` stays the Monodepth2 layout, so other readers still load it.
    """
    depths = [np.asarray(d, dtype=np.float32) for d in depths]
    data = np.empty(len(depths), dtype=object)
    for i, depth in enumerate(depths):
        data[i] = depth
    extra = {}
    if refs is not None:
        if len(refs) != len(depths):
            raise ValueError(f"{path}: {len(depths)} maps for {len(refs)} frames")
        extra = {
            "split_fingerprint": np.asarray(split_fingerprint(refs)),
            "image_sizes": np.array([d.shape[:2] for d in depths], np.int64).reshape(-1, 2),
            "format": np.asarray(GT_FILE_FORMAT),
        }
    # Through a file object so that numpy does not append '.npz' to a path without it; via a
    # temporary file so a killed export never leaves a truncated GT file behind.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, data=data, **extra)
    os.replace(tmp, path)


def load_gt_file(path: str) -> GroundTruth:
    """Reads a ground-truth npz (ours, with or without split metadata, or the reference's).

    Raises:
      MissingFileError, DataError (no 'data' key, or not a list of 2-D maps).
    """
    require_file(path, "ground-truth file")
    with np.load(path, allow_pickle=True) as npz:
        if "data" not in npz.files:
            raise DataError(f"{path}: no 'data' key (found {npz.files})")
        data = npz["data"]
        fingerprint = str(npz["split_fingerprint"]) if "split_fingerprint" in npz.files else None
        sizes = np.asarray(npz["image_sizes"]) if "image_sizes" in npz.files else None
    if data.dtype != object and data.ndim != 3:
        raise DataError(f"{path}: 'data' has shape {data.shape}; expected a list of [H, W] maps")
    depths = [np.asarray(d, dtype=np.float32) for d in data]
    for i, depth in enumerate(depths):
        if depth.ndim != 2:
            raise DataError(f"{path}: map {i} has shape {depth.shape}; expected [H, W]")
    return GroundTruth(depths, path, fingerprint, sizes)


def load_gt_depths(path: str) -> list[np.ndarray]:
    """Reads a ground-truth npz (ours or the reference's `gt_depths.npz`) as a list of float32 maps.

    Raises:
      MissingFileError, DataError (no 'data' key, or not a list of 2-D maps).
    """
    return load_gt_file(path).depths


def read_image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image from its header alone (nothing is decoded).

    Raises:
      MissingFileError, DataError (not an image PIL can identify).
    """
    require_file(path, "image")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DataError(f"{path}: not a readable image: {exc}") from exc
    return height, width


def check_ground_truth(
    gt: GroundTruth, refs: Sequence[FrameRef], split_file: str,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[str]:
    """Why `gt` cannot be scored on the split `refs` (read from `split_file`); empty: it can.

    Checks the count, the split fingerprint (when the file has one) and each map's size against
    the size the file recorded and against `image_sizes` ((height, width) of each frame's image).
    A map of another size would be scored after a resize that hides the mismatch (transposed or
    half-size maps scored AbsRel 0.64 against the right 0.62).

    Returns:
      one sentence per problem; a list of them is capped at the first 5 mismatching maps.
    """
    problems = []
    if len(gt) != len(refs):
        problems.append(f"{len(gt)} ground-truth maps but {len(refs)} frames in {split_file}; "
                        "was the GT exported from this split?")
    if gt.split_fingerprint is not None and gt.split_fingerprint != split_fingerprint(refs):
        problems.append(f"exported from another split than {split_file} (split fingerprint "
                        f"{gt.split_fingerprint[:12]} vs {split_fingerprint(refs)[:12]}); export "
                        "it from this split with tools/export_gt_depth.py")
    if problems:
        return problems  # sizes of another split's maps say nothing more
    bad = []
    for i, (depth, ref) in enumerate(zip(gt.depths, refs)):
        recorded = None if gt.image_sizes is None else tuple(int(v) for v in gt.image_sizes[i])
        actual = None if image_sizes is None else tuple(image_sizes[i])
        for what, size in (("recorded at export", recorded), ("of the image", actual)):
            if size is not None and depth.shape != size:
                bad.append(f"map {i} ({ref.folder} {ref.frame_index} {ref.side}) is "
                           f"{depth.shape[0]}x{depth.shape[1]} but the size {what} is "
                           f"{size[0]}x{size[1]}")
                break
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        problems.append("map sizes do not match the images (height x width): "
                        + "; ".join(bad[:5]) + more)
    return problems


def require_ground_truth_matches(
    gt: GroundTruth, refs: Sequence[FrameRef], split_file: str,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> None:
    """Raises GroundTruthMismatchError naming the GT file and every problem of
    `check_ground_truth`; a file without a split fingerprint only warns (one line)."""
    where = gt.path or "ground truth"
    problems = check_ground_truth(gt, refs, split_file, image_sizes)
    if problems:
        raise GroundTruthMismatchError(f"{where}: " + "; ".join(problems))
    if gt.split_fingerprint is None and gt.path is not None:
        log.warning(
            "WARNING: %s: no split fingerprint (Monodepth2's or an older jdepth's export); only "
            "its count and map sizes were checked against %s; export it again with "
            "tools/export_gt_depth.py to check that it belongs to the split", where, split_file)
