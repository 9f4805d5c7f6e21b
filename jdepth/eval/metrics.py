"""KITTI depth evaluation: the seven standard metrics under Monodepth2's protocol (numpy only).

Protocol (`evaluate_predictions`, defaults = Eigen split, monocular model):
  1. the predicted disparity (network resolution, already scaled by `disp_to_depth`) is resized
     bilinearly to the ground-truth size, as `cv2.resize` does, and inverted to depth;
  2. pixels with min_depth < gt < max_depth inside the Garg crop are evaluated;
  3. each image's prediction is multiplied by median(gt) / median(pred) (median scaling), unless
     disabled (stereo or metric-scale models; stereo models use pred_depth_scale_factor=5.4);
  4. predictions are clamped to [min_depth, max_depth], the metrics are computed per image and
     averaged over images.
The `eigen_benchmark` split uses no crop and keeps every gt > 0 pixel: see `protocol_options`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
STEREO_SCALE_FACTOR = 5.4  # KITTI baseline 0.54 m over the 0.1 baseline used in stereo training
# Garg et al. (ECCV'16) crop as fractions of the image size: rows [top, bottom), cols [left, right).
GARG_CROP_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)


def compute_depth_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The seven KITTI depth metrics of one set of pixels.

    Args:
      gt: [N] ground-truth depths (> 0).
      pred: [N] predicted depths (> 0), same order.

    Returns:
      abs_rel = mean(|g - p| / g), sq_rel = mean((g - p)^2 / g), rmse = sqrt(mean((g - p)^2)),
      rmse_log = sqrt(mean((ln g - ln p)^2)), ak = mean(max(g/p, p/g) < 1.25^k) for k = 1, 2, 3.
    """
    gt = np.asarray(gt, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"gt has {gt.size} values but pred has {pred.size}")
    if gt.size == 0:
        raise ValueError("compute_depth_errors got no pixels")
    ratio = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff**2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "a1": float(np.mean(ratio < 1.25)),
        "a2": float(np.mean(ratio < 1.25**2)),
        "a3": float(np.mean(ratio < 1.25**3)),
    }


def garg_crop_mask(height: int, width: int) -> np.ndarray:
    """bool [height, width]: True inside the Garg crop.

    The bounds are the fractions times the size cast to int32 (truncation), as the reference does:
    on 375 x 1242 that is rows 153..370 and columns 44..1196 inclusive.
    """
    top, bottom, left, right = (
        np.array(GARG_CROP_FRACTIONS) * np.array([height, height, width, width])
    ).astype(np.int32)
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Half-pixel centres: output pixel j samples input coordinate (j + 0.5) * in/out - 0.5, clamped
    # to the edge pixels (cv2 sets the weight to 0 outside instead of extrapolating).
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0.0, in_size - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, src - lo


def resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize matching `cv2.resize(img, (out_w, out_h))` (INTER_LINEAR) for float input.

    Half-pixel centres (align_corners=False) and edge clamping; no antialiasing when shrinking,
    like cv2's INTER_LINEAR.

    Args:
      img: [h, w] or [h, w, C].
      out_h, out_w: output size.

    Returns:
      [out_h, out_w] (or [out_h, out_w, C]), float32 for float32/integer input, else float64.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"resize_bilinear expects [h, w] or [h, w, C], got shape {img.shape}")
    dtype = np.result_type(img.dtype, np.float32)
    data = img.astype(np.float64)
    extra = (1,) * (img.ndim - 2)
    r0, r1, wr = _linear_taps(img.shape[0], out_h)
    wr = wr.reshape((-1, 1) + extra)
    rows = data[r0] * (1.0 - wr) + data[r1] * wr
    c0, c1, wc = _linear_taps(img.shape[1], out_w)
    wc = wc.reshape((1, -1) + extra)
    return (rows[:, c0] * (1.0 - wc) + rows[:, c1] * wc).astype(dtype)


def protocol_options(split_kind: str) -> dict:
    """`evaluate_predictions` keyword arguments reproducing the reference for a split.

    'eigen': Garg crop and gt restricted to (min_depth, max_depth). 'eigen_benchmark' (and any
    other split in the reference): no crop and every gt > 0 pixel, predictions still clamped.
    """
    if split_kind == "eigen":
        return {"garg_crop": True, "limit_gt_range": True}
    if split_kind == "eigen_benchmark":
        return {"garg_crop": False, "limit_gt_range": False}
    raise ValueError(f"unknown split kind {split_kind!r}; expected 'eigen' or 'eigen_benchmark'")


def _as_map(array: np.ndarray, what: str, index: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{what} {index} has shape {array.shape}; expected [H, W] or [H, W, 1]")
    return array


def evaluate_predictions(
    gt_depths: Sequence[np.ndarray],
    pred_disps: Sequence[np.ndarray],
    *,
    median_scaling: bool = True,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    garg_crop: bool = True,
    limit_gt_range: bool = True,
    pred_is_depth: bool = False,
    pred_depth_scale_factor: float = 1.0,
    masks: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Evaluates predictions against sparse ground truth (see the module docstring).

    Args:
      gt_depths: N maps [H_i, W_i], 0 = no ground truth (sizes may differ per image).
      pred_disps: N maps [h, w] or [h, w, 1] at network resolution: scaled disparity from
        `disp_to_depth`, or depth if `pred_is_depth`.
      median_scaling: per-image scale alignment; off for stereo / metric-scale models.
      min_depth, max_depth: gt validity range and prediction clamp.
      garg_crop: restrict to the Garg crop.
      limit_gt_range: mask gt to (min_depth, max_depth); False keeps every gt > 0 pixel.
      pred_is_depth: predictions are depth, not disparity.
      pred_depth_scale_factor: multiplies predicted depth first (5.4 for stereo-trained models).
      masks: optional N bool maps [H_i, W_i] selecting a region (e.g. dynamic objects, depth edges).
        The median-scaling ratio still uses all valid pixels, so region numbers are comparable with
        whole-image ones; metrics then use valid & region pixels, and images whose region is empty
        are left out of the averages.

    Returns:
      The 7 metrics averaged over images, `scale_ratio_median` = median over images of
      median(gt) / median(pred), `scale_ratio_std` = std(ratios / scale_ratio_median) (both also
      without median scaling, to expose the scale error), and `num_images` averaged over.
    """
    if len(gt_depths) != len(pred_disps):
        raise ValueError(f"{len(gt_depths)} ground-truth maps but {len(pred_disps)} predictions")
    if masks is not None and len(masks) != len(gt_depths):
        raise ValueError(f"{len(masks)} region masks for {len(gt_depths)} images")
    if len(gt_depths) == 0:
        raise ValueError("evaluate_predictions got no images")

    errors, ratios = [], []
    for i, (gt_map, pred_map) in enumerate(zip(gt_depths, pred_disps)):
        gt_map = _as_map(gt_map, "ground truth", i).astype(np.float64)
        pred_map = _as_map(pred_map, "prediction", i).astype(np.float64)
        height, width = gt_map.shape
        pred = resize_bilinear(pred_map, height, width).astype(np.float64)
        if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
            raise ValueError(f"prediction {i} has non-positive or non-finite values")
        pred_depth = pred if pred_is_depth else 1.0 / pred

        if limit_gt_range:
            valid = (gt_map > min_depth) & (gt_map < max_depth)
        else:
            valid = gt_map > 0
        if garg_crop:
            valid &= garg_crop_mask(height, width)
        if not valid.any():
            raise ValueError(f"ground truth {i} has no valid pixels in the evaluated area")

        gt = gt_map[valid]
        pred_depth = pred_depth[valid] * pred_depth_scale_factor
        ratio = np.median(gt) / np.median(pred_depth)
        ratios.append(ratio)
        if median_scaling:
            pred_depth = pred_depth * ratio
        pred_depth = np.clip(pred_depth, min_depth, max_depth)

        if masks is not None:
            region = _as_map(masks[i], "region mask", i).astype(bool)
            if region.shape != gt_map.shape:
                raise ValueError(f"region mask {i} has shape {region.shape}, gt {gt_map.shape}")
            selected = region[valid]
            if not selected.any():
                continue
            gt, pred_depth = gt[selected], pred_depth[selected]
        errors.append([compute_depth_errors(gt, pred_depth)[k] for k in METRIC_NAMES])

    if not errors:
        raise ValueError("no image has valid pixels inside its region mask")
    result = dict(zip(METRIC_NAMES, np.mean(np.array(errors), axis=0).tolist()))
    ratios = np.array(ratios)
    median_ratio = float(np.median(ratios))
    result["scale_ratio_median"] = median_ratio
    result["scale_ratio_std"] = float(np.std(ratios / median_ratio))
    result["num_images"] = len(errors)
    return result


def format_metrics_table(metrics: dict) -> str:
    """Monodepth2-style printout: the scaling ratios, a header row and a LaTeX-ready value row."""
    lines = []
    if "scale_ratio_median" in metrics:
        lines.append(
            " Scaling ratios | med: {:0.3f} | std: {:0.3f}".format(
                metrics["scale_ratio_median"], metrics["scale_ratio_std"]
            )
        )
    lines.append("")
    lines.append("  " + ("{:>8} | " * 7).format(*METRIC_NAMES))
    lines.append(("&{: 8.3f}  " * 7).format(*(metrics[k] for k in METRIC_NAMES)) + "\\\\")
    if "num_images" in metrics:
        lines.append(f"  ({metrics['num_images']} images)")
    return "\n".join(lines)
