"""Fixtures of the piece-wise pose tests: an analytic two-plane scene and tiny pose pairs."""

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jdepth import geometry

# --------------------------------------------------------------------------------------------
# An analytic scene: a textured wall at z = 20 m and a textured car face at z = 8 m that moves on
# its own. Images are ray-cast in numpy, so depth, masks and every transform are exact.
H, W = 48, 96
FOCAL = 60.0
WALL_Z, CAR_Z = 20.0, 8.0
CAR_HALF_WIDTH, CAR_HALF_HEIGHT = 1.5, 1.0


def intrinsics() -> np.ndarray:
    return np.array([[FOCAL, 0, (W - 1) / 2, 0], [0, FOCAL, (H - 1) / 2, 0], [0, 0, 1, 0],
                     [0, 0, 0, 1]])


def transform(axisangle, translation) -> np.ndarray:
    T = geometry.transformation_from_parameters(
        jnp.asarray([axisangle], jnp.float32), jnp.asarray([translation], jnp.float32))
    return np.asarray(T[0], np.float64)


def texture(points: np.ndarray, period: float) -> np.ndarray:
    """Smooth RGB pattern of the surface coordinates (X, Y) of target-time points."""
    x, y = points[..., 0], points[..., 1]
    channels = [0.5 + 0.25 * np.sin(2 * np.pi * (x / period + p)) + 0.2 * np.cos(
        2 * np.pi * (y / (0.8 * period) + 2 * p)) for p in (0.0, 0.3, 0.6)]
    return np.stack(channels, axis=-1)


def hit_plane(rays, T, z_plane):
    """Ray parameter s where rays of a camera meet the plane z = z_plane of the target frame,
    carried into that camera by T (target -> camera); also the target-frame point hit."""
    R, t = T[:3, :3], T[:3, 3]
    normal = R @ np.array([0.0, 0.0, 1.0])
    s = (z_plane + normal @ t) / (rays @ normal)
    points = (s[..., None] * rays - t) @ R  # R^T (s r - t), row vectors
    return s, points


def render(T_wall: np.ndarray, T_car: np.ndarray):
    """Image [H, W, 3], depth [H, W] and car mask [H, W] seen by a camera at T (target -> it)."""
    ys, xs = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    pix = np.stack([xs, ys, np.ones_like(xs)], -1).astype(np.float64)
    rays = pix @ np.linalg.inv(intrinsics()[:3, :3]).T
    s_wall, wall_points = hit_plane(rays, T_wall, WALL_Z)
    s_car, car_points = hit_plane(rays, T_car, CAR_Z)
    on_car = (np.abs(car_points[..., 0]) <= CAR_HALF_WIDTH) & (
        np.abs(car_points[..., 1]) <= CAR_HALF_HEIGHT) & (s_car > 0) & (s_car < s_wall)
    image = np.where(on_car[..., None], texture(car_points, 1.1), texture(wall_points, 4.0))
    depth = np.where(on_car, s_car, s_wall)  # rays have z = 1: s is the z-depth
    return image.astype(np.float32), depth.astype(np.float32), on_car


EGO = transform([0.0, 0.02, 0.0], [0.05, 0.0, -0.6])  # the camera drives forward, yawing
CAR_MOTION = transform([0.0, -0.06, 0.0], [0.9, 0.0, 0.4])  # the car crosses, target frame
CAR = EGO @ CAR_MOTION  # target -> source for the car's points


def scene(car: np.ndarray = CAR):
    """Target image, depth, car mask and the source image with the car moved by `car`."""
    target, depth, car_mask = render(np.eye(4), np.eye(4))
    source, _, _ = render(EGO, car)
    return target, depth, car_mask, source


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out &= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out



class GainPoseNet(nn.Module):
    """Pose = gain * pixel means of the pair: its params decide its poses."""

    @nn.compact
    def __call__(self, frame_a, frame_b, train):
        gain = self.param("gain", nn.initializers.ones, ())
        means = gain * jnp.mean(jnp.concatenate([frame_a, frame_b], axis=-1), axis=(1, 2))
        return (0.1 * means[:, :3], means[:, 3:]), {}


def one_instance_pair(seed: int, dropped_pixel=None):
    """Frames {0, 1} of 6x8 noise, one matched instance, optionally one dropped thing pixel."""
    rng = np.random.default_rng(seed)
    height, width = 6, 8
    frames = {f: jnp.asarray(rng.uniform(size=(1, height, width, 3)), jnp.float32)
              for f in (0, 1)}
    masks = np.zeros((1, 2, 1, height, width), bool)
    masks[:, :, 0, 1:4, 2:6] = True
    dropped = np.zeros((1, height, width), bool)
    if dropped_pixel is not None:
        dropped[(0, *dropped_pixel)] = True
    batch = {"instance_masks": jnp.asarray(masks), "instance_valid": jnp.ones((1, 2, 1), bool),
             "thing_mask": jnp.asarray(masks[:, :, 0] | dropped[:, None]),
             "dropped_mask": jnp.asarray(dropped)}
    return frames, batch
