"""KITTI depth metrics and the Monodepth2 evaluation protocol, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import skimage.transform

from jdepth.eval import metrics


def test_compute_depth_errors_hand_values():
    errors = metrics.compute_depth_errors(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 8.0]))
    # |g - p| / g = 0, 1/2, 1;  (g - p)^2 / g = 0, 1/2, 4;  (g - p)^2 = 0, 1, 16;
    # ln g - ln p = 0, ln 2, -ln 2;  max(g/p, p/g) = 1, 2, 2.
    assert errors["abs_rel"] == pytest.approx(0.5)
    assert errors["sq_rel"] == pytest.approx(1.5)
    assert errors["rmse"] == pytest.approx(math.sqrt(17 / 3))
    assert errors["rmse_log"] == pytest.approx(math.log(2) * math.sqrt(2 / 3))
    assert errors["a1"] == errors["a2"] == errors["a3"] == pytest.approx(1 / 3)
    assert list(errors) == list(metrics.METRIC_NAMES)


def test_compute_depth_errors_thresholds():
    gt = np.full(4, 10.0)
    pred = gt * np.array([1.2, 1 / 1.5, 1.9, 2.5])  # ratios 1.2, 1.5, 1.9, 2.5
    errors = metrics.compute_depth_errors(gt, pred)
    assert errors["a1"] == 0.25  # only 1.2 < 1.25
    assert errors["a2"] == 0.5  # 1.5 < 1.5625
    assert errors["a3"] == 0.75  # 1.9 < 1.953125
    assert errors["abs_rel"] == pytest.approx((0.2 + 1 / 3 + 0.9 + 1.5) / 4)
    with pytest.raises(ValueError, match="no pixels"):
        metrics.compute_depth_errors(np.array([]), np.array([]))


def test_garg_crop_indices_on_kitti_size():
    mask = metrics.garg_crop_mask(375, 1242)
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    assert (rows[0], rows[-1]) == (153, 370)
    assert (cols[0], cols[-1]) == (44, 1196)
    assert mask.sum() == 218 * 1153  # a full rectangle
    assert mask.dtype == bool
    # A different native size (some drives are 370 x 1224): int32 truncation of each bound.
    other = metrics.garg_crop_mask(370, 1224)
    rows = np.nonzero(other.any(axis=1))[0]
    assert (rows[0], rows[-1]) == (int(0.40810811 * 370), int(0.99189189 * 370) - 1)


def test_resize_bilinear_hand_values():
    # Upsampling [0, 1] to 4: sample points (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped.
    np.testing.assert_allclose(
        metrics.resize_bilinear(np.array([[0.0, 1.0]]), 1, 4), [[0.0, 0.25, 0.75, 1.0]]
    )
    # Downsampling 4 -> 2: sample points 0.5 and 2.5, the means of pairs (no antialiasing).
    np.testing.assert_allclose(
        metrics.resize_bilinear(np.array([[0.0, 2.0, 4.0, 10.0]]), 1, 2), [[1.0, 7.0]]
    )
    grid = np.array([[0.0, 4.0], [8.0, 12.0]])
    up = metrics.resize_bilinear(grid, 4, 4)
    np.testing.assert_allclose(up[0], [0.0, 1.0, 3.0, 4.0])
    np.testing.assert_allclose(up[1], [2.0, 3.0, 5.0, 6.0])
    np.testing.assert_allclose(up[:, 0], [0.0, 2.0, 6.0, 8.0])
    same = np.random.default_rng(0).random((5, 7))
    np.testing.assert_array_equal(metrics.resize_bilinear(same, 5, 7), same)
    assert metrics.resize_bilinear(same.astype(np.float32), 3, 3).dtype == np.float32
    assert metrics.resize_bilinear(np.ones((2, 3, 2)), 4, 6).shape == (4, 6, 2)


@pytest.mark.parametrize("in_shape,out_shape", [((192, 640), (375, 1242)), ((40, 50), (17, 23))])
def test_resize_bilinear_matches_skimage_and_scipy(in_shape, out_shape):
    image = np.random.default_rng(1).random(in_shape)
    ours = metrics.resize_bilinear(image, *out_shape)
    sk = skimage.transform.resize(
        image, out_shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True
    )
    np.testing.assert_allclose(ours, sk, atol=1e-12)
    zoom = np.array(out_shape) / np.array(in_shape)
    sp = scipy.ndimage.zoom(image, zoom, order=1, mode="nearest", grid_mode=True)
    assert sp.shape == out_shape
    np.testing.assert_allclose(ours, sp, atol=1e-12)


def _scene(rng, height=30, width=40):
    """A dense positive depth field and its sparse (60 %) ground truth."""
    dense = rng.uniform(2.0, 70.0, size=(height, width))
    gt = np.where(rng.random((height, width)) < 0.6, dense, 0.0)
    return dense, gt


def test_median_scaling_recovers_scale():
    rng = np.random.default_rng(2)
    scenes = [_scene(rng) for _ in range(3)]
    gts = [gt for _, gt in scenes]
    disps = [3.0 / dense for dense, _ in scenes]  # depth = dense / 3: three times too small
    result = metrics.evaluate_predictions(gts, disps, garg_crop=False)
    assert result["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert result["rmse"] == pytest.approx(0.0, abs=1e-9)
    assert result["a1"] == 1.0
    assert result["scale_ratio_median"] == pytest.approx(3.0)
    assert result["scale_ratio_std"] == pytest.approx(0.0, abs=1e-12)
    assert result["num_images"] == 3

    unscaled = metrics.evaluate_predictions(gts, disps, garg_crop=False, median_scaling=False)
    assert unscaled["abs_rel"] == pytest.approx(2 / 3)  # |g - g/3| / g
    assert unscaled["scale_ratio_median"] == pytest.approx(3.0)  # still reported
    assert unscaled["a3"] == 0.0
    stereo = metrics.evaluate_predictions(
        gts, disps, garg_crop=False, median_scaling=False, pred_depth_scale_factor=3.0
    )
    assert stereo["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert stereo["scale_ratio_median"] == pytest.approx(1.0)


def test_ratio_statistics_over_images():
    rng = np.random.default_rng(3)
    scenes = [_scene(rng) for _ in range(3)]
    factors = [1.0, 2.0, 4.0]
    disps = [f / dense for (dense, _), f in zip(scenes, factors)]
    result = metrics.evaluate_predictions([gt for _, gt in scenes], disps, garg_crop=False)
    assert result["scale_ratio_median"] == pytest.approx(2.0)
    assert result["scale_ratio_std"] == pytest.approx(np.std([0.5, 1.0, 2.0]))
    assert result["abs_rel"] == pytest.approx(0.0, abs=1e-12)


def test_evaluate_resizes_masks_and_clamps():
    # Prediction at half resolution, constant disparity 1/10 -> depth 10 everywhere after resizing.
    gt = np.zeros((375, 1242))
    gt[200, 100] = 5.0  # inside the crop
    gt[300, 600] = 20.0  # inside the crop
    gt[10, 10] = 7.0  # outside the crop (row 10 < 153)
    gt[250, 700] = 85.0  # beyond max_depth: not evaluated
    pred = np.full((188, 621, 1), 0.1)
    result = metrics.evaluate_predictions([gt], [pred], median_scaling=False)
    # Pixels (5, 10) and (20, 10): abs_rel = (1 + 0.5) / 2, rmse = sqrt((25 + 100) / 2).
    assert result["abs_rel"] == pytest.approx(0.75)
    assert result["rmse"] == pytest.approx(math.sqrt(62.5))
    assert result["scale_ratio_median"] == pytest.approx(12.5 / 10)
    assert result["a1"] == result["a3"] == 0.0  # ratio 2 exceeds 1.25^3

    # Benchmark protocol: no crop and gt > 0 everywhere, so 7 m and 85 m count too; the
    # prediction is clamped to max_depth = 80 only on the prediction side.
    bench = metrics.evaluate_predictions(
        [gt], [np.full((188, 621), 1 / 100.0)], median_scaling=False,
        **metrics.protocol_options("eigen_benchmark"),
    )
    expected = np.mean(np.abs(np.array([5.0, 20.0, 7.0, 85.0]) - 80.0) / [5.0, 20.0, 7.0, 85.0])
    assert bench["abs_rel"] == pytest.approx(expected)
    assert metrics.protocol_options("eigen") == {"garg_crop": True, "limit_gt_range": True}


def test_pred_is_depth_and_region_masks():
    gt = np.array([[2.0, 4.0], [8.0, 0.0]])
    pred_depth = np.array([[2.0, 2.0], [8.0, 1.0]])
    common = dict(garg_crop=False, median_scaling=False, pred_is_depth=True)
    whole = metrics.evaluate_predictions([gt], [pred_depth], **common)
    assert whole["abs_rel"] == pytest.approx(0.5 / 3)
    region = np.array([[False, True], [False, True]])  # (1, 1) has no gt: only (0, 1) counts
    masked = metrics.evaluate_predictions([gt, gt], [pred_depth, pred_depth],
                                          masks=[region, np.zeros((2, 2), bool)], **common)
    assert masked["abs_rel"] == pytest.approx(0.5)
    assert masked["num_images"] == 1  # the image with an empty region is left out
    # With median scaling the ratio comes from all valid pixels: median(2, 4, 8) / median(2, 2, 8).
    scaled = metrics.evaluate_predictions(
        [gt], [pred_depth], masks=[region], garg_crop=False, pred_is_depth=True
    )
    assert scaled["scale_ratio_median"] == pytest.approx(2.0)
    assert scaled["abs_rel"] == pytest.approx(0.0)  # 2 * 2 = 4 at (0, 1)


def test_evaluate_errors():
    gt = np.ones((4, 4))
    with pytest.raises(ValueError, match="2 predictions"):
        metrics.evaluate_predictions([gt], [gt, gt], garg_crop=False)
    with pytest.raises(ValueError, match="ground truth 0 has no valid pixels"):
        metrics.evaluate_predictions([np.zeros((4, 4))], [gt], garg_crop=False)
    with pytest.raises(ValueError, match="non-positive"):
        metrics.evaluate_predictions([gt], [np.zeros((2, 2))], garg_crop=False)
    with pytest.raises(ValueError, match="region mask"):
        metrics.evaluate_predictions([gt], [gt], garg_crop=False, masks=[np.zeros((4, 4), bool)])
    with pytest.raises(ValueError, match="unknown split kind"):
        metrics.protocol_options("nyu")


def test_format_metrics_table():
    values = dict(zip(metrics.METRIC_NAMES, [0.115, 0.903, 4.863, 0.193, 0.877, 0.959, 0.981]))
    values.update(scale_ratio_median=1.0234, scale_ratio_std=0.0812, num_images=697)
    table = metrics.format_metrics_table(values)
    assert " Scaling ratios | med: 1.023 | std: 0.081" in table
    header = "   abs_rel |   sq_rel |     rmse | rmse_log |       a1 |       a2 |       a3 | "
    row = "&   0.115  &   0.903  &   4.863  &   0.193  &   0.877  &   0.959  &   0.981  \\\\"
    assert header in table and row in table
    assert "697 images" in table
