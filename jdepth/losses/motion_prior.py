"""Small-motion prior on the residual (per-instance) motions of piece-wise pose.

Not in the seed paper (Sec. 3.3 keeps the photometric loss unchanged); a fix tried for what
the demo budget showed (issue 7, RESULTS.md; what it measured: jdepth/training/piecewise.py).
Per object, depth and the object's own motion trade off freely: a car twice as far moving
twice as fast warps the same. Left free, the residual motions of PARKED cars (4 of 5
instances of the synthetic set) drift to 1.5-2.7x the ego translation and take away the
parallax that the depth net learns from. Gordon et al. (ICCV 2019) and Li et al. (CoRL 2020)
put an L1 / sparsity prior on the residual translation field for the same reason; here it is
written for per-instance rigid motions:

  prior = sum over instance pixels p of |(M - I) P(p)|_1 / D(p)  /  (B H W)

with ``P(p) = D(p) K^-1 p`` the target pixel's 3-D point and ``D(p)`` its depth (gradient
stopped: the depth is the measuring stick, not trained by the prior), and ``M`` the instance's
residual transform (the object's motion in the target camera frame, applied before the ego
motion: jdepth/training/piecewise.py). Per pixel this is the residual scene flow per unit depth,
about the angle through which the object's own motion moves the pixel: invariant to the scale
that self-supervised depth and translation share, and it penalises the residual rotation
through the displacement it causes (a rotation about the camera shifts a small car much like a
lateral translation does).

A first version divided by the ego flow instead (the residual in units of the camera's motion).
From scratch the ego translation starts near 0, so that normaliser made the prior's gradient
huge; through the shared pose net it pulled the ego pose to 0 with the residuals (t_norm 4e-5
at step 40 against Monodepth2's 0.0045) and training stalled. The depth does not start at 0.
The ratio to the ego flow is still logged (`residual_flow_ratio`) to show parked cars drifting.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdepth import geometry

# Floor of the logged ratio's ego-flow normaliser, in the depth network's units (depth 0.1-100).
DISPLACEMENT_FLOOR = 1e-3


def residual_displacements(
    depth: jax.Array, inv_K: jax.Array, global_T: jax.Array, residual_T: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-pixel L1 displacements of the target's 3-D points by each residual and by the ego pose.

    Args:
      depth: ``[B, H, W, 1]`` target depth (its gradient is stopped).
      inv_K: ``[B, 4, 4]`` inverse intrinsics at the resolution of ``depth``.
      global_T: ``[B, 4, 4]`` ego target->source transform (gradient stopped).
      residual_T: ``[B, M, 4, 4]`` residual motion of every instance slot.

    Returns:
      (residual ``[B, M, H, W]`` = ``|(M_m - I) P|_1``, ego ``[B, H, W]`` = ``|(T - I) P|_1``).
    """
    points = geometry.backproject(jax.lax.stop_gradient(depth), inv_K)  # [B, H, W, 4]
    eye = jnp.eye(4, dtype=residual_T.dtype)
    residual_flow = jnp.einsum("bmij,bhwj->bmhwi", (residual_T - eye)[:, :, :3], points)
    ego_flow = jnp.einsum("bij,bhwj->bhwi", jax.lax.stop_gradient(global_T - eye)[:, :3], points)
    return jnp.sum(jnp.abs(residual_flow), axis=-1), jnp.sum(jnp.abs(ego_flow), axis=-1)


def residual_motion_prior(
    depth: jax.Array,
    inv_K: jax.Array,
    global_T: jax.Array,
    residual_T: jax.Array,
    target_masks: jax.Array,
    valid: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """The prior of the module docstring for one source frame, and the residual/ego flow ratio.

    Args:
      depth, inv_K, global_T, residual_T: as `residual_displacements`.
      target_masks: ``[B, M, H, W]`` instance masks in the target frame (disjoint).
      valid: ``[B, M]`` slots whose pose warps their pixels.

    Returns:
      (prior: scalar, the residual displacement per unit depth summed over valid instance
      pixels and divided by ``B * H * W``; ratio (gradient stopped, for the logs): the residual
      displacement's mean over those pixels divided by the ego displacement's mean there, at
      least `DISPLACEMENT_FLOOR`; both 0 without valid instance pixels).
    """
    weights = target_masks.astype(jnp.float32) * valid.astype(jnp.float32)[:, :, None, None]
    residual, ego = residual_displacements(depth, inv_K, global_T, residual_T)
    per_depth = residual / jax.lax.stop_gradient(depth)[:, None, :, :, 0]
    prior = jnp.sum(weights * per_depth) / (
        weights.shape[0] * weights.shape[2] * weights.shape[3])
    pixels = jnp.maximum(jnp.sum(weights), 1.0)
    ego_mean = jnp.maximum(jnp.sum(weights * ego[:, None]) / pixels, DISPLACEMENT_FLOOR)
    ratio = jnp.sum(weights * residual) / pixels / ego_mean
    return prior, jax.lax.stop_gradient(ratio)
