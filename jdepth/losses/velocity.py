"""Speed supervision of the pose translation (DESIGN.md item 8; PackNet-SfM's velocity loss).

Monocular self-supervision fixes depth and pose only up to one global scale. The vehicle's speed
(KITTI oxts `vf`, which the synthetic set also writes) times the frame interval is the metric length
of the camera translation between frames, so penalising | ||t|| - v * dt * |f| | anchors the scale:
the pose network, and through the photometric loss the depth network, become metric. It also gives
the pose network a non-zero motion target from the first step, which keeps it out of the
"static camera" solution (zero flow, explained by the automask) it can settle in when trained from
scratch.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def velocity_loss(
    poses: Mapping[int, jax.Array], speed: jax.Array, frame_interval: float
) -> jax.Array:
    """Mean absolute error between predicted and measured translation lengths.

    Args:
      poses: frame id f -> [B, 4, 4] cam_T_cam from frame 0 to frame f. Its translation has the
        length of the camera displacement whether or not the matrix was inverted (a rotation keeps
        lengths), so both pair orders are handled alike.
      speed: [B] forward speed at frame 0 in m/s.
      frame_interval: seconds between consecutive frames (KITTI raw: 0.1).

    Returns:
      Scalar: mean over samples and source frames of | ||t_f|| - speed * frame_interval * |f| |.
    """
    errors = []
    for f, T in poses.items():
        length = jnp.sqrt(jnp.sum(jnp.square(T[:, :3, 3]), axis=-1) + 1e-12)
        errors.append(jnp.abs(length - jnp.abs(speed) * frame_interval * abs(f)))
    return jnp.mean(jnp.stack(errors))
