"""Tests for the Monodepth2 losses: SSIM, photometric error, min reprojection, smoothness, total."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth import geometry
from jdepth.losses import monodepth, photometric, smoothness

# ----------------------------------------------------------------------------- SSIM / photometric


def _ssim_loss_numpy(x, y):
    """Monodepth2's SSIM written directly: reflection pad, explicit 3x3 window means."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    xp, yp = np.pad(x, pad, mode="reflect"), np.pad(y, pad, mode="reflect")
    _, height, width, _ = x.shape
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(height):
        for j in range(width):
            wx = xp[:, i : i + 3, j : j + 3].astype(np.float64)
            wy = yp[:, i : i + 3, j : j + 3].astype(np.float64)
            mu_x, mu_y = wx.mean((1, 2)), wy.mean((1, 2))
            var_x = (wx**2).mean((1, 2)) - mu_x**2
            var_y = (wy**2).mean((1, 2)) - mu_y**2
            cov = (wx * wy).mean((1, 2)) - mu_x * mu_y
            c1, c2 = 0.01**2, 0.03**2
            ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
                (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
            )
            out[:, i, j] = np.clip((1 - ssim) / 2, 0, 1)
    return out


def test_ssim_identical_images_is_zero():
    x = jax.random.uniform(jax.random.key(0), (2, 6, 7, 3))
    np.testing.assert_allclose(photometric.ssim_loss(x, x), 0.0, atol=1e-6)


def test_ssim_of_constant_images_is_analytic():
    a, b = 0.25, 0.5  # exact in float32, so the variances E[x^2] - E[x]^2 are exactly 0
    x, y = jnp.full((1, 4, 5, 3), a), jnp.full((1, 4, 5, 3), b)
    # zero variances: SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    expected = (1 - (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)) / 2  # 0.099968...
    np.testing.assert_allclose(photometric.ssim_loss(x, y), expected, rtol=1e-5)


def test_ssim_matches_direct_reflect_pad_formula_at_borders():
    key_x, key_y = jax.random.split(jax.random.key(1))
    x = np.asarray(jax.random.uniform(key_x, (2, 5, 6, 3)))
    y = np.clip(x + 0.2 * np.asarray(jax.random.normal(key_y, x.shape)), 0, 1)
    ours = np.asarray(jax.jit(photometric.ssim_loss)(x, y))
    np.testing.assert_allclose(ours, _ssim_loss_numpy(x, y), atol=2e-5)
    # reflection (not edge) padding matters at the border
    edge = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    assert not np.allclose(edge[:, 0], np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), "reflect")[:, 0])


def _ssim_loss_autodiff(x, y):
    """Plain-autodiff SSIM (reduce_window box mean) to check the hand-written VJP against."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    x, y = jnp.pad(x, pad, mode="reflect"), jnp.pad(y, pad, mode="reflect")

    def mean(a):
        return jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, 3, 3, 1), (1,) * 4, "VALID") / 9

    mu_x, mu_y = mean(x), mean(y)
    var_x, var_y = mean(x * x) - mu_x**2, mean(y * y) - mu_y**2
    cov = mean(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + 1e-4) * (2 * cov + 9e-4)) / (
        (mu_x**2 + mu_y**2 + 1e-4) * (var_x + var_y + 9e-4))
    return jnp.clip((1 - ssim) / 2, 0, 1)


@pytest.mark.parametrize("shape", [(2, 5, 6, 3), (1, 2, 3, 1)])
def test_ssim_gradients_match_autodiff(shape):
    key_x, key_y, key_w = jax.random.split(jax.random.key(6), 3)
    x = jax.random.uniform(key_x, shape)
    y = jnp.clip(x + 0.3 * jax.random.normal(key_y, shape), 0, 1)
    weights = jax.random.normal(key_w, shape)

    def grads(fn):
        return jax.jit(jax.grad(lambda a, b: jnp.sum(weights * fn(a, b)), (0, 1)))(x, y)

    ours, reference = grads(photometric.ssim_loss), grads(_ssim_loss_autodiff)
    np.testing.assert_allclose(ours[0], reference[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours[1], reference[1], atol=1e-4, rtol=1e-4)


def test_ssim_gradient_is_finite_where_the_structure_term_is_exactly_zero(monkeypatch):
    # b = 2 sigma_xy + C2 crosses zero on anti-correlated patches; an exact zero (seen in training
    # at step 241 of the demo) made the old log-derivative backward 0 / 0 = NaN.
    shape = (1, 4, 5, 3)
    x = jax.random.uniform(jax.random.key(1), shape)
    y = 1.0 - x
    real_terms = photometric._ssim_terms

    def zero_b_at_one_pixel(a, b):
        mu_x, mu_y, lum_num, struct_num, lum_den, struct_den = real_terms(a, b)
        return mu_x, mu_y, lum_num, struct_num.at[0, 1, 2, 0].set(0.0), lum_den, struct_den

    monkeypatch.setattr(photometric, "_ssim_terms", zero_b_at_one_pixel)
    grad_x, grad_y = photometric._ssim_loss_bwd((x, y), jnp.ones(shape))
    assert np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_y))
    # Away from that pixel's windows the gradient is the unpatched one.
    monkeypatch.setattr(photometric, "_ssim_terms", real_terms)
    ref_x, _ = photometric._ssim_loss_bwd((x, y), jnp.ones(shape))
    np.testing.assert_allclose(grad_x[0, :, 4, 1:], ref_x[0, :, 4, 1:], rtol=1e-6)


def test_ssim_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="ssim_loss"):
        photometric.ssim_loss(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 5, 3)))


def test_photometric_error_on_constant_images():
    a, b = 0.25, 0.5
    pred, target = jnp.full((1, 3, 4, 3), a), jnp.full((1, 3, 4, 3), b)
    ssim = (1 - (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)) / 2
    error = photometric.photometric_error(pred, target)
    assert error.shape == (1, 3, 4, 1)
    np.testing.assert_allclose(error, 0.85 * ssim + 0.15 * 0.25, rtol=1e-5)
    np.testing.assert_allclose(photometric.photometric_error(pred, target, 0.0), 0.25, rtol=1e-6)


# ----------------------------------------------------------------------------- min reprojection


_REPROJECTION = jnp.array([[1.0, 2.0], [0.5, 0.1], [3.0, 3.0]]).reshape(1, 1, 3, 2)
_IDENTITY = jnp.array([[0.2, 5.0], [1.0, 1.0], [4.0, 2.5]]).reshape(1, 1, 3, 2)


def test_min_reprojection_with_automask_hand_case():
    loss, aux = photometric.min_reprojection(_REPROJECTION, _IDENTITY)
    assert loss.shape == (1, 1, 3, 1)
    np.testing.assert_array_equal(loss[0, 0, :, 0], np.float32([0.2, 0.1, 2.5]))
    # pixel 0 and 2: an identity error is smallest (static); pixel 1: warped source 1 wins
    np.testing.assert_array_equal(aux["identity_selection"][0, 0, :, 0], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(aux["identity_wins"][0, 0, :, 0], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(aux["min_index"][0, 0], [0, 3, 1])


def test_min_reprojection_noise_breaks_ties_only_slightly():
    loss, aux = photometric.min_reprojection(_REPROJECTION, _IDENTITY, jax.random.key(3))
    np.testing.assert_allclose(loss[0, 0, :, 0], [0.2, 0.1, 2.5], atol=1e-4)
    assert not np.array_equal(loss[0, 0, [0, 2], 0], np.float32([0.2, 2.5]))  # noise was added
    np.testing.assert_array_equal(aux["identity_selection"][0, 0, :, 0], [0.0, 1.0, 0.0])


def test_per_sample_noise_keys_do_not_depend_on_the_batch_split():
    keys = jax.random.split(jax.random.key(7), 2)
    identity = jnp.zeros((2, 3, 4, 2))
    reprojection = jnp.ones((2, 3, 4, 2))
    # identity 0 + noise always beats 1, so the loss is the min of the two noise draws
    whole, _ = photometric.min_reprojection(reprojection, identity, keys)
    split = [
        photometric.min_reprojection(reprojection[i:i + 1], identity[i:i + 1], keys[i:i + 1])[0]
        for i in range(2)
    ]
    np.testing.assert_array_equal(whole, jnp.concatenate(split))
    noise = photometric.tie_breaking_noise(keys[1], (3, 4, 2))
    np.testing.assert_allclose(whole[1, ..., 0], 1e-5 * jnp.min(noise, axis=-1), rtol=1e-6)
    assert float(jnp.std(whole)) > 0


def test_min_reprojection_average_and_no_automask():
    loss, aux = photometric.min_reprojection(_REPROJECTION, _IDENTITY, avg_reprojection=True)
    # mean reprojection [1.5, 0.3, 3.0] vs mean identity [2.6, 1.0, 3.25]
    np.testing.assert_allclose(loss[0, 0, :, 0], [1.5, 0.3, 3.0], rtol=1e-6)
    np.testing.assert_array_equal(aux["identity_selection"][0, 0, :, 0], [1.0, 1.0, 1.0])
    loss, aux = photometric.min_reprojection(_REPROJECTION, None)
    np.testing.assert_array_equal(loss[0, 0, :, 0], np.float32([1.0, 0.1, 3.0]))
    np.testing.assert_array_equal(aux["identity_selection"], 1.0)


# ----------------------------------------------------------------------------- smoothness


def test_smoothness_ramp_with_constant_image():
    disp = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]).reshape(1, 2, 3, 1)
    image = jnp.full((1, 2, 3, 3), 0.5)
    # normalised by the mean 2 -> steps of 0.5 in x, none in y, weights exp(0) = 1
    np.testing.assert_allclose(smoothness.edge_aware_smoothness(disp, image), 0.5, rtol=1e-6)


def test_smoothness_is_down_weighted_at_image_edges():
    disp = jnp.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]).reshape(1, 2, 3, 1)  # mean 3
    image = jnp.zeros((1, 2, 3, 3)).at[:, :, 2].set(1.0)  # step between columns 1 and 2
    image = image.at[:, 1, :, 0].add(0.3)  # one channel changes between rows: mean_c 0.1
    # x: |dx| = [1/3, 1/3; 2/3, 2/3] weighted [1, e^-1] ; y: |dy| = [1/3, 2/3, 1] weighted e^-0.1
    x_term = np.mean([1 / 3, np.exp(-1) / 3, 2 / 3, 2 * np.exp(-1) / 3])
    y_term = np.mean([1 / 3, 2 / 3, 1.0]) * np.exp(-0.1)
    np.testing.assert_allclose(
        smoothness.edge_aware_smoothness(disp, image), x_term + y_term, rtol=1e-5
    )


def test_smoothness_is_invariant_to_disparity_scale():
    key_d, key_i = jax.random.split(jax.random.key(4))
    disp = jax.random.uniform(key_d, (2, 6, 8, 1), minval=0.1)
    image = jax.random.uniform(key_i, (2, 6, 8, 3))
    smooth = jax.jit(smoothness.edge_aware_smoothness)
    np.testing.assert_allclose(smooth(3.0 * disp, image), smooth(disp, image), rtol=1e-5)


# ----------------------------------------------------------------------------- full objective


def test_upsample_disp_matches_pytorch_bilinear_align_corners_false():
    def torch_bilinear(img, out_h, out_w):  # F.interpolate(bilinear, align_corners=False)
        def axis(out, size):
            src = np.maximum((np.arange(out) + 0.5) * size / out - 0.5, 0.0)
            lo = np.minimum(np.floor(src).astype(int), size - 1)
            return lo, np.minimum(lo + 1, size - 1), src - lo

        y0, y1, ly = axis(out_h, img.shape[0])
        x0, x1, lx = axis(out_w, img.shape[1])
        top = img[y0][:, x0] * (1 - lx) + img[y0][:, x1] * lx
        bottom = img[y1][:, x0] * (1 - lx) + img[y1][:, x1] * lx
        return top * (1 - ly)[:, None] + bottom * ly[:, None]

    for in_shape, out_shape in [((3, 5), (24, 40)), ((6, 20), (48, 160)), ((4, 4), (6, 10))]:
        disp = np.random.default_rng(0).random(in_shape).astype(np.float32)
        batch = jnp.asarray(disp)[None, :, :, None]
        ours = monodepth.upsample_disp(batch, *out_shape)
        np.testing.assert_allclose(ours[0, :, :, 0], torch_bilinear(disp, *out_shape), atol=1e-6)
        # jax.image.resize uses the same convention when upsampling
        resized = jax.image.resize(batch, (1, *out_shape, 1), "linear")
        np.testing.assert_allclose(ours, resized, atol=1e-6)


def _two_view_plane(height=32, width=48, focal=40.0, depth=4.0, shift_px=2.5):
    """Target and sources -1 / +1 of a textured fronto-parallel plane, with exact poses.

    Source f's camera sits at x = f * tx, so its points are X_f = X_0 - f * tx (T translation
    -f * tx) and the target pixel u appears at u - f * shift_px in source f.
    """
    tx = shift_px * depth / focal
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    Y = (ys - cy) * depth / focal

    def render(offset):
        X = (xs - cx) * depth / focal + offset
        image = np.stack([0.5 + 0.3 * np.sin(2.1 * X + 0.4) * np.cos(1.7 * Y),
                          0.5 + 0.25 * np.cos(1.5 * (X + Y)),
                          0.5 + 0.3 * np.sin(1.1 * X - 1.9 * Y)], axis=-1)
        return jnp.asarray(image[None], jnp.float32)

    K = np.array([[focal, 0, cx, 0], [0, focal, cy, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    poses = {}
    for frame in (-1, 1):
        T = np.eye(4, dtype=np.float32)
        T[0, 3] = -frame * tx
        poses[frame] = jnp.asarray(T[None])
    sources = {frame: render(frame * tx) for frame in (-1, 1)}
    return render(0.0), sources, poses, jnp.asarray(K[None]), jnp.asarray(np.linalg.inv(K)[None])


def _pyramid(image, num_scales=4):
    _, height, width, channels = image.shape
    return {
        s: jax.image.resize(image, (1, height >> s, width >> s, channels), "linear")
        for s in range(num_scales)
    }


def _disp_for_depth(depth, min_depth=0.1, max_depth=100.0):
    return (1.0 / depth - 1.0 / max_depth) / (1.0 / min_depth - 1.0 / max_depth)


def test_monodepth_loss_is_zero_photometric_with_true_depth_and_poses():
    target, sources, poses, K, inv_K = _two_view_plane()
    _, height, width, _ = target.shape
    # Images are arguments, not closed-over constants, so XLA does not constant-fold the SSIMs.
    loss = jax.jit(functools.partial(monodepth.monodepth_loss, key=jax.random.key(0)))
    loss_fn = lambda d: loss(d, target, sources, poses, K, inv_K, _pyramid(target))  # noqa: E731
    true_disps = {s: jnp.full((1, height >> s, width >> s, 1), _disp_for_depth(4.0))
                  for s in range(4)}
    total, aux = loss_fn(true_disps)
    for name in ["photometric", "smoothness", "identity_selection", "warped/-1", "warped/1",
                 "depth"] + [f"{term}/s{s}" for term in ("photometric", "smoothness")
                             for s in range(4)]:
        assert name in aux, name
    np.testing.assert_allclose(aux["depth"], 4.0, rtol=1e-4)
    assert float(aux["photometric"]) < 2e-3
    np.testing.assert_allclose(aux["smoothness"], 0.0, atol=1e-7)  # constant disparity
    np.testing.assert_allclose(total, aux["photometric"] + aux["smoothness"], rtol=1e-6)
    # the textured scene moves, so warped sources beat the identity almost everywhere
    assert float(jnp.mean(aux["identity_selection"])) > 0.95

    wrong_disps = {s: jnp.full_like(d, _disp_for_depth(8.0)) for s, d in true_disps.items()}
    assert float(loss_fn(wrong_disps)[1]["photometric"]) > 10 * float(aux["photometric"])


def test_monodepth_loss_random_inputs_give_finite_values_and_gradients():
    keys = jax.random.split(jax.random.key(5), 8)
    batch, height, width = 2, 32, 64
    target = jax.random.uniform(keys[0], (batch, height, width, 3))
    sources = {f: jax.random.uniform(keys[1 + i], target.shape) for i, f in enumerate((-1, 1))}
    poses = {
        f: geometry.transformation_from_parameters(
            0.01 * jax.random.normal(keys[3 + i], (batch, 3)),
            0.1 * jax.random.normal(keys[5 + i], (batch, 3)),
            invert=f < 0,
        )
        for i, f in enumerate((-1, 1))
    }
    K = jnp.asarray(np.broadcast_to(
        np.array([[37.1, 0, 32, 0], [0, 61.4, 16, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32),
        (batch, 4, 4)))
    inv_K = jnp.linalg.inv(K)
    pyramid = {s: jax.image.resize(target, (batch, height >> s, width >> s, 3), "linear")
               for s in range(4)}
    disps = {s: jax.random.uniform(jax.random.fold_in(keys[7], s),
                                   (batch, height >> s, width >> s, 1)) for s in range(4)}

    def total(d, *images):
        return monodepth.monodepth_loss(d, *images, key=jax.random.key(0))

    (value, aux), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(
        disps, target, sources, poses, K, inv_K, pyramid)
    assert np.isfinite(float(value)) and float(value) > 0
    for s in range(4):
        assert grads[s].shape == disps[s].shape
        assert np.all(np.isfinite(grads[s])) and float(jnp.abs(grads[s]).max()) > 0
    expected = sum(aux[f"photometric/s{s}"] + 1e-3 * aux[f"smoothness/s{s}"] / 2**s
                   for s in range(4)) / 4
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_photometric_loss_for_depth_pixel_weights_are_a_masked_mean():
    target, sources, poses, K, inv_K = _two_view_plane(height=16, width=24)
    depth = jnp.full((1, 16, 24, 1), 3.0)  # wrong depth, so the per-pixel loss varies
    identity = monodepth.identity_errors(target, sources)
    weights = jnp.zeros((1, 16, 24, 1)).at[:, :, :10].set(1.0)
    loss_fn = jax.jit(monodepth.photometric_loss_for_depth)
    loss, aux = loss_fn(depth, target, sources, poses, K, inv_K, identity=identity,
                        pixel_weights=weights)
    np.testing.assert_allclose(loss, jnp.mean(aux["per_pixel"][:, :, :10]), rtol=1e-5)
    assert aux["reprojection"].shape == (1, 16, 24, 2)
    ones, _ = loss_fn(depth, target, sources, poses, K, inv_K, identity=identity,
                      pixel_weights=jnp.ones_like(weights))
    np.testing.assert_allclose(ones, jnp.mean(aux["per_pixel"]), rtol=1e-5)


def test_monodepth_loss_rejects_inconsistent_inputs():
    target, sources, poses, K, inv_K = _two_view_plane(height=16, width=24)
    disps = {0: jnp.full((1, 16, 24, 1), 0.5)}
    pyramid = {0: target}
    with pytest.raises(ValueError, match="no pose for source"):
        monodepth.monodepth_loss(disps, target, sources, {-1: poses[-1]}, K, inv_K, pyramid,
                                 key=None)
    with pytest.raises(ValueError, match="target_pyramid has no scale 1"):
        monodepth.monodepth_loss({**disps, 1: jnp.full((1, 8, 12, 1), 0.5)}, target, sources,
                                 poses, K, inv_K, pyramid, key=None)
    with pytest.raises(ValueError, match="pixel_weights"):
        monodepth.monodepth_loss(disps, target, sources, poses, K, inv_K, pyramid, key=None,
                                 pixel_weights=jnp.ones((1, 8, 8, 1)))


def test_automask_delay_switches_the_identity_competition_without_recompiling():
    keys = jax.random.split(jax.random.key(3), 8)
    batch, height, width = 1, 16, 24
    target = jax.random.uniform(keys[0], (batch, height, width, 3))
    # Source -1 equals the target: its identity error is 0 everywhere, so a live automask
    # selects it at every pixel and the photometric loss is ~0.
    sources = {-1: target, 1: jax.random.uniform(keys[1], target.shape)}
    poses = {f: geometry.transformation_from_parameters(
        jnp.zeros((batch, 3)), 0.2 * jax.random.normal(keys[2 + i], (batch, 3)))
        for i, f in enumerate((-1, 1))}
    K = jnp.asarray([[[20.0, 0, 12, 0], [0, 20.0, 8, 0], [0, 0, 1, 0], [0, 0, 0, 1]]])
    inv_K = jnp.linalg.inv(K)
    pyramid = {0: target}
    disps = {0: jax.random.uniform(keys[5], (batch, height, width, 1))}

    @jax.jit
    def photometric(active):
        _, aux = monodepth.monodepth_loss(disps, target, sources, poses, K, inv_K, pyramid,
                                          key=None, automask_active=active)
        return aux["photometric"], aux["identity_selection"]

    def reference(automask):
        _, aux = monodepth.monodepth_loss(disps, target, sources, poses, K, inv_K, pyramid,
                                          key=None, automask=automask)
        return aux["photometric"]

    off, off_selection = photometric(jnp.float32(0.0))
    on, on_selection = photometric(jnp.float32(1.0))
    np.testing.assert_allclose(off, reference(False), rtol=1e-6)
    np.testing.assert_allclose(on, reference(True), rtol=1e-6)
    assert float(on) < 1e-6 < float(off)
    np.testing.assert_array_equal(off_selection, 1.0)  # a warped source wins everywhere
    np.testing.assert_array_equal(on_selection, 0.0)
    assert photometric._cache_size() == 1
