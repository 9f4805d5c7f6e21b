"""How much a cost volume can know: the image shift a depth error causes, from exact geometry.

A cost volume tells depths apart only through where a pixel lands in the lookup frame. If scaling a
pixel's true depth by ``1 + tolerance`` moves its projection by a small fraction of a matching
pixel, no matching feature can resolve the depth to that tolerance, however well it is trained.
``depth_error_shift`` measures that shift with the exact depth and the true camera motion;
``synthetic_relative_pose`` reads the motion of the synthetic drives (their
``synthetic_meta.json``). tools/cost_volume_accuracy.py reports both next to the trained cost
volume's accuracy, so a poor argmin can be told apart from an uninformative geometry.
"""

from __future__ import annotations

import json
import os

import numpy as np


def depth_error_shift(
    depth: np.ndarray, K: np.ndarray, T: np.ndarray, tolerance: float, downsample: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel flow to the lookup frame and its change when the depth is ``1 + tolerance`` x.

    Args:
      depth: ``[H, W]`` exact depth; pixels with depth <= 0 are skipped.
      K: ``[3, 3]`` (or ``[4, 4]``) pixel intrinsics at ``H x W``.
      T: ``[4, 4]`` transform from the current camera to the lookup camera.
      tolerance: relative depth error (0.1 = 10%).
      downsample: the cost volume's stride (4 for ManyDepth): shifts are in matching pixels.

    Returns:
      ``(flow, shift)``: ``[N]`` each, for the N valid pixels in row-major order, in matching
      pixels: the length of the flow and the distance between the projections of the true and
      the scaled depth.
    """
    K = np.asarray(K, np.float64)[:3, :3]
    ys, xs = np.nonzero(depth > 0)
    z = depth[ys, xs].astype(np.float64)
    pixels = np.stack([xs + 0.5, ys + 0.5, np.ones_like(z)])
    rays = np.linalg.inv(K) @ pixels

    def project(scale):
        points = T[:3, :3] @ (rays * z * scale) + T[:3, 3:4]
        uv = K @ points
        return uv[:2] / uv[2:]

    true = project(1.0)
    flow = np.linalg.norm(true - pixels[:2], axis=0) / downsample
    shift = np.linalg.norm(project(1.0 + tolerance) - true, axis=0) / downsample
    return flow, shift


def synthetic_relative_pose(drive_dir: str, frame: int, lookup: int) -> np.ndarray:
    """``[4, 4]`` current camera (``frame``) -> lookup camera transform of a synthetic drive.

    Raises:
      FileNotFoundError: the drive has no ``synthetic_meta.json`` (not a synthetic drive).
      ValueError: a frame outside the drive.
    """
    path = os.path.join(drive_dir, "synthetic_meta.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no synthetic_meta.json, so no exact camera poses")
    with open(path) as f:
        poses = json.load(f)["camera_to_world"]
    for index in (frame, lookup):
        if not 0 <= index < len(poses):
            raise ValueError(f"{path}: frame {index} outside the drive's {len(poses)} frames")

    def to_world(index):
        return np.vstack([np.asarray(poses[index], np.float64), [0.0, 0.0, 0.0, 1.0]])

    return np.linalg.inv(to_world(lookup)) @ to_world(frame)
