"""Evaluation of a depth predictor on a KITTI split (real or synthetic): predictions, GT, metrics.

The same function serves the periodic evaluation of the train loop, `python -m jdepth.evaluate`
and the synthetic-suite tools, so every number in the logs, README and RESULTS comes from one path.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jdepth.data import kitti
from jdepth.eval import metrics as depth_metrics


def load_split_images(root: str, refs: Sequence[kitti.FrameRef], ext: str | None = None):
    """uint8 frames 0 of a split, as a list of [h, w, 3] (sizes may differ between drives)."""
    return [kitti.load_image(kitti.image_path(root, ref, ext=ext)) for ref in refs]


MATCHING_MODES = ("lookup", "static", "zero_cost_volume")


def lookup_inputs(predictor, root: str, refs, images, ext=None, matching_mode="lookup") -> dict:
    """The extra inputs of a multi-frame predictor: lookup frames, intrinsics, validity.

    `matching_mode` is ManyDepth's evaluation mode: 'lookup' (frame t-1 as in the reference),
    'static' (the lookup frame is frame 0 itself, --static_camera) or 'zero_cost_volume' (no
    matching, --zero_cost_volume). A missing t-1 (first frame of a drive) counts as invalid, which
    the recipe treats like the zero cost volume, as the reference treats a missing frame.
    """
    if matching_mode not in MATCHING_MODES:
        raise ValueError(f"matching_mode must be one of {MATCHING_MODES}, got {matching_mode!r}")
    offset = predictor.lookup_offsets[0]
    lookups, ks, valid = [], [], []
    for ref, image in zip(refs, images):
        frame, ok = image, matching_mode != "zero_cost_volume"
        if matching_mode == "lookup":
            try:
                index = kitti.neighbour_index(root, ref, offset, ext=ext)
                frame = kitti.load_image(kitti.image_path(root, ref, frame_index=index, ext=ext))
            except FileNotFoundError:
                ok = False
        lookups.append(frame)
        valid.append(ok)
        calib = kitti.load_camera_calibration(kitti.calib_dir(root, ref),
                                              kitti.side_to_camera(ref.side))
        ks.append(kitti.scale_intrinsics(kitti.normalised_intrinsics(calib), predictor.width,
                                         predictor.height))
    return {"lookup": lookups, "K": np.stack(ks), "lookup_valid": np.asarray(valid)}


def predict_split(
    predictor, root: str, refs, batch_size: int = 8, ext: str | None = None,
    matching_mode: str = "lookup",
):
    """Scaled disparity maps [H, W] (network resolution) for every frame of a split, in order."""
    preds = []
    for start in range(0, len(refs), 64):  # bounded memory on long splits
        chunk = refs[start : start + 64]
        images = load_split_images(root, chunk, ext)
        extra = {}
        if getattr(predictor, "lookup_offsets", ()):
            extra = lookup_inputs(predictor, root, chunk, images, ext, matching_mode)
        preds.extend(predictor.predict_disparity(images, batch_size, **extra))
    return preds


def gt_depths_for_split(root: str, split_file: str, cache_path: str | None = None, kind="eigen"):
    """Velodyne ground truth of a split (Eigen protocol), cached as an npz when a path is given.

    A cache exported from another split (or without a split fingerprint: an older jdepth) is
    exported again, so a changed split file can never be scored against stale maps.

    Returns:
      kitti.GroundTruth (a list-like of float32 [H, W] maps, with the split's fingerprint).
    """
    refs = kitti.read_split_file(split_file)
    if cache_path and os.path.exists(cache_path):
        cached = kitti.load_gt_file(cache_path)
        if cached.split_fingerprint == kitti.split_fingerprint(refs):
            return cached
        print(f"{cache_path}: cached ground truth is not from {split_file} (or predates split "
              "fingerprints); exporting it again", flush=True)
    depths = kitti.export_gt_depths(root, refs, kind)
    if cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        kitti.save_gt_depths(cache_path, depths, refs)
    return kitti.GroundTruth(depths, cache_path, kitti.split_fingerprint(refs),
                             np.array([d.shape for d in depths], np.int64).reshape(-1, 2))


def split_image_sizes(root: str, refs, ext: str | None = None) -> list[tuple[int, int]]:
    """(height, width) of each frame's image, from the file headers (nothing decoded)."""
    return [kitti.read_image_size(kitti.image_path(root, ref, ext=ext)) for ref in refs]


def check_split_gt(root: str, split_file: str, gt_depths, ext: str | None = None) -> None:
    """Refuses ground truth that does not belong to the split (count, fingerprint, map sizes).

    Args:
      gt_depths: a kitti.GroundTruth, or a plain list of maps (checked by count and size only).

    Raises:
      kitti.GroundTruthMismatchError naming the GT file and every problem found.
    """
    gt = gt_depths if isinstance(gt_depths, kitti.GroundTruth) else kitti.GroundTruth(list(gt_depths))
    refs = kitti.read_split_file(split_file)
    sizes = split_image_sizes(root, refs, ext) if len(gt) == len(refs) else None
    kitti.require_ground_truth_matches(gt, refs, split_file, sizes)


def evaluate_split(
    predictor,
    root: str,
    split_file: str,
    gt_depths,
    *,
    median_scaling: bool = True,
    split_kind: str = "eigen",
    max_images: int | None = None,
    masks=None,
    matching_mode: str = "lookup",
) -> dict:
    """Predicts every frame of the split and returns the KITTI metrics dict.

    `matching_mode` applies to multi-frame recipes only (see `lookup_inputs`). `gt_depths` (a
    kitti.GroundTruth or a list of maps) is checked against the split first (`check_split_gt`).
    """
    check_split_gt(root, split_file, gt_depths)
    refs = kitti.read_split_file(split_file)
    gt_depths = list(gt_depths.depths if isinstance(gt_depths, kitti.GroundTruth) else gt_depths)
    if max_images:
        refs, gt_depths = refs[:max_images], gt_depths[:max_images]
        masks = masks[:max_images] if masks is not None else None
    preds = predict_split(predictor, root, refs, matching_mode=matching_mode)
    return depth_metrics.evaluate_predictions(
        gt_depths,
        preds,
        median_scaling=median_scaling,
        masks=masks,
        **depth_metrics.protocol_options(split_kind),
    )


def mean_depth_map(root: str, refs, height: int, width: int, max_depth: float = 80.0):
    """The "average training depth map" baseline: per-pixel mean of dense training depth.

    Uses the dense depth in `proj_depth/groundtruth` (the synthetic set writes it for every frame;
    on KITTI it is the improved ground truth) resized to the network resolution; pixels with no
    depth in a frame (sky) count as `max_depth`, so the map stays dense.
    """
    total = np.zeros((height, width), np.float64)
    for ref in refs:
        depth = kitti.load_benchmark_depth(kitti.benchmark_gt_path(root, ref))
        depth = np.where(depth > 0, np.minimum(depth, max_depth), max_depth)
        total += depth_metrics.resize_bilinear(depth, height, width)
    return (total / len(refs)).astype(np.float32)


def mean_depth_map_from_sparse(depths, height: int, width: int, max_depth: float = 80.0):
    """The "average training depth map" from sparse (velodyne) depth: per-cell mean of all points.

    Each native-size map [h, w] (0 = no point) is pooled into the `height x width` grid: a cell's
    value is the mean of every point that falls into it over all frames. Cells that no scan ever
    reaches (mostly above the LiDAR's field of view) take the nearest reached cell of their column
    (then of their row), so the map stays dense; the Eigen protocol scores only pixels with ground
    truth, which a scan reaches.

    Args:
      depths: iterable of float [h, w] maps (sizes may differ between drives).
      height, width: the network resolution.

    Returns:
      float32 [height, width].
    """
    total = np.zeros((height, width), np.float64)
    count = np.zeros((height, width), np.int64)
    for depth in depths:
        h, w = depth.shape
        rows, cols = np.nonzero(depth > 0)
        cells_r = np.minimum(rows * height // h, height - 1)
        cells_c = np.minimum(cols * width // w, width - 1)
        np.add.at(total, (cells_r, cells_c), np.minimum(depth[rows, cols], max_depth))
        np.add.at(count, (cells_r, cells_c), 1)
    if not count.any():
        raise ValueError("mean_depth_map_from_sparse: no depth point in any frame")
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return _fill_nearest(_fill_nearest(mean, axis=0), axis=1).astype(np.float32)


def _fill_nearest(values: np.ndarray, axis: int) -> np.ndarray:
    """Replaces NaNs by the nearest finite value along `axis` (lines without one stay NaN)."""
    moved = np.moveaxis(values, axis, 0).copy()
    index = np.arange(moved.shape[0])
    for j in range(moved.shape[1]):
        line = moved[:, j]
        ok = np.isfinite(line)
        if ok.any() and not ok.all():
            known = index[ok]
            nearest = known[np.clip(np.searchsorted(known, index), 0, len(known) - 1)]
            before = known[np.clip(np.searchsorted(known, index) - 1, 0, len(known) - 1)]
            pick = np.where(np.abs(before - index) < np.abs(nearest - index), before, nearest)
            moved[:, j] = line[pick]
    return np.moveaxis(moved, 0, axis)


def evaluate_constant_prediction(depth_map: np.ndarray, gt_depths, median_scaling=True, **kw):
    """Metrics of predicting the same depth map for every image (the baseline above)."""
    disp = ConstantDepthPredictor(depth_map).disparity
    return depth_metrics.evaluate_predictions(
        gt_depths, [disp] * len(gt_depths), median_scaling=median_scaling, **kw
    )


class ConstantDepthPredictor:
    """The baseline as a predictor: the same depth map [H, W] for every image.

    Lets region evaluations (jdepth/eval/regions.py) score the baseline through the path they
    score trained models with.
    """

    lookup_offsets = ()
    absolute = False

    def __init__(self, depth_map: np.ndarray):
        self.disparity = 1.0 / np.maximum(np.asarray(depth_map, np.float32), 1e-3)

    def predict_disparity(self, images, batch_size: int = 8, **unused):
        return np.stack([self.disparity] * len(images))
