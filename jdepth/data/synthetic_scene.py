"""Procedural street scenes for the synthetic KITTI dataset: layout, ego path and object motion.

Scene frame: KITTI camera axes (x right, y down, z forward). The road runs along +z, its surface is
the plane y = CAMERA_HEIGHT and the ego camera moves in the plane y = 0. Every object is a box that
is axis-aligned in its own frame and yawed about the vertical axis; a box moves with a constant
velocity (zero for static objects), so `center(t) = center0 + velocity * t` holds for all of them.
A car is two boxes (body and cabin) that share one panoptic instance and one rigid motion.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CAMERA_HEIGHT = 1.65
FRAME_INTERVAL = 0.1
LANE_WIDTH = 3.5
CURB_HEIGHT = 0.15
# The scene is generated this far behind and ahead of the ego path (metres); the camera sees at most
# MAX_CAMERA_DEPTH ahead and the lidar MAX_LIDAR_RANGE around.
SCENE_BEHIND, SCENE_AHEAD = 140.0, 240.0

# Materials, each with a (texture, Cityscapes panoptic class) in synthetic_render.
ROAD, SIDEWALK, BUILDING, POLE, CANOPY, TRUNK, TERRAIN, CAR_BODY, CAR_CABIN = range(9)
# Cityscapes train ids: stuff pixels store the id itself, things store id * 1000 + instance.
CLASS_ROAD, CLASS_SIDEWALK, CLASS_BUILDING, CLASS_POLE = 0, 1, 2, 5
CLASS_VEGETATION, CLASS_TERRAIN, CLASS_SKY, CLASS_CAR = 8, 9, 10, 13

_FACADE_TINTS = np.array([[0.72, 0.42, 0.33], [0.80, 0.74, 0.62], [0.62, 0.62, 0.64],
                          [0.88, 0.86, 0.80], [0.55, 0.40, 0.35], [0.78, 0.66, 0.48]])
_CAR_TINTS = np.array([[0.92, 0.92, 0.92], [0.10, 0.10, 0.12], [0.62, 0.64, 0.67],
                       [0.70, 0.08, 0.07], [0.10, 0.22, 0.55], [0.30, 0.32, 0.35],
                       [0.85, 0.72, 0.20], [0.15, 0.40, 0.22]])


@dataclasses.dataclass
class EgoPath:
    """Smooth ego trajectory: gentle speed oscillation and a sinusoidal weave within the lane.

    z(t) = v0 t + a (sin(w t + p) - sin p);  x(z) = A sin(k z + q);  heading = atan(dx/dz).
    """

    v0: float
    speed_amp: float
    speed_freq: float
    speed_phase: float
    weave_amp: float
    weave_k: float
    weave_phase: float

    def state(self, t: np.ndarray) -> dict[str, np.ndarray]:
        """Position, heading and their time derivatives at times `t` (seconds, any shape).

        Returns:
          dict with x, z (metres), yaw (rad, positive turns toward +x = right), speed (m/s along the
          path), accel (m/s^2 along the path), yaw_rate (rad/s), lateral_accel (m/s^2, toward +x).
        """
        t = np.asarray(t, dtype=np.float64)
        arg = self.speed_freq * t + self.speed_phase
        z = self.v0 * t + self.speed_amp * (np.sin(arg) - np.sin(self.speed_phase))
        z_dot = self.v0 + self.speed_amp * self.speed_freq * np.cos(arg)
        z_ddot = -self.speed_amp * self.speed_freq**2 * np.sin(arg)
        phase = self.weave_k * z + self.weave_phase
        slope = self.weave_amp * self.weave_k * np.cos(phase)            # dx/dz
        curvature = -self.weave_amp * self.weave_k**2 * np.sin(phase)    # d2x/dz2
        stretch = np.sqrt(1.0 + slope**2)
        speed = z_dot * stretch
        yaw_rate = curvature * z_dot / stretch**2
        return dict(
            x=self.weave_amp * np.sin(phase), z=z, yaw=np.arctan(slope), speed=speed,
            accel=z_ddot * stretch + z_dot**2 * slope * curvature / stretch,
            yaw_rate=yaw_rate, lateral_accel=speed * yaw_rate)


@dataclasses.dataclass
class Scene:
    """All boxes of one drive plus the road description.

    Box arrays have a leading dimension M. `car` is the car index of a box (-1 for non-cars); the
    car arrays (leading dimension C) give each car's pose at t = 0, velocity and instance number.
    """

    center0: np.ndarray      # [M, 3] box centre at t = 0, scene frame
    velocity: np.ndarray     # [M, 3] m/s
    half: np.ndarray         # [M, 3] half extents in the box frame
    yaw: np.ndarray          # [M] rotation about +y (box frame -> scene frame)
    material: np.ndarray     # [M] int
    tint: np.ndarray         # [M, 3] albedo colour
    uv_offset: np.ndarray    # [M, 2] texture offset (metres) so equal boxes look different
    windows: np.ndarray      # [M, 4] facade window grid: spacing x, spacing y, fill x, fill y
    panoptic: np.ndarray     # [M] Cityscapes panoptic id
    car: np.ndarray          # [M] car index or -1
    car_origin0: np.ndarray  # [C, 3] car frame origin (ground centre of the footprint) at t = 0
    car_velocity: np.ndarray  # [C, 3]
    car_yaw: np.ndarray      # [C]
    car_instance: np.ndarray  # [C] instance number (panoptic id = 13000 + instance)
    car_size: np.ndarray     # [C, 3] width, height, length
    road_edges: tuple[float, float]        # x of the left and right road edge
    markings: list[tuple[float, bool]]     # lane lines: (x, dashed)
    sun: np.ndarray          # [3] unit vector toward the sun, scene frame
    exposure: float

    def boxes_at(self, t: float, z_lo: float, z_hi: float) -> np.ndarray:
        """Indices of boxes whose extent along z overlaps [z_lo, z_hi] at time t."""
        z = self.center0[:, 2] + self.velocity[:, 2] * t
        reach = np.hypot(self.half[:, 0], self.half[:, 2])
        return np.nonzero((z + reach >= z_lo) & (z - reach <= z_hi))[0]


class _BoxList:
    """Accumulates boxes as rows; `finish` turns them into Scene arrays."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.cars: list[tuple] = []

    def add(self, center, half, yaw, material, tint, rng, panoptic, velocity=(0, 0, 0), car=-1,
            windows=(1.0, 1.0, 0.0, 0.0)) -> None:
        self.rows.append((center, velocity, half, yaw, material, tint,
                          rng.uniform(0, 50, 2), windows, panoptic, car))

    def add_car(self, rng, x: float, z: float, yaw: float, speed: float) -> None:
        """A car whose footprint centre is at (x, z) on the road, driving along its heading."""
        index = len(self.cars)
        instance = index + 1
        if instance > 999:
            raise ValueError("synthetic scene: more than 999 cars in one drive")
        width, length = rng.uniform(1.7, 1.9), rng.uniform(3.9, 4.8)
        body_top, roof = rng.uniform(0.95, 1.05), rng.uniform(1.4, 1.55)
        velocity = np.array([np.sin(yaw), 0.0, np.cos(yaw)]) * speed
        self.cars.append(((x, CAMERA_HEIGHT, z), velocity, yaw, instance, (width, roof, length)))
        tint = _CAR_TINTS[rng.integers(len(_CAR_TINTS))] * rng.uniform(0.9, 1.05)
        panoptic = CLASS_CAR * 1000 + instance
        # Body from 0.12 m above the road (wheels are painted on) up to body_top; the cabin sits
        # behind the centre. Offsets are along the car's heading.
        heading = np.array([np.sin(yaw), 0.0, np.cos(yaw)])
        body_c = np.array([x, CAMERA_HEIGHT - (0.12 + body_top) / 2, z])
        self.add(body_c, (width / 2, (body_top - 0.12) / 2, length / 2), yaw, CAR_BODY, tint, rng,
                 panoptic, velocity, index)
        cabin_c = np.array([x, CAMERA_HEIGHT - (body_top + roof) / 2, z]) - 0.08 * length * heading
        self.add(cabin_c, (width / 2 - 0.08, (roof - body_top) / 2, 0.27 * length), yaw,
                 CAR_CABIN, tint, rng, panoptic, velocity, index)

    def finish(self, **road) -> Scene:
        f, i = np.float64, np.int32  # column types, in the order of Scene's box fields
        types = (f, f, f, f, i, f, f, f, i, i)
        cols = [np.array(c, dtype=t) for c, t in zip(zip(*self.rows), types)]
        cars = list(zip(*self.cars)) if self.cars else [[]] * 5
        return Scene(
            *cols, car_origin0=np.array(cars[0], np.float64).reshape(-1, 3),
            car_velocity=np.array(cars[1], np.float64).reshape(-1, 3),
            car_yaw=np.array(cars[2], np.float64), car_instance=np.array(cars[3], np.int32),
            car_size=np.array(cars[4], np.float64).reshape(-1, 3), **road)


def make_ego_path(rng: np.random.Generator) -> EgoPath:
    """Draws a drive's ego motion: 8-12 m/s (about 1 m per frame), yaw within about +-2.5 deg."""
    v0 = rng.uniform(8.0, 12.0)
    freq = rng.uniform(0.15, 0.4)
    return EgoPath(v0=v0, speed_amp=min(0.1 * v0 / freq, 3.0), speed_freq=freq,
                   speed_phase=rng.uniform(0, 2 * np.pi), weave_amp=rng.uniform(0.2, 0.7),
                   weave_k=2 * np.pi / rng.uniform(120.0, 220.0),
                   weave_phase=rng.uniform(0, 2 * np.pi))


def _side_objects(boxes: _BoxList, rng, sign: float, curb_x: float, z_lo: float, z_hi: float):
    """Sidewalk, poles, trees and building facades on one side (sign +1 right, -1 left)."""
    walk = rng.uniform(2.0, 4.0)
    outer = curb_x + sign * walk
    boxes.add((curb_x + sign * walk / 2, CAMERA_HEIGHT - CURB_HEIGHT / 2 + 0.15,
               (z_lo + z_hi) / 2), (walk / 2, CURB_HEIGHT / 2 + 0.15, (z_hi - z_lo) / 2), 0.0,
              SIDEWALK, np.array([0.66, 0.64, 0.62]) * rng.uniform(0.85, 1.1), rng,
              CLASS_SIDEWALK)
    top = CAMERA_HEIGHT - CURB_HEIGHT
    z = z_lo + rng.uniform(0, 20)
    while z < z_hi:  # poles near the curb
        height = rng.uniform(5.0, 8.0)
        boxes.add((curb_x + sign * 0.5, top - height / 2, z), (0.09, height / 2, 0.09), 0.0,
                  POLE, np.full(3, rng.uniform(0.45, 0.7)), rng, CLASS_POLE)
        z += rng.uniform(18.0, 40.0)
    z = z_lo
    while z < z_hi:  # building blocks with gaps, each at its own setback
        length = rng.uniform(10.0, 35.0)
        setback = rng.uniform(0.3, 9.0) if rng.random() < 0.7 else rng.uniform(9.0, 20.0)
        height, depth = rng.uniform(6.0, 22.0), rng.uniform(10.0, 18.0)
        near = outer + sign * setback
        windows = (rng.uniform(2.4, 4.0), rng.uniform(2.9, 3.6), rng.uniform(0.35, 0.6),
                   rng.uniform(0.4, 0.55))
        tint = _FACADE_TINTS[rng.integers(len(_FACADE_TINTS))] * rng.uniform(0.85, 1.1)
        boxes.add((near + sign * depth / 2, CAMERA_HEIGHT - height / 2 + 0.25, z + length / 2),
                  (depth / 2, height / 2 + 0.25, length / 2), 0.0, BUILDING, tint, rng,
                  CLASS_BUILDING, windows=windows)
        if setback > 3.5 and rng.random() < 0.8:  # a tree in the front garden
            _tree(boxes, rng, outer + sign * rng.uniform(1.5, setback - 1.5),
                  z + rng.uniform(0, length))
        z += length + (rng.uniform(2.0, 14.0) if rng.random() < 0.5 else 0.0)


def _tree(boxes: _BoxList, rng, x: float, z: float) -> None:
    trunk = rng.uniform(1.8, 2.8)
    boxes.add((x, CAMERA_HEIGHT - trunk / 2 + 0.1, z), (0.15, trunk / 2 + 0.1, 0.15), 0.0, TRUNK,
              np.array([0.42, 0.32, 0.22]), rng, CLASS_VEGETATION)
    size, height = rng.uniform(1.2, 2.0), rng.uniform(1.0, 1.8)
    boxes.add((x, CAMERA_HEIGHT - trunk - height + 0.1, z), (size, height, size),
              rng.uniform(0, np.pi / 2), CANOPY, np.array([0.35, 0.55, 0.25]) * rng.uniform(0.7, 1),
              rng, CLASS_VEGETATION)


def _traffic(boxes, rng, x, speed, z_cam, times, spacing, yaw=0.0):
    """Cars in one lane at one signed speed along +z, covering the sensor window at all times."""
    z0_lo = np.min(z_cam - SCENE_BEHIND - speed * times)
    z0_hi = np.max(z_cam + SCENE_AHEAD - speed * times)
    z = z0_lo + rng.uniform(0, spacing[1])
    while z < z0_hi:
        boxes.add_car(rng, x + rng.uniform(-0.25, 0.25), z, yaw, abs(speed))
        z += rng.uniform(*spacing)


def generate_scene(rng: np.random.Generator, path: EgoPath, frames: int) -> Scene:
    """Lays out one drive: lanes, parked and moving cars, sidewalks, facades, poles and trees.

    Right-hand traffic: the ego lane is centred at x = 0, an optional same-direction lane on its
    left, then one oncoming lane, with a parking lane at each road edge.
    """
    times = np.arange(frames) * FRAME_INTERVAL
    z_cam = path.state(times)["z"]
    z_lo, z_hi = z_cam[0] - SCENE_BEHIND, z_cam[-1] + SCENE_AHEAD
    boxes = _BoxList()
    two_lanes = rng.random() < 0.6
    oncoming_x = -LANE_WIDTH * (2 if two_lanes else 1)
    park_right, park_left = LANE_WIDTH / 2 + 1.25, oncoming_x - LANE_WIDTH / 2 - 1.25
    edges = (park_left - 1.25, park_right + 1.25)
    markings = [(LANE_WIDTH / 2, False), (oncoming_x - LANE_WIDTH / 2, False),
                (oncoming_x + LANE_WIDTH / 2, not two_lanes)]
    if two_lanes:
        markings.append((-LANE_WIDTH / 2, True))
    _side_objects(boxes, rng, -1.0, edges[0], z_lo, z_hi)
    _side_objects(boxes, rng, 1.0, edges[1], z_lo, z_hi)
    for park_x, fill in ((park_right, rng.uniform(0.3, 0.85)), (park_left, rng.uniform(0.2, 0.7))):
        z = z_lo
        while z < z_hi:
            if rng.random() < fill:
                yaw = rng.normal(0, 0.03) + (np.pi if park_x < 0 and rng.random() < 0.5 else 0)
                boxes.add_car(rng, park_x, z, yaw, 0.0)
            z += rng.uniform(5.6, 7.5)
    duration = times[-1]
    if rng.random() < 0.75:  # a lead car ahead in the ego lane that never closes within 6 m
        gap = rng.uniform(12.0, 30.0)
        slowest = path.v0 - max(0.0, gap - 6.0 - 2 * path.speed_amp) / max(duration, 1.0)
        speed = rng.uniform(max(slowest, path.v0 - 1.0), path.v0 + 1.5)
        boxes.add_car(rng, 0.0, gap + 2.5, 0.0, speed)
    if two_lanes:
        delta = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 4.0)
        _traffic(boxes, rng, -LANE_WIDTH, path.v0 + delta, z_cam, times, (20.0, 55.0))
    _traffic(boxes, rng, oncoming_x, -rng.uniform(7.0, 14.0), z_cam, times, (25.0, 70.0), np.pi)
    elevation, azimuth = rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi)
    sun = np.array([np.cos(elevation) * np.sin(azimuth), -np.sin(elevation),
                    np.cos(elevation) * np.cos(azimuth)])
    return boxes.finish(road_edges=edges, markings=markings, sun=sun,
                        exposure=float(rng.uniform(0.9, 1.12)))
