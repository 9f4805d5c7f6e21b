"""KITTI raw calibration files and camera intrinsics.

A KITTI raw date folder holds `calib_cam_to_cam.txt` (per camera c: size S_rect_0c, rectifying
rotation R_rect_0c, projection P_rect_0c) and `calib_velo_to_cam.txt` (velodyne -> unrectified
camera 0: R, T). Each line is `key: v1 v2 ...`; real files also have a non-numeric `calib_time:`
line.

Pixel convention. P_rect maps a point in the rectified camera-0 frame to 0-based pixel coordinates
with pixel centres at integer positions (the KITTI C++ devkit convention, and this project's). The
depth-map projection in `jdepth.data.velodyne` applies an extra 1-pixel shift inherited from the
KITTI matlab code; the intrinsics here do not.

`DataError` is defined in this module because calibration is the lowest layer of the KITTI readers;
`jdepth.data.kitti.DataError` is the same class.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

CAM_TO_CAM_FILE = "calib_cam_to_cam.txt"
VELO_TO_CAM_FILE = "calib_velo_to_cam.txt"


class DataError(ValueError):
    """A dataset file exists but cannot be used (corrupt, truncated, wrong format, missing keys)."""


class MissingFileError(DataError, FileNotFoundError):
    """A dataset file is missing; caught by `except DataError` and `except FileNotFoundError`."""


def require_file(path: str, what: str) -> None:
    """Raises MissingFileError naming `path` unless it is an existing file."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: {what} not found")


def _parse_calib_lines(path: str) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, str]]]:
    """Numeric entries {key: float64 vector} and text entries {key: (line number, raw value)}.

    A line whose values are all non-numeric (the `calib_time:` timestamp) is a text entry. A line
    mixing numbers and text is a corrupt numeric entry and raises, so a damaged value is reported
    as damaged instead of as a missing key.
    """
    require_file(path, "calibration file")
    numeric: dict[str, np.ndarray] = {}
    text: dict[str, tuple[int, str]] = {}
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            if ":" not in line:
                raise DataError(f"{path}:{line_no}: expected 'key: values', got {line!r}")
            key, value = (part.strip() for part in line.split(":", 1))
            parsed = [_float_or_none(v) for v in value.split()]
            if parsed and all(v is None for v in parsed):
                text[key] = (line_no, value)
                continue
            bad = [tok for tok, v in zip(value.split(), parsed) if v is None]
            if bad:
                raise DataError(
                    f"{path}:{line_no}: key {key!r} has a non-numeric value {bad[0]!r}"
                )
            numeric[key] = np.array(parsed, dtype=np.float64)
    return numeric, text


def _float_or_none(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def read_calib_file(path: str) -> dict[str, np.ndarray]:
    """Parses a KITTI calibration text file.

    Args:
      path: e.g. `<root>/2011_09_26/calib_cam_to_cam.txt`.

    Returns:
      {key: float64 vector} for every line whose values are numeric. Lines whose values are all
      text (the `calib_time:` timestamp) are skipped, as the reference reader does.

    Raises:
      MissingFileError: the file does not exist.
      DataError: a non-empty line has no `key:` prefix, or mixes numbers and text (file:line).
    """
    return _parse_calib_lines(path)[0]


def _get(calib: dict[str, np.ndarray], path: str, key: str, size: int,
         text: dict[str, tuple[int, str]] | None = None) -> np.ndarray:
    if key not in calib:
        if text and key in text:
            line_no, raw = text[key]
            raise DataError(f"{path}:{line_no}: key {key!r} is not numeric: {raw!r}")
        raise DataError(f"{path}: missing key {key!r} (found: {sorted(calib)})")
    value = calib[key]
    if value.size != size:
        raise DataError(f"{path}: key {key!r} has {value.size} values, expected {size}")
    if not np.all(np.isfinite(value)):
        raise DataError(f"{path}: key {key!r} has a non-finite value: {value.tolist()}")
    return value


@dataclasses.dataclass(frozen=True)
class CameraCalibration:
    """Calibration of one rectified KITTI colour camera.

    Attributes:
      cam: camera number (2 = left colour, 3 = right colour).
      P_rect: [3, 4] projection of rectified camera-0 coordinates to this camera's pixels.
      R_rect_00: [4, 4] rectifying rotation of camera 0 (padded with a unit row/column).
      velo_to_cam: [4, 4] velodyne -> unrectified camera-0 rigid transform.
      image_size: (width, height) of the rectified images, from S_rect_0{cam}.
    """

    cam: int
    P_rect: np.ndarray
    R_rect_00: np.ndarray
    velo_to_cam: np.ndarray
    image_size: tuple[int, int]

    @property
    def velo_to_image(self) -> np.ndarray:
        """[3, 4] velodyne homogeneous point -> (u*z, v*z, z) in this camera's image."""
        return self.P_rect @ self.R_rect_00 @ self.velo_to_cam


def load_camera_calibration(calib_dir: str, cam: int) -> CameraCalibration:
    """Reads the calibration of camera `cam` from a KITTI date folder.

    Args:
      calib_dir: folder holding calib_cam_to_cam.txt and calib_velo_to_cam.txt (`<root>/<date>`).
      cam: 2 or 3 (any camera number whose keys exist works).

    Raises:
      MissingFileError: a calibration file is missing.
      DataError: a required key is missing, not numeric, not finite or has the wrong number of
        values, or the intrinsics are unusable (`intrinsics_problems`); the message names the file
        and the key.
    """
    cam_path = os.path.join(calib_dir, CAM_TO_CAM_FILE)
    velo_path = os.path.join(calib_dir, VELO_TO_CAM_FILE)
    cam2cam, cam_text = _parse_calib_lines(cam_path)
    velo2cam, velo_text = _parse_calib_lines(velo_path)

    p_rect = _get(cam2cam, cam_path, f"P_rect_0{cam}", 12, cam_text).reshape(3, 4)
    r_rect = np.eye(4)
    r_rect[:3, :3] = _get(cam2cam, cam_path, "R_rect_00", 9, cam_text).reshape(3, 3)
    width, height = _get(cam2cam, cam_path, f"S_rect_0{cam}", 2, cam_text)
    velo_to_cam = np.eye(4)
    velo_to_cam[:3, :3] = _get(velo2cam, velo_path, "R", 9, velo_text).reshape(3, 3)
    velo_to_cam[:3, 3] = _get(velo2cam, velo_path, "T", 3, velo_text)
    calib = CameraCalibration(
        cam=cam,
        P_rect=p_rect,
        R_rect_00=r_rect,
        velo_to_cam=velo_to_cam,
        image_size=(int(round(width)), int(round(height))),
    )
    problems = intrinsics_problems(calib)
    if problems:
        raise DataError(f"{cam_path}: " + "; ".join(problems))
    return calib


def intrinsics_problems(calib: CameraCalibration) -> list[str]:
    """What makes a camera's intrinsics unusable, one sentence per problem (empty: usable).

    Checks what the warp needs: a positive image size (S_rect), finite positive focal lengths and
    a principal point inside the image. A zero focal length made the intrinsics singular (a bare
    LinAlgError in the pipeline); intrinsics scaled by 100 put the principal point far outside the
    image and trained without error into a model that scored no pixel.
    """
    cam = calib.cam
    width, height = calib.image_size
    fx, fy = calib.P_rect[0, 0], calib.P_rect[1, 1]
    cx, cy = calib.P_rect[0, 2], calib.P_rect[1, 2]
    problems = []
    if width <= 0 or height <= 0:
        problems.append(f"S_rect_0{cam} image size {width}x{height} is not positive")
    if not (fx > 0 and fy > 0):
        problems.append(f"P_rect_0{cam} focal lengths fx={fx:g}, fy={fy:g} must be positive")
    if width > 0 and height > 0 and not (0 <= cx < width and 0 <= cy < height):
        problems.append(
            f"P_rect_0{cam} principal point ({cx:g}, {cy:g}) lies outside the {width}x{height} "
            f"image (S_rect_0{cam}); were the values scaled?"
        )
    return problems


# Monodepth2's KITTI intrinsics (its KITTIDataset.K): fx = 0.58 W, fy = 1.92 H, cx = W / 2,
# cy = H / 2, close to every KITTI raw camera; the fallback when no calibration comes with the
# images (tools/predict.py on videos and loose frames, jdepth/training/synthetic_step.py).
MONODEPTH2_NORMALISED_INTRINSICS = np.array(
    [[0.58, 0.0, 0.5, 0.0], [0.0, 1.92, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
MONODEPTH2_NORMALISED_INTRINSICS.flags.writeable = False


def normalised_intrinsics(calib: CameraCalibration) -> np.ndarray:
    """Resolution-independent 4x4 intrinsics, as Monodepth2 stores them.

    K is the left 3x3 block of P_rect (its 4th column, the stereo baseline offset, is not an
    intrinsic), with row 0 divided by the ORIGINAL image width and row 1 by the original height
    (monodepth2#6: normalise by the calibration resolution, not by the training resolution).

    Returns:
      [4, 4] float64: [[fx/W, 0, cx/W, 0], [0, fy/H, cy/H, 0], [0, 0, 1, 0], [0, 0, 0, 1]].
    """
    width, height = calib.image_size
    k = np.eye(4)
    k[:3, :3] = calib.P_rect[:, :3]
    k[0, :] /= width
    k[1, :] /= height
    return k


def scale_intrinsics(k_norm: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel intrinsics at a given resolution from normalised ones (Monodepth2 convention).

    Row 0 is multiplied by `width` and row 1 by `height`. With integer pixel centres the exact
    principal point after resizing W -> w would be (cx + 0.5) * w / W - 0.5; this plain scaling
    drops the half-pixel terms, an error of 0.5 * (1 - w / W) pixels (0.24 px at 1242 -> 640).
    We keep the approximation because the reference models were trained with it.

    Args:
      k_norm: [4, 4] normalised intrinsics (see `normalised_intrinsics`).
      width, height: target resolution in pixels.

    Returns:
      [4, 4] float64 pixel intrinsics.
    """
    k = np.array(k_norm, dtype=np.float64, copy=True)
    if k.shape != (4, 4):
        raise ValueError(f"scale_intrinsics expects a [4, 4] matrix, got shape {k.shape}")
    k[0, :] *= width
    k[1, :] *= height
    return k
