"""jdepth/eval/matching_signal.py: the shift a depth error causes, on hand-computed cases."""

import json

import numpy as np
import pytest

from jdepth.eval import matching_signal


def _forward_move(t: float) -> np.ndarray:
    # The lookup camera is t metres behind the current one: a point's z grows by t.
    T = np.eye(4)
    T[2, 3] = t
    return T


def test_forward_motion_flow_and_shift_by_hand():
    K = np.array([[100.0, 0, 8], [0, 100, 4], [0, 0, 1]])
    depth = np.full((8, 16), 10.0)
    flow, shift = matching_signal.depth_error_shift(depth, K, _forward_move(1.0), 0.1, 1)
    flow, shift = flow.reshape(8, 16), shift.reshape(8, 16)
    # Pixel (row 4, col 15): 7.5 px right of the principal point, 0.5 px below it.
    # u - cx = 7.5 z / (z + t): flow 7.5 / 11 along x; with z = 11, 7.5 (11/12 - 10/11).
    offset = np.hypot(7.5, 0.5)
    assert flow[4, 15] == pytest.approx(offset * 1 / 11, rel=1e-9)
    assert shift[4, 15] == pytest.approx(offset * (11 / 12 - 10 / 11), rel=1e-9)
    # The focus of expansion moves least; a stride-4 cost volume sees a quarter of the shift.
    assert shift.min() == shift[3:5, 7:9].min()
    _, coarse = matching_signal.depth_error_shift(depth, K, _forward_move(1.0), 0.1, 4)
    np.testing.assert_allclose(coarse, shift.ravel() / 4)


def test_no_motion_gives_no_signal_and_invalid_depth_is_skipped():
    K = np.eye(3) * 50
    K[2, 2] = 1
    depth = np.full((4, 4), 5.0)
    depth[0, 0] = 0.0
    flow, shift = matching_signal.depth_error_shift(depth, K, np.eye(4), 0.1, 4)
    assert flow.shape == shift.shape == (15,)
    np.testing.assert_allclose(flow, 0, atol=1e-12)
    np.testing.assert_allclose(shift, 0, atol=1e-12)


def test_synthetic_relative_pose_reads_the_drive(tmp_path):
    poses = [np.eye(4)[:3].tolist(), np.hstack([np.eye(3), [[0], [0], [1.2]]]).tolist()]
    (tmp_path / "synthetic_meta.json").write_text(json.dumps({"camera_to_world": poses}))
    T = matching_signal.synthetic_relative_pose(str(tmp_path), frame=1, lookup=0)
    # The current camera is 1.2 m ahead: its points sit 1.2 m further from the lookup camera.
    np.testing.assert_allclose(T[:3, 3], [0, 0, 1.2])
    np.testing.assert_allclose(T[:3, :3], np.eye(3))
    with pytest.raises(ValueError, match="frame 5"):
        matching_signal.synthetic_relative_pose(str(tmp_path), frame=5, lookup=4)
    with pytest.raises(FileNotFoundError, match="synthetic_meta.json"):
        matching_signal.synthetic_relative_pose(str(tmp_path / "none"), frame=1, lookup=0)
