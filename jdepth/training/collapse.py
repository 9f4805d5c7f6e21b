"""Signs that a self-supervised depth run is collapsing, computed in the step and read by the loop.

The degenerate solution of the photometric objective: depth pinned at a bound of its range while
the pose translation grows until the warps leave the image. Border padding then samples the
image edge for every pixel, the automask prefers the unwarped frames everywhere, and the gradient
of the photometric term vanishes: nothing trains any more, and no loss value says so (the loss
settles at the identity error). These statistics make it visible at the first log step:

  depth/mean          mean predicted depth at scale 0 (model units);
  depth/at_min_frac   fraction of pixels within 5 % of `min_depth`;
  depth/at_max_frac   fraction of pixels within 5 % of `max_depth`;
  warp/outside_frac   fraction of warped pixels whose source coordinates fall outside the image;
  automask/identity_frac  fraction of pixels where an unwarped frame wins the minimum;
  pose/t_over_depth   |t| / median depth: how far the camera moves in units of the scene depth.

All are computed under stop_gradient; they cost a reprojection of the scale-0 depth per source.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jdepth import geometry

# Thresholds of `warnings` (fractions of pixels unless stated).
PINNED_FRACTION = 0.9
OUTSIDE_FRACTION = 0.5
IDENTITY_FRACTION = 0.98
ZERO_GRADIENT = 1e-7
BOUND_TOLERANCE = 0.05


def motion_frame(frame_ids) -> int:
    """The source frame whose translation the logs report: the first later frame (t+1), else the
    first one (a run with past frames only)."""
    return ([f for f in sorted(frame_ids) if f > 0] or sorted(frame_ids))[0]


def step_diagnostics(
    depth: jax.Array,
    poses: Mapping[int, jax.Array],
    K: jax.Array,
    inv_K: jax.Array,
    min_depth: float,
    max_depth: float,
    identity_selection: jax.Array | None = None,
    warp_depth: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Scalars of the module docstring.

    Args:
      depth: [B, H, W, 1] scale-0 depth of the target frame.
      poses: frame id -> [B, 4, 4] target->source transform (or [B, H, W, 4, 4] per pixel).
      K, inv_K: [B, 4, 4] intrinsics at H x W.
      min_depth, max_depth: the depth range of the disparity parametrisation.
      identity_selection: [B, H, W, 1], 1 where a warped source wins the minimum, or None.
      warp_depth: [B, H, W, 1] the depth the loss warps with when it is not `depth` (e.g.
        normalised by its mean, `loss.depth_normalization`); the warp statistics use it.
    """
    depth = jax.lax.stop_gradient(depth)
    warp = depth if warp_depth is None else jax.lax.stop_gradient(warp_depth)
    _, height, width, _ = depth.shape
    points = geometry.backproject(warp, inv_K)
    outside = []
    for pose in poses.values():
        pix, z = geometry.project(points, K, jax.lax.stop_gradient(pose))
        x, y = pix[..., 0], pix[..., 1]
        out = (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1) | (z[..., 0] <= 0)
        outside.append(jnp.mean(out.astype(jnp.float32)))
    translation = jax.lax.stop_gradient(poses[motion_frame(poses)])[..., :3, 3]
    t_norm = jnp.linalg.norm(translation.reshape(translation.shape[0], -1, 3), axis=-1)
    # The median of every 4th row and column: a full-resolution sort cost 2% of the KITTI-size step
    # (BENCHMARKS.md, profile) for a logged scalar.
    median_depth = jnp.median(warp[:, ::4, ::4].reshape(warp.shape[0], -1), axis=-1)
    metrics = {
        "depth/mean": jnp.mean(depth),
        "depth/at_min_frac": jnp.mean((depth <= min_depth * (1 + BOUND_TOLERANCE)).astype(
            jnp.float32)),
        "depth/at_max_frac": jnp.mean((depth >= max_depth * (1 - BOUND_TOLERANCE)).astype(
            jnp.float32)),
        "warp/outside_frac": jnp.mean(jnp.stack(outside)),
        "pose/t_over_depth": jnp.mean(jnp.mean(t_norm, axis=-1) / median_depth),
    }
    if identity_selection is not None:
        metrics["automask/identity_frac"] = 1.0 - jnp.mean(
            jax.lax.stop_gradient(identity_selection))
    return metrics


def warnings(metrics: Mapping[str, float]) -> list[str]:
    """Human-readable collapse warnings for one logged step's host metrics (empty: healthy)."""
    found = []
    if metrics.get("depth/at_min_frac", 0.0) > PINNED_FRACTION:
        found.append(f"depth pinned at the minimum depth on {metrics['depth/at_min_frac']:.0%} of "
                     "pixels")
    if metrics.get("depth/at_max_frac", 0.0) > PINNED_FRACTION:
        found.append(f"depth pinned at the maximum depth on {metrics['depth/at_max_frac']:.0%} of "
                     "pixels")
    if metrics.get("warp/outside_frac", 0.0) > OUTSIDE_FRACTION:
        ratio = metrics.get("pose/t_over_depth", float("nan"))
        found.append(f"{metrics['warp/outside_frac']:.0%} of warped pixels leave the source image "
                     f"(translation / depth = {ratio:.2f})")
    if metrics.get("automask/identity_frac", 0.0) > IDENTITY_FRACTION:
        found.append(f"the unwarped frames win the automask on "
                     f"{metrics['automask/identity_frac']:.0%} of pixels")
    grad_norm = metrics.get("grad_norm")
    if grad_norm is not None and 0 <= grad_norm < ZERO_GRADIENT:
        found.append(f"gradient norm {grad_norm:.1e}: nothing trains")
    return found
