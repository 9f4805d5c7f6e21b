"""Vectorised analytic ray casting against yawed boxes and the ground plane.

All casting happens in a level sensor frame with KITTI camera axes (x right, y down, z forward) and
the ray origin at 0. A ray set is three direction arrays of one 2-D shape (the camera pixel grid,
the lidar beam x azimuth grid, or [1, N] for arbitrary rays). The returned ray parameter t is
in units of the direction vectors: depth z for camera rays (direction z = 1), range for unit lidar
rays.

Speed comes from culling: each box is only tested against the rectangle of the ray grid that can
see it (its exact projected bounds for the pinhole camera, conservative angular bounds for the
lidar), so the cost follows the pixel area of the boxes, not pixels x boxes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

GROUND = -2  # object index of ground-plane hits; -1 means no hit
_SIGNS = np.array([[(i & 1) * 2 - 1, (i >> 1 & 1) * 2 - 1, (i >> 2 & 1) * 2 - 1]
                   for i in range(8)], dtype=np.float64)
_EDGES = np.array([(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7),
                   (0, 4), (1, 5), (2, 6), (3, 7)])
_NEAR = 1e-3


@dataclasses.dataclass
class SensorBoxes:
    """Boxes expressed in a sensor frame: centre [M, 3], half extents [M, 3], cos/sin of yaw [M]."""

    center: np.ndarray
    half: np.ndarray
    cos: np.ndarray
    sin: np.ndarray

    def corners(self) -> np.ndarray:
        """[M, 8, 3] box corners; corner i has the sign bits x: i & 1, y: i >> 1 & 1, z: i >> 2."""
        local = _SIGNS[None] * self.half[:, None, :]
        c, s = self.cos[:, None], self.sin[:, None]
        x = c * local[..., 0] + s * local[..., 2]
        z = -s * local[..., 0] + c * local[..., 2]
        return np.stack([x, local[..., 1], z], axis=-1) + self.center[:, None, :]

    def to_local(self, index: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Sensor-frame points [3, N] -> the frame of box `index` [N] (origin at its centre)."""
        d = points - self.center.T[:, index]
        c, s = self.cos[index], self.sin[index]
        return np.stack([c * d[0] - s * d[2], d[1], s * d[0] + c * d[2]])


def to_sensor(center: np.ndarray, yaw: np.ndarray, half: np.ndarray,
              sensor_pos: np.ndarray, sensor_yaw: float) -> SensorBoxes:
    """Scene-frame boxes -> the frame of a level sensor at `sensor_pos`, heading `sensor_yaw`."""
    c, s = np.cos(sensor_yaw), np.sin(sensor_yaw)
    d = center - sensor_pos
    local = np.stack([c * d[:, 0] - s * d[:, 2], d[:, 1], s * d[:, 0] + c * d[:, 2]], axis=1)
    rel = yaw - sensor_yaw
    return SensorBoxes(local, half, np.cos(rel), np.sin(rel))


def camera_regions(boxes: SensorBoxes, K: np.ndarray, width: int, height: int) -> list:
    """Pixel rectangles that contain each box's projection, clipped to the image.

    The part of a box in front of the camera is a convex polytope whose vertices are the corners in
    front plus the edge crossings of the near plane; their projections bound it exactly.

    Returns:
      list of (box index, row slice, column slice) for boxes that are visible at all.
    """
    pts = boxes.corners()
    a, b = pts[:, _EDGES[:, 0]], pts[:, _EDGES[:, 1]]
    za, zb = a[..., 2] - _NEAR, b[..., 2] - _NEAR
    crossing = za * zb < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(crossing, za / (za - zb), 0.0)
    cut = a + frac[..., None] * (b - a)
    allp = np.concatenate([pts, cut], axis=1)
    valid = np.concatenate([pts[..., 2] > _NEAR, crossing], axis=1)
    z = np.where(valid, np.maximum(allp[..., 2], _NEAR), 1.0)
    u = K[0, 0] * allp[..., 0] / z + K[0, 2]
    v = K[1, 1] * allp[..., 1] / z + K[1, 2]
    bounds = []
    for coord, size in ((u, width), (v, height)):
        lo = np.where(valid, coord, np.inf).min(axis=1)
        hi = np.where(valid, coord, -np.inf).max(axis=1)
        bounds.append((np.clip(np.floor(lo), 0, size).astype(np.int64),
                       np.clip(np.ceil(hi) + 1, 0, size).astype(np.int64)))
    (c0, c1), (r0, r1) = bounds
    keep = np.nonzero((c1 > c0) & (r1 > r0))[0]
    return [(i, slice(r0[i], r1[i]), slice(c0[i], c1[i])) for i in keep]


def lidar_regions(boxes: SensorBoxes, elevations: np.ndarray, n_azimuth: int) -> list:
    """Conservative (beam rows, azimuth columns) rectangles for each box.

    Rows are beams sorted by decreasing elevation; column j looks at azimuth -pi + (j + 0.5) * step
    (azimuth = atan2(x, z), toward the right). A rectangle that wraps around +-pi is split in two.
    """
    step = 2 * np.pi / n_azimuth
    c, s, h = boxes.cos, boxes.sin, boxes.half
    cx, cy, cz = boxes.center.T
    # Horizontal distance from the sensor to the footprint rectangle, and to its far corner.
    ox, oz = -c * cx + s * cz, -s * cx - c * cz
    d_min = np.hypot(np.maximum(np.abs(ox) - h[:, 0], 0), np.maximum(np.abs(oz) - h[:, 2], 0))
    foot = boxes.corners()[:, [0, 1, 4, 5]]
    d_max = np.hypot(foot[..., 0], foot[..., 2]).max(axis=1)
    az_c = np.arctan2(cx, cz)
    rel = np.angle(np.exp(1j * (np.arctan2(foot[..., 0], foot[..., 2]) - az_c[:, None])))
    j0 = np.floor((az_c + rel.min(axis=1) + np.pi) / step - 0.5).astype(np.int64) - 1
    j1 = np.ceil((az_c + rel.max(axis=1) + np.pi) / step - 0.5).astype(np.int64) + 2
    top, bottom = -(cy - h[:, 1]), -(cy + h[:, 1])  # heights above the sensor
    e_hi = np.arctan2(top, np.where(top > 0, d_min, d_max)) + 1e-9
    e_lo = np.arctan2(bottom, np.where(bottom < 0, d_min, d_max)) - 1e-9
    r0 = np.searchsorted(-elevations, -e_hi, side="left")
    r1 = np.searchsorted(-elevations, -e_lo, side="right")
    regions = []
    for i in np.nonzero(r1 > r0)[0]:
        rows = slice(r0[i], r1[i])
        if d_min[i] < 1e-6 or j1[i] - j0[i] >= n_azimuth:
            regions.append((i, rows, slice(0, n_azimuth)))
            continue
        a, b = j0[i] % n_azimuth, j1[i] % n_azimuth or n_azimuth
        if a < b:
            regions.append((i, rows, slice(a, b)))
        else:
            regions += [(i, rows, slice(a, n_azimuth)), (i, rows, slice(0, b))]
    return regions


def _slab(origin: float, direction: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / direction
        t1, t2 = (-half - origin) * inv, (half - origin) * inv
    return np.minimum(t1, t2), np.maximum(t1, t2)


def cast(dirs: tuple[np.ndarray, np.ndarray, np.ndarray], boxes: SensorBoxes, regions: list,
         ground_y: float, t_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit along each ray against the ground plane y = ground_y and the boxes.

    Args:
      dirs: (dx, dy, dz) ray directions, each [R, C] float64.
      boxes: boxes in the sensor frame.
      regions: (box index, row slice, col slice) triples naming the rays to test per box.
      ground_y: height of the ground plane below the sensor (y is down).
      t_max: hits farther than this are dropped.

    Returns:
      t [R, C] (0 where nothing is hit) and object index [R, C] int64 (box index, GROUND or -1).
    """
    dx, dy, dz = dirs
    with np.errstate(divide="ignore"):
        t_best = np.where(dy > 0, ground_y / dy, np.inf)
    index = np.where(np.isfinite(t_best), GROUND, -1).astype(np.int64)
    centers, half = boxes.center, boxes.half
    for i, rows, cols in regions:
        c, s = boxes.cos[i], boxes.sin[i]
        cx, cy, cz = centers[i]
        hx, hy, hz = half[i]
        rx, ry, rz = dx[rows, cols], dy[rows, cols], dz[rows, cols]
        lo_x, hi_x = _slab(-c * cx + s * cz, c * rx - s * rz, hx)
        lo_z, hi_z = _slab(-s * cx - c * cz, s * rx + c * rz, hz)
        lo_y, hi_y = _slab(-cy, ry, hy)
        t_in = np.maximum(np.maximum(lo_x, lo_z), lo_y)
        t_out = np.minimum(np.minimum(hi_x, hi_z), hi_y)
        best = t_best[rows, cols]
        hit = (t_in <= t_out) & (t_in > 0) & (t_in < best)
        best[hit] = t_in[hit]
        index[rows, cols][hit] = i
    miss = t_best > t_max
    t_best[miss] = 0.0
    index[miss] = -1
    return t_best, index
