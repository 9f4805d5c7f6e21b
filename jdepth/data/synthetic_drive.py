"""One synthetic drive: ego poses, the pinhole camera (image_02) and a 64-beam lidar.

Conventions. World frame = camera frame of the drive's first image (so poses.txt starts with the
identity), KITTI camera axes (x right, y down, z forward). Intrinsics are KITTI-like scaled to the
resolution: fx = 0.58 W, fy = 1.92 H, cx = W / 2, cy = H / 2. With this project's integer pixel
centres (pixel (i, j) is the ray through x = j, y = i), cx = W / 2 makes the normalised intrinsics
exactly Monodepth2's default [0.58, 1.92, 0.5, 0.5] at any resolution. The rig has no distortion.
The lidar sits LIDAR_ABOVE_CAMERA above the camera with the same heading and no forward offset, so a
point's velodyne forward x equals its camera z exactly.
"""

from __future__ import annotations

import numpy as np

from jdepth.data import synthetic_raycast as rc
from jdepth.data import synthetic_scene as sc
from jdepth.data import synthetic_shading as sh

MAX_CAMERA_DEPTH = 200.0  # beyond this the camera sees sky (16-bit depth PNGs stop at 256 m)
MAX_LIDAR_RANGE = 120.0
LIDAR_ABOVE_CAMERA = 0.08
LIDAR_ELEVATIONS_DEG = np.linspace(2.0, -24.8, 64)
LIDAR_AZIMUTH_STEP_DEG = 0.4
# Velodyne (x forward, y left, z up) -> camera (x right, y down, z forward): an exact permutation.
VELO_TO_CAM_R = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
VELO_TO_CAM_T = np.array([0.0, -LIDAR_ABOVE_CAMERA, 0.0])


def kitti_intrinsics(width: int, height: int) -> np.ndarray:
    """[3, 3] pixel intrinsics fx = 0.58 W, fy = 1.92 H, cx = W / 2, cy = H / 2 (module docstring).

    fx and fy are rounded to their exact 2-decimal values so the calibration text round-trips.
    """
    return np.array([[round(0.58 * width, 2), 0.0, width / 2],
                     [0.0, round(1.92 * height, 2), height / 2], [0.0, 0.0, 1.0]])


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _pose(yaw: float, position) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = _yaw_matrix(yaw)
    pose[:3, 3] = position
    return pose


class SyntheticDrive:
    """A deterministic drive: the scene depends on (seed, drive_index, frames), not on resolution.

    Attributes:
      K: [3, 3] float64 pixel intrinsics of image_02.
      frames, width, height: as constructed.
      scene: the `synthetic_scene.Scene` (boxes, cars, road).
      path: the `synthetic_scene.EgoPath`.
      heading0: compass heading of the road (oxts yaw convention: 0 = east, counter-clockwise).
    """

    def __init__(self, seed: int, drive_index: int, frames: int, width: int, height: int):
        if frames < 1 or width < 8 or height < 8:
            raise ValueError(f"synthetic drive: need frames >= 1 and an image of at least 8x8, got "
                             f"frames={frames}, {width}x{height}")
        rng = np.random.default_rng([seed, drive_index])
        self.frames, self.width, self.height = frames, width, height
        self.path = sc.make_ego_path(rng)
        self.scene = sc.generate_scene(rng, self.path, frames)
        self.K = kitti_intrinsics(width, height)
        self.heading0 = float(rng.uniform(-np.pi, np.pi))  # oxts yaw of the road direction
        self._state = self.path.state(np.arange(frames) * sc.FRAME_INTERVAL)
        u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        self._cam_dirs = self._pixel_dirs(u, v)
        self._cam_dirs_flat = np.stack([d.reshape(-1) for d in self._cam_dirs])
        # The camera is level, so the sky behind every pixel is the same in all frames.
        dx, dy, dz = self._cam_dirs_flat
        self._sky = sh.sky_colour(np.arctan2(-dy, np.hypot(dx, dz)))
        elevation = np.deg2rad(LIDAR_ELEVATIONS_DEG)[:, None]
        self._n_azimuth = int(round(360.0 / LIDAR_AZIMUTH_STEP_DEG))
        azimuth = -np.pi + (np.arange(self._n_azimuth) + 0.5) * (2 * np.pi / self._n_azimuth)
        self._lidar_dirs = (np.cos(elevation) * np.sin(azimuth), -np.sin(elevation) + 0 * azimuth,
                            np.cos(elevation) * np.cos(azimuth))

    def _pixel_dirs(self, u: np.ndarray, v: np.ndarray) -> tuple:
        k = self.K
        return (u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)

    def _world_pose(self, yaw: float, position: np.ndarray) -> np.ndarray:
        """Scene-frame pose -> world-frame pose, computed directly so frame 0 is exactly I."""
        s = self._state
        start = np.array([s["x"][0], 0.0, s["z"][0]])
        return _pose(yaw - s["yaw"][0], _yaw_matrix(s["yaw"][0]).T @ (position - start))

    def _check(self, frame: int) -> None:
        if not 0 <= frame < self.frames:
            raise IndexError(f"synthetic drive: frame {frame} outside [0, {self.frames})")

    def camera_to_world(self, frame: int) -> np.ndarray:
        """[4, 4] pose of camera 2 at `frame` in the world frame (= camera of frame 0)."""
        self._check(frame)
        s = self._state
        return self._world_pose(s["yaw"][frame], np.array([s["x"][frame], 0.0, s["z"][frame]]))

    def car_to_world(self, frame: int) -> np.ndarray:
        """[C, 4, 4] pose of every car's frame (footprint centre on the road, z along heading)."""
        self._check(frame)
        s = self.scene
        origin = s.car_origin0 + s.car_velocity * (frame * sc.FRAME_INTERVAL)
        return np.stack([self._world_pose(y, o) for y, o in zip(s.car_yaw, origin)])

    def car_velocity_world(self) -> np.ndarray:
        """[C, 3] constant velocity of every car in the world frame (m/s; zero for parked cars)."""
        return self.scene.car_velocity @ _yaw_matrix(self._state["yaw"][0])

    def ego_state(self, frame: int) -> dict[str, float]:
        """True ego motion at `frame`: keys of `synthetic_scene.EgoPath.state` (x, z, yaw, speed,
        accel, yaw_rate, lateral_accel) in the scene frame (road along +z)."""
        self._check(frame)
        return {key: float(value[frame]) for key, value in self._state.items()}

    def _boxes(self, frame: int, above: float, behind: float, ahead: float):
        """Scene boxes near the sensor, in the frame of a level sensor `above` the camera."""
        s, t = self._state, frame * sc.FRAME_INTERVAL
        z = s["z"][frame]
        index = self.scene.boxes_at(t, z - behind, z + ahead)
        center = self.scene.center0[index] + self.scene.velocity[index] * t
        position = np.array([s["x"][frame], -above, z])
        boxes = rc.to_sensor(center, self.scene.yaw[index], self.scene.half[index], position,
                             s["yaw"][frame])
        return boxes, index

    def _surface(self, frame: int, boxes: rc.SensorBoxes, index: np.ndarray, dirs: np.ndarray,
                 t: np.ndarray, obj: np.ndarray, pixel_angle: float):
        """Appearance of the hits t [N] along rays dirs [3, N] (sensor frame) on obj [N].

        Args:
          boxes, index: the boxes that were cast against and their scene indices.
          obj: box index or GROUND per ray.
          pixel_angle: angular size of one pixel (radians), to pick texture detail.

        Returns:
          albedo [3, N], scene-frame normals [3, N], material [N], panoptic id [N].
        """
        n = len(t)
        albedo, normal = np.empty((3, n)), np.zeros((3, n))
        material, panoptic = np.empty(n, np.int64), np.empty(n, np.int64)
        length = np.sqrt(dirs[0] ** 2 + dirs[1] ** 2 + dirs[2] ** 2)
        footprint = t * length * pixel_angle  # metres per pixel facing the ray
        yaw = self._state["yaw"][frame]
        c, s = np.cos(yaw), np.sin(yaw)
        on_ground = np.flatnonzero(obj == rc.GROUND)
        if on_ground.size:
            d, r = dirs[:, on_ground], t[on_ground]
            x = (c * d[0] + s * d[2]) * r + self._state["x"][frame]
            z = (c * d[2] - s * d[0]) * r + self._state["z"][frame]
            slant = np.sqrt(np.maximum(d[1] / length[on_ground], 0.02))
            albedo[:, on_ground], material[on_ground] = sh.ground_albedo(
                self.scene, x, z, footprint[on_ground] / slant)
            normal[1, on_ground] = -1.0
            panoptic[on_ground] = np.where(material[on_ground] == sc.ROAD, sc.CLASS_ROAD,
                                           sc.CLASS_TERRAIN)
        on_box = np.flatnonzero(obj >= 0)
        if on_box.size:
            k, d = obj[on_box], dirs[:, on_box]
            local = boxes.to_local(k, d * t[on_box])
            axis, n_local = sh.face_normals(boxes.half.T[:, k], local)
            bc, bs = boxes.cos[k], boxes.sin[k]  # box -> sensor rotation
            nx, nz = bc * n_local[0] + bs * n_local[2], bc * n_local[2] - bs * n_local[0]
            slant = np.abs(nx * d[0] + n_local[1] * d[1] + nz * d[2]) / length[on_box]
            albedo[:, on_box], material[on_box] = sh.box_albedo(
                self.scene, index[k], local, axis,
                footprint[on_box] / np.sqrt(np.maximum(slant, 0.02)))
            normal[0, on_box], normal[1, on_box] = c * nx + s * nz, n_local[1]
            normal[2, on_box] = c * nz - s * nx
            panoptic[on_box] = self.scene.panoptic[index[k]]
        return albedo, normal, material, panoptic

    def _cast_camera(self, frame: int, dirs: tuple, regions_for) -> tuple:
        boxes, index = self._boxes(frame, 0.0, 20.0, MAX_CAMERA_DEPTH + 20.0)
        t, obj = rc.cast(dirs, boxes, regions_for(boxes), sc.CAMERA_HEIGHT, MAX_CAMERA_DEPTH)
        return t, obj, boxes, index

    def render(self, frame: int) -> dict[str, np.ndarray]:
        """Renders image_02 at `frame`.

        Returns:
          dict with image uint8 [H, W, 3], depth float32 [H, W] (camera z in metres, 0 for sky) and
          panoptic uint16 [H, W] (Cityscapes panoptic ids).
        """
        self._check(frame)
        t, obj, boxes, index = self._cast_camera(
            frame, self._cam_dirs,
            lambda b: rc.camera_regions(b, self.K, self.width, self.height))
        t, obj = t.reshape(-1), obj.reshape(-1)
        hit = np.flatnonzero(obj != -1)
        th = t[hit]
        albedo, normal, _, pan = self._surface(frame, boxes, index, self._cam_dirs_flat[:, hit],
                                               th, obj[hit], 1.0 / self.K[0, 0])
        # Lambertian light, then aerial perspective toward the horizon colour with distance.
        haze = 0.8 * (th / MAX_CAMERA_DEPTH) ** 2
        colour = self._sky.copy()
        colour[:, hit] = (albedo * (sh.lambert(normal, self.scene.sun) * self.scene.exposure
                                    * (1 - haze)) + sh.SKY_HORIZON * haze)
        panoptic = np.full(len(t), sc.CLASS_SKY, np.uint16)
        panoptic[hit] = pan
        shape = (self.height, self.width)
        image = np.round(np.clip(colour.T, 0.0, 1.0) * 255).astype(np.uint8)
        return dict(image=image.reshape(*shape, 3), depth=t.reshape(shape).astype(np.float32),
                    panoptic=panoptic.reshape(shape))

    def cast_camera_rays(self, frame: int, u, v) -> np.ndarray:
        """Exact camera depth z along the rays through sub-pixel positions (u, v).

        Args:
          u, v: arrays of one shape; pixel centres are at integer coordinates.

        Returns:
          float64 depth of the same shape; 0 where the ray sees sky. At integer (u, v) inside the
          image it equals `render(frame)["depth"]` (up to the float32 cast).
        """
        self._check(frame)
        u, v = np.broadcast_arrays(np.asarray(u, np.float64), np.asarray(v, np.float64))
        if u.size == 0:
            return np.zeros(u.shape)
        # Only boxes whose projection overlaps the queries' bounding rectangle can be hit.
        c0, r0 = np.floor(u.min()) - 1, np.floor(v.min()) - 1
        k = self.K.copy()
        k[0, 2], k[1, 2] = k[0, 2] - c0, k[1, 2] - r0
        size = (int(np.ceil(u.max()) - c0) + 2, int(np.ceil(v.max()) - r0) + 2)

        def regions_for(boxes: rc.SensorBoxes) -> list:
            return [(i, slice(None), slice(None)) for i, _, _ in rc.camera_regions(boxes, k, *size)]

        dirs = self._pixel_dirs(u.reshape(1, -1), v.reshape(1, -1))
        t, _, _, _ = self._cast_camera(frame, dirs, regions_for)
        return t.reshape(u.shape)

    def lidar_scan(self, frame: int) -> np.ndarray:
        """Simulated 64-beam scan at `frame`: float32 [N, 4] (x fwd, y left, z up, reflectance).

        Points are in the velodyne frame; rays that hit nothing within MAX_LIDAR_RANGE (sky) return
        nothing. Beams are ordered from the top beam down, azimuth from behind, turning right.
        """
        self._check(frame)
        boxes, index = self._boxes(frame, LIDAR_ABOVE_CAMERA, MAX_LIDAR_RANGE + 10,
                                   MAX_LIDAR_RANGE + 10)
        regions = rc.lidar_regions(boxes, np.deg2rad(LIDAR_ELEVATIONS_DEG), self._n_azimuth)
        t, obj = rc.cast(self._lidar_dirs, boxes, regions, sc.CAMERA_HEIGHT + LIDAR_ABOVE_CAMERA,
                         MAX_LIDAR_RANGE)
        hit = np.flatnonzero(obj.reshape(-1) != -1)
        dirs = np.stack([d.reshape(-1)[hit] for d in self._lidar_dirs])
        t = t.reshape(-1)[hit]
        albedo, _, material, _ = self._surface(frame, boxes, index, dirs, t, obj.reshape(-1)[hit],
                                               np.deg2rad(LIDAR_AZIMUTH_STEP_DEG))
        points = dirs * t
        velo = np.stack([points[2], -points[0], -points[1], sh.reflectance(albedo, material)])
        return np.ascontiguousarray(velo.T, dtype=np.float32)


def build_drive(seed: int, drive_index: int, frames: int, width: int,
                height: int) -> SyntheticDrive:
    """The drive `drive_index` (0-based) of the dataset generated with `seed`."""
    return SyntheticDrive(seed, drive_index, frames, width, height)
