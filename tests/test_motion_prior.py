"""The small-motion prior on residual instance motions (jdepth/losses/motion_prior.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth import geometry
from jdepth.losses import motion_prior


def _pose(axisangle=(0.0, 0.0, 0.0), translation=(0.0, 0.0, 0.0)) -> jax.Array:
    return geometry.transformation_from_parameters(
        jnp.asarray([axisangle], jnp.float32), jnp.asarray([translation], jnp.float32))[0]


def _two_pixels():
    """A 1x2 image, K = I: pixel (0, 0) at depth 2 -> P = (0, 0, 2); (1, 0) at 4 -> (4, 0, 4)."""
    depth = jnp.asarray([[[[2.0], [4.0]]]])
    inv_K = jnp.eye(4)[None]
    masks = jnp.asarray([[[[True, False]], [[False, True]]]])  # [B=1, M=2, H=1, W=2]
    return depth, inv_K, masks


def test_hand_computed_translation_and_rotation():
    depth, inv_K, masks = _two_pixels()
    ego = _pose(translation=(0.0, 0.0, 0.5))[None]  # moves every point by |(0, 0, .5)|_1 = 0.5
    residual = jnp.stack([_pose(translation=(0.1, 0.0, -0.2)),  # 0.3 at any point
                          _pose(axisangle=(0.0, 0.1, 0.0))])[None]  # a yaw about the camera
    r, e = motion_prior.residual_displacements(depth, inv_K, ego, residual)
    np.testing.assert_allclose(e, [[[0.5, 0.5]]], rtol=1e-6)
    np.testing.assert_allclose(r[0, 0], [[0.3, 0.3]], rtol=1e-5)
    # Yaw by 0.1 moves (4, 0, 4) to R @ (4, 0, 4): x' = 4 cos + 4 sin, z' = -4 sin + 4 cos.
    c, s = np.cos(0.1), np.sin(0.1)
    expected = abs(4 * c + 4 * s - 4) + abs(-4 * s + 4 * c - 4)
    np.testing.assert_allclose(r[0, 1, 0, 1], expected, rtol=1e-5)

    valid = jnp.asarray([[True, True]])
    prior, ratio = motion_prior.residual_motion_prior(depth, inv_K, ego, residual, masks, valid)
    # Slot 0 on pixel 0 (0.3 at depth 2), slot 1 on pixel 1 (expected at depth 4); 2 pixels.
    np.testing.assert_allclose(prior, (0.3 / 2 + expected / 4) / 2, rtol=1e-5)
    np.testing.assert_allclose(ratio, (0.3 + expected) / 2 / 0.5, rtol=1e-5)  # ego mean 0.5

    only_first = jnp.asarray([[True, False]])  # an invalid slot costs nothing
    prior, ratio = motion_prior.residual_motion_prior(depth, inv_K, ego, residual, masks,
                                                      only_first)
    np.testing.assert_allclose(prior, 0.3 / 2 / 2, rtol=1e-5)
    np.testing.assert_allclose(ratio, 0.3 / 1 / 0.5, rtol=1e-5)


def test_zero_for_identity_residuals_and_without_instances():
    depth, inv_K, masks = _two_pixels()
    ego = _pose(translation=(0.0, 0.0, 0.5))[None]
    identity = jnp.broadcast_to(jnp.eye(4), (1, 2, 4, 4))
    prior, ratio = motion_prior.residual_motion_prior(
        depth, inv_K, ego, identity, masks, jnp.ones((1, 2), bool))
    assert float(prior) == 0.0 and float(ratio) == 0.0
    moving = identity.at[:, :, 0, 3].set(1.0)
    prior, ratio = motion_prior.residual_motion_prior(
        depth, inv_K, ego, moving, masks, jnp.zeros((1, 2), bool))
    assert float(prior) == 0.0 and float(ratio) == 0.0


def test_invariant_to_the_shared_scale_of_depth_and_translation():
    rng = np.random.default_rng(0)
    depth = jnp.asarray(rng.uniform(0.5, 3.0, (2, 3, 4, 1)), jnp.float32)
    inv_K = jnp.broadcast_to(jnp.linalg.inv(jnp.asarray(
        [[2.0, 0, 2, 0], [0, 2.0, 1.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), (2, 4, 4))
    masks = jnp.asarray(rng.uniform(size=(2, 3, 3, 4)) < 0.3)
    valid = jnp.asarray([[True, True, False], [True, False, True]])

    def poses(scale):
        ego = jnp.stack([_pose((0.01, 0.02, 0.0), (0.1 * scale, 0.0, 0.3 * scale)),
                         _pose((0.0, -0.01, 0.0), (0.0, 0.05 * scale, 0.2 * scale))])
        residual = jnp.stack([jnp.stack([
            _pose((0.0, 0.03 * k, 0.0), (0.05 * k * scale, 0.0, -0.1 * scale)) for k in range(3)
        ])] * 2)
        return ego, residual

    base = motion_prior.residual_motion_prior(depth, inv_K, *poses(1.0), masks, valid)
    scaled = motion_prior.residual_motion_prior(3.0 * depth, inv_K, *poses(3.0), masks, valid)
    np.testing.assert_allclose(scaled, base, rtol=1e-5)


def test_trains_only_the_residual_motions():
    depth, inv_K, masks = _two_pixels()
    ego = _pose(translation=(0.0, 0.0, 0.5))[None]
    residual = jnp.stack([_pose(translation=(0.1, 0.0, -0.2)),
                          _pose(axisangle=(0.0, 0.1, 0.0))])[None]

    def prior(depth, ego, residual):
        return motion_prior.residual_motion_prior(
            depth, inv_K, ego, residual, masks, jnp.ones((1, 2), bool))[0]

    g_depth, g_ego, g_residual = jax.grad(prior, argnums=(0, 1, 2))(depth, ego, residual)
    assert float(jnp.max(jnp.abs(g_depth))) == 0.0  # the depth is a measuring stick, not trained
    assert float(jnp.max(jnp.abs(g_ego))) == 0.0
    # d/d(translation) of |t|_1 / D / (B H W) = sign(t) / 2 / 2 for slot 0 (x and z; its y flow
    # is exactly 0, where the subgradient is a convention).
    np.testing.assert_allclose(g_residual[0, 0, ::2, 3], [0.25, -0.25], atol=1e-6)


def test_logged_ratio_is_floored_at_a_static_camera_and_the_prior_is_not():
    depth, inv_K, masks = _two_pixels()
    still = jnp.eye(4)[None]
    residual = jnp.stack([_pose(translation=(1e-4, 0.0, 0.0))] * 2)[None]
    prior, ratio = motion_prior.residual_motion_prior(
        depth, inv_K, still, residual, masks, jnp.ones((1, 2), bool))
    assert float(ratio) == pytest.approx(1e-4 / motion_prior.DISPLACEMENT_FLOOR, rel=1e-4)
    assert float(prior) == pytest.approx((1e-4 / 2 + 1e-4 / 4) / 2, rel=1e-4)
