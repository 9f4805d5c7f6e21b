"""Velodyne scans projected into sparse depth maps: the KITTI Eigen ground-truth rules."""

from __future__ import annotations

import os

import numpy as np
import pytest

from jdepth.data import kitti
from jdepth.data.velodyne import project_points_to_depth

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "kitti_tiny")
DATE = "2011_09_26"
DRIVE = "2011_09_26/2011_09_26_drive_0023_sync"


# A hand-made camera: 8 x 6 image, f = 2, principal point (4, 3), R_rect = I, and a velodyne that
# looks along the camera axis from 0.25 m behind it: camera (x, y, z) = (-y_v, -z_v, x_v + 0.25).
HAND_CAM_TO_CAM = """calib_time: 01-Jan-2012 00:00:00
S_rect_02: 8 6
R_rect_00: 1 0 0 0 1 0 0 0 1
P_rect_02: 2 0 4 0 0 2 3 0 0 0 1 0
"""
HAND_VELO_TO_CAM = """calib_time: 01-Jan-2012 00:00:00
R: 0 -1 0 0 0 -1 1 0 0
T: 0 0 0.25
"""
# velodyne point -> (u, v) = (2 * (-y) / z_cam + 4, 2 * (-z) / z_cam + 3), z_cam = x + 0.25;
# pixel = (round(v) - 1, round(u) - 1), rounding halves to even.
HAND_POINTS = np.array([
    [3.75, 0.0, 0.0],     # u=4,   v=3   -> (2, 3), z_cam 4
    [7.75, 0.0, 0.0],     # same pixel, farther: dropped by the min rule
    [-4.0, 0.0, 0.0],     # behind the lidar (z_cam -3.75 would win the min at (2, 3)): dropped
    [11.75, -14.4, 0.0],  # u=6.4 -> (2, 5), z_cam 12
    [3.75, -1.0, -2.0],   # u=4.5 -> round 4 (half to even), v=4 -> (3, 3)
    [3.75, -3.0, -2.0],   # u=5.5 -> round 6, v=4 -> (3, 5)
    [3.75, 7.2, 0.0],     # u=0.4 -> col -1: outside
    [3.75, -8.8, 4.0],    # u=8.4, v=1 -> (0, 7): the last column is inside thanks to the -1
    [3.75, -10.8, 4.0],   # u=9.4 -> col 8: outside
    [3.75, 0.0, -8.0],    # v=7 -> row 6: outside
], dtype=np.float32)


def _hand_calib_dir(tmp_path) -> str:
    date_dir = tmp_path / "hand"
    date_dir.mkdir()
    (date_dir / "calib_cam_to_cam.txt").write_text(HAND_CAM_TO_CAM)
    (date_dir / "calib_velo_to_cam.txt").write_text(HAND_VELO_TO_CAM)
    return str(date_dir)


@pytest.mark.parametrize("vel_depth", [False, True])
def test_generate_depth_map_hand_built(tmp_path, vel_depth):
    calib_dir = _hand_calib_dir(tmp_path)
    scan = np.concatenate([HAND_POINTS, np.full((len(HAND_POINTS), 1), 0.5, np.float32)], axis=1)
    scan.tofile(tmp_path / "scan.bin")
    depth = kitti.generate_depth_map(calib_dir, str(tmp_path / "scan.bin"), 2, vel_depth)
    expected = np.zeros((6, 8), np.float32)
    offset = 0.25 if not vel_depth else 0.0  # camera z = velodyne x + 0.25
    expected[2, 3] = 3.75 + offset
    expected[2, 5] = 11.75 + offset
    expected[3, 3] = expected[3, 5] = expected[0, 7] = 3.75 + offset
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, expected, rtol=1e-6)


def test_generate_depth_map_negative_depth_zeroed():
    # A point with velodyne x >= 0 but behind the camera plane keeps its (negative) camera z through
    # the min and is then zeroed, as in the reference.
    to_image = np.array([[2, 0, 4, 0], [0, 2, 3, 0], [0, 0, 1, 0]], float) @ np.array(
        [[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, -1.0], [0, 0, 0, 1]]
    )
    points = np.array([[0.5, 0.0, 0.0], [4.0, 0.0, 0.0]])  # z_cam -0.5 and 3, both at u=4, v=3
    depth = project_points_to_depth(points, to_image, (8, 6))
    assert depth[2, 3] == 0.0 and np.count_nonzero(depth) == 0
    np.testing.assert_array_equal(project_points_to_depth(points[1:], to_image, (8, 6))[2, 3], 3.0)


def _points_from_depth_map(depth: np.ndarray, calib) -> np.ndarray:
    """Velodyne points that project exactly onto the valid pixels of `depth` (camera z)."""
    rows, cols = np.nonzero(depth)
    z = depth[rows, cols].astype(np.float64)
    # Undo the matlab shift: pixel (r, c) is hit by the projection (u, v) = (c + 1, r + 1).
    pixel_h = np.stack([(cols + 1) * z, (rows + 1) * z, z], axis=1)
    rect = np.linalg.solve(calib.P_rect[:, :3], (pixel_h - calib.P_rect[:, 3]).T).T
    to_rect = calib.R_rect_00 @ calib.velo_to_cam
    rect_h = np.concatenate([rect, np.ones((len(rect), 1))], axis=1)
    return (np.linalg.solve(to_rect, rect_h.T).T)[:, :3]


def test_generate_depth_map_real_calibration_round_trip(tmp_path):
    """Real calibration, real packaged depth pattern: points rebuilt from it reproject exactly."""
    npz = os.path.join(TINY, DRIVE, "proj_depth", "velodyne", "image_02", "0000000000.npz")
    with np.load(npz) as f:
        reference = f["velodyne_depth"]
    calib = kitti.load_camera_calibration(os.path.join(TINY, DATE), 2)
    points = _points_from_depth_map(reference, calib).astype(np.float32)
    scan = np.concatenate([points, np.zeros((len(points), 1), np.float32)], axis=1)
    scan.tofile(tmp_path / "scan.bin")
    depth = kitti.generate_depth_map(os.path.join(TINY, DATE), str(tmp_path / "scan.bin"), 2)
    assert depth.shape == (375, 1242)
    np.testing.assert_array_equal(depth > 0, reference > 0)
    np.testing.assert_allclose(depth, reference, rtol=1e-5)
    forward = kitti.generate_depth_map(
        os.path.join(TINY, DATE), str(tmp_path / "scan.bin"), 2, vel_depth=True
    )
    np.testing.assert_array_equal(forward > 0, reference > 0)
    rows, cols = np.nonzero(reference)
    np.testing.assert_allclose(forward[rows, cols], points[:, 0], rtol=1e-6)
    # The lidar sits ~0.27 m behind the cameras (velo_to_cam T_z = -0.27): x exceeds camera z.
    assert -0.35 < np.median(reference[rows, cols] - points[:, 0]) < -0.2


def test_projection_matches_a_per_point_loop():
    """The vectorised min-depth rule against a plain per-point loop over the same rules."""
    rng = np.random.default_rng(5)
    calib = kitti.load_camera_calibration(os.path.join(TINY, DATE), 2)
    points = np.stack(
        [rng.uniform(-5, 40, 20000), rng.uniform(-12, 12, 20000), rng.uniform(-2.5, 1, 20000)], 1
    )
    width, height = calib.image_size
    for vel_depth in (False, True):
        expected = {}
        for x, y, z in points:
            if x < 0:
                continue
            u, v, w = calib.velo_to_image @ np.array([x, y, z, 1.0])
            col, row = int(np.round(u / w)) - 1, int(np.round(v / w)) - 1
            if 0 <= col < width and 0 <= row < height:
                value = x if vel_depth else w
                expected[row, col] = min(expected.get((row, col), np.inf), value)
        depth = project_points_to_depth(points, calib.velo_to_image, calib.image_size, vel_depth)
        dense = np.zeros((height, width), np.float32)
        for (row, col), value in expected.items():
            dense[row, col] = max(value, 0.0)
        assert len(expected) > 1000 and len(expected) < (points[:, 0] >= 0).sum()  # collisions
        np.testing.assert_array_equal(depth, dense)
