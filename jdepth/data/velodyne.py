"""Velodyne scans and their projection into a sparse depth map (the KITTI Eigen ground truth).

`generate_depth_map` reproduces Monodepth2's kitti_utils projection, pixel for pixel, so that ground
truth exported here is interchangeable with the reference `gt_depths.npz`. Two quirks are kept on
purpose because every published Eigen number was computed with them:

* Rounding then subtracting 1: the KITTI matlab devkit indexes pixels from 1, and the reference
  subtracts 1 after rounding "to get the exact same value". In this project's 0-based,
  integer-centred convention a point therefore lands one pixel up and left of where P_rect puts it.
  `np.round` rounds halves to even, as the reference does.
* Depth is the velodyne forward coordinate x when `vel_depth=True` (the Eigen export), not the
  camera z; the two differ by the ~0.27 m lidar-camera offset and the small rotation.

One deliberate difference: where several points hit one pixel the reference finds collisions with
`sub2ind(shape, r, c) = r * (W - 1) + c - 1`, which also merges pixel (r, W-1) with (r+1, 0); we use
the correct flat index. Only the first and last image columns can differ, and both lie outside the
Garg crop used for evaluation.
"""

from __future__ import annotations

import os

import numpy as np

from jdepth.data.calibration import DataError, load_camera_calibration, require_file

_BYTES_PER_POINT = 16  # float32 x, y, z, reflectance


def load_velodyne_points(path: str) -> np.ndarray:
    """Reads a KITTI velodyne scan.

    Args:
      path: `.../velodyne_points/data/%010d.bin`, little-endian float32 records.

    Returns:
      float32 [N, 4]: x forward, y left, z up (metres, velodyne frame), reflectance.

    Raises:
      MissingFileError: the file does not exist.
      DataError: the size is not a multiple of 16 bytes (a truncated or foreign file).
    """
    require_file(path, "velodyne scan")
    size = os.path.getsize(path)
    if size % _BYTES_PER_POINT:
        raise DataError(
            f"{path}: velodyne scan has {size} bytes, not a multiple of {_BYTES_PER_POINT} "
            "(4 float32 per point); the file is truncated or not a KITTI .bin scan"
        )
    return np.fromfile(path, dtype="<f4").reshape(-1, 4).astype(np.float32, copy=False)


def project_points_to_depth(
    points: np.ndarray,
    velo_to_image: np.ndarray,
    image_size: tuple[int, int],
    vel_depth: bool = False,
) -> np.ndarray:
    """Projects velodyne points into a sparse depth map (see the module docstring for the rules).

    Args:
      points: [N, 3+] velodyne points (x forward, y left, z up); extra columns are ignored.
      velo_to_image: [3, 4] P_rect @ R_rect_00 @ velo_to_cam.
      image_size: (width, height) of the output.
      vel_depth: store the velodyne forward distance x instead of the camera depth z.

    Returns:
      float32 [height, width]; 0 where no point projects.
    """
    width, height = image_size
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    # The reference drops points behind the lidar (x < 0); x >= 0 is kept, so is x == 0.
    xyz = xyz[xyz[:, 0] >= 0]
    homogeneous = np.concatenate([xyz, np.ones((len(xyz), 1))], axis=1)
    projected = homogeneous @ np.asarray(velo_to_image, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        u = projected[:, 0] / projected[:, 2]
        v = projected[:, 1] / projected[:, 2]
    depth_values = xyz[:, 0] if vel_depth else projected[:, 2]

    col = np.round(u) - 1
    row = np.round(v) - 1
    # NaN / inf from z == 0 fail these comparisons and are dropped, as in the reference.
    keep = (col >= 0) & (row >= 0) & (col < width) & (row < height)
    flat = row[keep].astype(np.int64) * width + col[keep].astype(np.int64)

    nearest = np.full(height * width, np.inf)
    np.minimum.at(nearest, flat, depth_values[keep])
    nearest[~np.isfinite(nearest)] = 0.0
    # After taking the minimum, negative camera depths (points beside the lidar but behind the
    # camera plane) are zeroed, in that order, exactly like the reference.
    nearest[nearest < 0] = 0.0
    return nearest.reshape(height, width).astype(np.float32)


def generate_depth_map(
    calib_dir: str, velo_path: str, cam: int = 2, vel_depth: bool = False
) -> np.ndarray:
    """Sparse LiDAR depth map of one frame, as Monodepth2's `generate_depth_map`.

    Args:
      calib_dir: KITTI date folder with calib_cam_to_cam.txt and calib_velo_to_cam.txt.
      velo_path: the frame's velodyne .bin scan.
      cam: 2 (left colour) or 3 (right colour).
      vel_depth: True for the Eigen evaluation ground truth (velodyne forward x), False for camera
        z (the reference's training-time `depth_gt`).

    Returns:
      float32 [H, W] with (W, H) = S_rect_0{cam}; 0 = no point. (The reference reads S_rect_02
      whatever the camera; the two sizes are equal in every KITTI calibration.)
    """
    calib = load_camera_calibration(calib_dir, cam)
    points = load_velodyne_points(velo_path)
    return project_points_to_depth(points, calib.velo_to_image, calib.image_size, vel_depth)
