"""Tests for jdepth.geometry: hand-computed values, inverses, warps of rendered and real views."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from scipy.spatial.transform import Rotation

from jdepth import geometry
from jdepth.losses.photometric import photometric_error


def _intrinsics(fx, fy, cx, cy, batch=1):
    K = np.array([[fx, 0, cx, 0], [0, fy, cy, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    K = np.broadcast_to(K, (batch, 4, 4))
    return jnp.asarray(K), jnp.asarray(np.linalg.inv(K))


def _map_coordinates(image, pix, mode):
    """Reference sampler: jax.scipy.ndimage.map_coordinates per image and channel."""

    def one(img, p):
        coords = [p[..., 1], p[..., 0]]
        return jnp.stack(
            [
                jax.scipy.ndimage.map_coordinates(img[..., c], coords, order=1, mode=mode, cval=0.0)
                for c in range(img.shape[-1])
            ],
            axis=-1,
        )

    return jax.vmap(one)(image, pix)


# ----------------------------------------------------------------------------- depth / projection


def test_disp_to_depth_exact_values():
    scaled, depth = geometry.disp_to_depth(jnp.array([0.0, 1.0, 0.5]), 0.1, 100.0)
    # 0.5 -> 1/100 + (10 - 1/100) / 2 = 5.005
    np.testing.assert_allclose(scaled, [0.01, 10.0, 5.005], rtol=1e-6)
    np.testing.assert_allclose(depth, [100.0, 0.1, 1.0 / 5.005], rtol=1e-6)


def test_pixel_grid_has_integer_centres():
    grid = np.asarray(geometry.pixel_grid(2, 3))
    assert grid.shape == (2, 3, 3)
    np.testing.assert_array_equal(grid[1, 2], [2.0, 1.0, 1.0])
    np.testing.assert_array_equal(grid[0, :, 0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(grid[..., 2], np.ones((2, 3)))


def test_backproject_hand_values():
    _, inv_K = _intrinsics(2.0, 4.0, 1.0, 0.5)
    depth = jnp.full((1, 3, 4, 1), 5.0)
    points = np.asarray(geometry.backproject(depth, inv_K))
    assert points.shape == (1, 3, 4, 4)
    # pixel (x=3, y=2): X = (3 - 1) * 5 / 2, Y = (2 - 0.5) * 5 / 4, Z = 5
    np.testing.assert_allclose(points[0, 2, 3], [5.0, 1.875, 5.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(points[0, 0, 1], [0.0, -0.625, 5.0, 1.0], rtol=1e-6)


def test_project_hand_values_with_translation():
    K, _ = _intrinsics(2.0, 4.0, 1.0, 0.5)
    T = jnp.asarray(np.eye(4, dtype=np.float32)[None]).at[0, :3, 3].set(jnp.array([1.0, 0.0, 1.0]))
    points = jnp.array([1.0, 2.0, 3.0, 1.0]).reshape(1, 1, 1, 4)
    pix, z = geometry.project(points, K, T)
    # moved point (2, 2, 4): u = 2 * 2 / 4 + 1 = 2, v = 4 * 2 / 4 + 0.5 = 2.5
    np.testing.assert_allclose(pix[0, 0, 0], [2.0, 2.5], rtol=1e-6)
    np.testing.assert_allclose(z[0, 0, 0], [4.0], rtol=1e-6)


def test_project_of_backproject_is_pixel_grid():
    K, inv_K = _intrinsics(50.0, 45.0, 15.5, 9.5, batch=2)
    depth = jax.random.uniform(jax.random.key(0), (2, 20, 32, 1), minval=0.5, maxval=80.0)
    T = jnp.broadcast_to(jnp.eye(4), (2, 4, 4))
    pix, z = geometry.project(geometry.backproject(depth, inv_K), K, T)
    grid = geometry.pixel_grid(20, 32)[..., :2]
    np.testing.assert_allclose(pix, jnp.broadcast_to(grid, pix.shape), atol=1e-3)
    np.testing.assert_allclose(z, depth, rtol=1e-6)


def test_project_accepts_per_pixel_transforms():
    K, inv_K = _intrinsics(50.0, 45.0, 15.5, 9.5, batch=2)
    depth = jax.random.uniform(jax.random.key(1), (2, 6, 8, 1), minval=1.0, maxval=10.0)
    T = geometry.transformation_from_parameters(
        jnp.array([[0.01, -0.02, 0.03], [0.0, 0.1, 0.0]]), jnp.array([[0.1, 0.0, 0.5], [0, 0, 1.0]])
    )
    points = geometry.backproject(depth, inv_K)
    pix, z = geometry.project(points, K, T)
    T_pixels = jnp.broadcast_to(T[:, None, None], (2, 6, 8, 4, 4))
    pix_pp, z_pp = geometry.project(points, K, T_pixels)
    np.testing.assert_allclose(pix_pp, pix, atol=1e-5)
    np.testing.assert_allclose(z_pp, z, rtol=1e-5)
    with pytest.raises(ValueError, match="T must be"):
        geometry.project(points, K, T_pixels[:, :3])


# ----------------------------------------------------------------------------- rotations and poses


def test_rotation_90_degrees_about_z():
    R = geometry.rotation_from_axisangle(jnp.array([[0.0, 0.0, np.pi / 2]]))
    assert R.shape == (1, 4, 4)
    np.testing.assert_allclose(R[0] @ jnp.array([1.0, 0, 0, 1]), [0.0, 1.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(R[0, 3], [0, 0, 0, 1])
    np.testing.assert_allclose(R[0, :, 3], [0, 0, 0, 1])


def _reference_rodrigues(vec):
    """Monodepth2's formula in numpy: angle = ||v||, axis = v / (angle + 1e-7)."""
    angle = np.linalg.norm(vec)
    x, y, z = vec / (angle + 1e-7)
    c, s = np.cos(angle), np.sin(angle)
    C = 1 - c
    return np.array([
        [x * x * C + c, x * y * C - z * s, z * x * C + y * s],
        [x * y * C + z * s, y * y * C + c, y * z * C - x * s],
        [z * x * C - y * s, y * z * C + x * s, z * z * C + c],
    ])


def test_rotation_matches_reference_formula_and_scipy():
    vecs = np.random.default_rng(0).normal(0, 0.7, (16, 3)).astype(np.float32)
    vecs[0] = [1e-4, -2e-4, 3e-5]  # small pose-net sized rotation
    R = np.asarray(geometry.rotation_from_axisangle(jnp.asarray(vecs)))
    for vec, matrix in zip(vecs, R):
        np.testing.assert_allclose(matrix[:3, :3], _reference_rodrigues(vec.astype(np.float64)),
                                   atol=1e-6)
        np.testing.assert_allclose(matrix[:3, :3], Rotation.from_rotvec(vec).as_matrix(), atol=1e-6)


def test_rotation_is_identity_with_finite_gradient_at_zero():
    zero = jnp.zeros((1, 3))
    np.testing.assert_array_equal(geometry.rotation_from_axisangle(zero)[0], np.eye(4))
    weights = jax.random.normal(jax.random.key(0), (1, 4, 4))
    grad = jax.jit(jax.grad(lambda v: jnp.sum(weights * geometry.rotation_from_axisangle(v))))(zero)
    assert np.all(np.isfinite(grad))
    jac = jax.jit(jax.jacrev(
        lambda v: geometry.transformation_from_parameters(v, jnp.ones((1, 3)), invert=True)
    ))(zero)
    assert np.all(np.isfinite(jac))


def test_translation_matrix():
    M = np.asarray(geometry.translation_matrix(jnp.array([[1.0, 2.0, 3.0]])))
    expected = np.eye(4)
    expected[:3, 3] = [1, 2, 3]
    np.testing.assert_array_equal(M[0], expected)


def test_transformation_order_and_inverse():
    axisangle = jnp.array([[0.0, 0.0, np.pi / 2], [0.1, -0.3, 0.2]])
    translation = jnp.array([[1.0, 0.0, 0.0], [0.3, 0.2, -0.5]])
    M = geometry.transformation_from_parameters(axisangle, translation)
    # not inverted: rotate first, then translate -> (1, 0, 0) -> (0, 1, 0) -> (1, 1, 0)
    np.testing.assert_allclose(M[0] @ jnp.array([1.0, 0, 0, 1]), [1.0, 1.0, 0.0, 1.0], atol=1e-6)
    M_inv = geometry.transformation_from_parameters(axisangle, translation, invert=True)
    np.testing.assert_allclose(M_inv, np.linalg.inv(np.asarray(M)), atol=1e-6)


# ----------------------------------------------------------------------------- bilinear sampling


def _sample_at(image, points, padding="border"):
    image = jnp.asarray(image, jnp.float32)[None, :, :, None]
    pix = jnp.asarray(points, jnp.float32).reshape(1, 1, -1, 2)
    return np.asarray(geometry.bilinear_sample(image, pix, padding))[0, 0, :, 0]


def test_bilinear_hand_values():
    image = [[0.0, 1.0, 4.0], [2.0, 3.0, 8.0]]
    values = _sample_at(image, [(0.5, 0.5), (0.25, 0.0), (1.0, 0.75), (2.0, 1.0), (1.5, 0.0)])
    # (1, 0.75): 1 + 0.75 * (3 - 1); (1.5, 0): midway between 1 and 4
    np.testing.assert_allclose(values, [1.5, 0.25, 2.5, 8.0, 2.5], atol=1e-6)


def test_bilinear_border_clamps_coordinates():
    image = [[0.0, 1.0, 4.0], [2.0, 3.0, 8.0]]
    values = _sample_at(image, [(-3.0, 0.0), (5.0, 5.0), (-1.0, 0.5), (1.5, -7.0), (0.5, 9.0)])
    np.testing.assert_allclose(values, [0.0, 8.0, 1.0, 2.5, 2.5], atol=1e-6)


def test_bilinear_zeros_padding_is_tapwise():
    image = [[4.0, 8.0], [12.0, 16.0]]
    points = [(-0.5, 0.0), (-0.5, -0.5), (1.5, 1.0), (-1.0, 0.0), (-3.0, 0.5), (0.5, 0.0), (1, 1)]
    values = _sample_at(image, points, "zeros")
    # half a pixel outside -> half the edge value; a corner half outside in both -> a quarter
    np.testing.assert_allclose(values, [2.0, 1.0, 8.0, 0.0, 0.0, 6.0, 16.0], atol=1e-6)


@pytest.mark.parametrize("padding,mode", [("border", "nearest"), ("zeros", "constant")])
def test_bilinear_matches_map_coordinates(padding, mode):
    key_image, key_pix = jax.random.split(jax.random.key(0))
    image = jax.random.uniform(key_image, (3, 9, 13, 3))
    pix = jax.random.uniform(key_pix, (3, 7, 11, 2), minval=-3.0, maxval=16.0)
    ours = geometry.bilinear_sample(image, pix, padding)
    reference = jax.jit(_map_coordinates, static_argnums=2)(image, pix, mode)
    np.testing.assert_allclose(ours, reference, atol=1e-6)


@pytest.mark.parametrize("padding,mode", [("border", "nearest"), ("zeros", "constant")])
def test_bilinear_gradients_match_autodiff_of_map_coordinates(padding, mode):
    key_image, key_pix, key_w = jax.random.split(jax.random.key(1), 3)
    image = jax.random.uniform(key_image, (2, 9, 13, 3))
    # Non-integer coordinates away from the clamp edges, where both gradients are unambiguous,
    # plus points far outside (zero pix gradient).
    pix = jax.random.uniform(key_pix, (2, 6, 5, 2), minval=-0.9, maxval=8.9)
    pix = pix.at[:, 0, 0].set(jnp.array([-5.5, 3.3])).at[:, 0, 1].set(jnp.array([4.2, 20.7]))
    weights = jax.random.normal(key_w, (2, 6, 5, 3))

    def loss(sampler):
        return lambda img, p: jnp.sum(weights * sampler(img, p))

    ours = jax.jit(jax.grad(loss(lambda i, p: geometry.bilinear_sample(i, p, padding)), (0, 1)))(
        image, pix
    )
    ref = jax.jit(jax.grad(loss(lambda i, p: _map_coordinates(i, p, mode)), (0, 1)))(image, pix)
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-5)
    np.testing.assert_allclose(ours[1], ref[1], atol=1e-5)
    # clamped (border) or all-zero-tap (zeros) coordinates get no gradient
    np.testing.assert_array_equal(ours[1][:, 0, 0, 0], 0.0)
    np.testing.assert_array_equal(ours[1][:, 0, 1, 1], 0.0)


def test_bilinear_rejects_bad_arguments():
    image = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match="padding"):
        geometry.bilinear_sample(image, jnp.zeros((2, 4, 4, 2)), "reflect")
    with pytest.raises(ValueError, match="pix must be"):
        geometry.bilinear_sample(image, jnp.zeros((1, 4, 4, 2)))


# ----------------------------------------------------------------------------- warping


def test_identity_pose_warp_returns_the_image_for_any_depth():
    key_img, key_depth = jax.random.split(jax.random.key(2))
    image = jax.random.uniform(key_img, (2, 12, 20, 3))
    depth = jax.random.uniform(key_depth, (2, 12, 20, 1), minval=0.1, maxval=100.0)
    K, inv_K = _intrinsics(18.0, 17.0, 9.5, 5.5, batch=2)
    T = jnp.broadcast_to(jnp.eye(4), (2, 4, 4))
    warped, pix = jax.jit(geometry.inverse_warp)(image, depth, T, K, inv_K)
    np.testing.assert_allclose(warped, image, atol=1e-5)
    assert pix.shape == (2, 12, 20, 2)


def test_fused_reprojection_matches_generic_path_with_gradients():
    """inverse_warp's fused [B, 4, 4] path (hand-written VJP) vs backproject/project autodiff."""
    keys = jax.random.split(jax.random.key(3), 4)
    K, inv_K = _intrinsics(18.0, 17.0, 9.5, 5.5, batch=2)
    depth = jax.random.uniform(keys[0], (2, 12, 20, 1), minval=1.0, maxval=20.0)
    T = geometry.transformation_from_parameters(
        0.05 * jax.random.normal(keys[1], (2, 3)), 0.3 * jax.random.normal(keys[2], (2, 3))
    )
    weights = jax.random.normal(keys[3], (2, 12, 20, 2))

    def fused(d, t, k, ik):
        return jnp.sum(weights * geometry.inverse_warp(jnp.zeros((2, 4, 4, 1)), d, t, k, ik)[1])

    def generic(d, t, k, ik):  # a per-pixel T takes the plain backproject/project route
        t_pixels = jnp.broadcast_to(t[:, None, None], (2, 12, 20, 4, 4))
        return jnp.sum(weights * geometry.project(geometry.backproject(d, ik), k, t_pixels)[0])

    args = (depth, T, K, inv_K)
    np.testing.assert_allclose(jax.jit(fused)(*args), jax.jit(generic)(*args), rtol=1e-5)
    ours = jax.jit(jax.grad(fused, (0, 1, 2, 3)))(*args)
    reference = jax.jit(jax.grad(generic, (0, 1, 2, 3)))(*args)
    for name, a, b in zip(["depth", "T", "K", "inv_K"], ours, reference):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(a, b, atol=1e-4 * scale, err_msg=name)


def _textured_plane_views(height, width, focal, depth, tx):
    """Target view and the view of a camera moved by +tx along x, of a plane at depth ``depth``.

    Points move into the source frame as X_src = X_tgt - (camera offset), so T has translation -tx
    and a target pixel u is seen at u - focal * tx / depth in the source.
    """
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0

    def texture(X, Y):  # smooth (periods of >= 12 px) so bilinear interpolation is accurate
        k = 2 * np.pi * focal / depth
        return np.stack([
            0.5 + 0.3 * np.sin(k * X / 14.0 + 0.3) * np.cos(k * Y / 17.0),
            0.5 + 0.25 * np.cos(k * (X + Y) / 12.0),
            0.5 + 0.3 * np.sin(k * X / 21.0 - k * Y / 13.0),
        ], axis=-1)

    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    X = (xs - cx) * depth / focal
    Y = (ys - cy) * depth / focal
    target = texture(X, Y)
    source = texture(X + tx, Y)  # source pixel (u, v) sees the plane point at X_cam + tx
    K, inv_K = _intrinsics(focal, focal, cx, cy)
    T = np.eye(4, dtype=np.float32)[None].copy()
    T[0, 0, 3] = -tx
    f32 = lambda a: jnp.asarray(a[None], jnp.float32)  # noqa: E731
    return f32(target), f32(source), jnp.asarray(T), K, inv_K


def test_translation_warp_with_true_depth_aligns_rendered_views():
    height, width, focal, depth, tx = 40, 64, 50.0, 4.0, 0.264  # shift 3.3 px
    target, source, T, K, inv_K = _textured_plane_views(height, width, focal, depth, tx)
    interior = (slice(None), slice(2, -2), slice(6, -2))  # target u < 3.3 is off-image

    def error(depth_value):
        depth_map = jnp.full((1, height, width, 1), depth_value)
        warped, _ = jax.jit(geometry.inverse_warp)(source, depth_map, T, K, inv_K)
        return float(jnp.mean(photometric_error(warped, target)[interior]))

    unwarped = float(jnp.mean(photometric_error(source, target)[interior]))
    true_depth, wrong_depth = error(depth), error(2.0 * depth)
    assert true_depth < 5e-3
    assert wrong_depth > 10 * true_depth
    assert unwarped > wrong_depth


def _middlebury_warp_errors():
    """Mean photometric error (unwarped, warped) of the Middlebury motorcycle pair, left view."""
    left, right, disp = skimage.data.stereo_motorcycle()
    left = jnp.asarray(left[None] / 255.0, jnp.float32)
    right = jnp.asarray(right[None] / 255.0, jnp.float32)
    height, width = disp.shape
    valid = np.isfinite(disp)
    disp = np.where(valid, disp, 1.0).astype(np.float32)
    # Any consistent (focal, baseline) works: depth = f * b / d and the right camera sits at +b
    # along x, so T (left -> right) translates by -b and x_right = x_left - d.
    focal, baseline = 994.978, 0.193
    K, inv_K = _intrinsics(focal, focal, 311.193, 254.877)
    T = jnp.asarray(np.eye(4, dtype=np.float32)[None]).at[0, 0, 3].set(-baseline)
    depth = jnp.asarray(focal * baseline / disp)[None, :, :, None]
    warped, pix = jax.jit(geometry.inverse_warp)(right, depth, T, K, inv_K)
    in_bounds = np.asarray(pix[0, ..., 0] >= 0) & np.asarray(pix[0, ..., 0] <= width - 1)
    np.testing.assert_allclose(pix[0, ..., 0], np.arange(width)[None] - disp, atol=2e-3)
    mask = valid & in_bounds
    unwarped_error = np.asarray(photometric_error(right, left))[0, ..., 0][mask].mean()
    warped_error = np.asarray(photometric_error(warped, left))[0, ..., 0][mask].mean()
    return float(unwarped_error), float(warped_error)


def test_real_stereo_pair_warps_into_alignment():
    unwarped_error, warped_error = _middlebury_warp_errors()
    print(f"middlebury photometric error: unwarped {unwarped_error:.4f} warped {warped_error:.4f}")
    assert warped_error < 0.5 * unwarped_error


def test_warp_gradient_stays_finite_when_a_point_lands_on_the_source_camera_plane():
    # Depth 0 puts the left half's points at the camera centre; the translation then moves them to
    # z = -1e-7, where z + eps is exactly 0 and they project to infinity. The forward pass clamps
    # them to the border; the backward pass must not turn 0 * inf into a NaN for the whole step.
    height, width = 6, 8
    K = jnp.asarray([[[4.0, 0, 3.5, 0], [0, 4.0, 2.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]]])
    inv_K = jnp.linalg.inv(K)
    depth = jnp.concatenate(
        [jnp.zeros((1, height, width // 2, 1)), jnp.full((1, height, width // 2, 1), 2.0)], axis=2
    )
    source = jnp.asarray(np.random.default_rng(0).random((1, height, width, 3)), jnp.float32)
    T = jnp.eye(4)[None].at[0, :3, 3].set(jnp.asarray([0.3, 0.0, -1e-7]))

    def loss(depth, T):
        warped, _ = geometry.inverse_warp(source, depth, T, K, inv_K)
        return jnp.sum(warped)

    grad_depth, grad_T = jax.grad(loss, argnums=(0, 1))(depth, T)
    assert np.all(np.isfinite(grad_depth)) and np.all(np.isfinite(grad_T))
    np.testing.assert_array_equal(grad_depth[:, :, : width // 2], 0.0)
    assert float(jnp.abs(grad_depth[:, :, width // 2 :]).max()) > 0.0
