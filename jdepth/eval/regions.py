"""Depth accuracy on image regions: moving objects and object boundaries.

The papers' claims are regional: ISSL and piece-wise pose should help most on independently moving
objects, the panoptic branch near object edges. Whole-image AbsRel hides both, so the comparisons
in the closing notes and RESULTS.md report four numbers per run, all from one path:

  all        every valid ground-truth pixel (the standard table);
  moving     pixels of thing instances that move independently (the synthetic set lists them in
             each drive's ``synthetic_meta.json``; KITTI has no such list, so the region is absent);
  edge_band  pixels within ``radius`` of a thing-instance edge (``panoptic.instance_edge_band``);
  static     pixels of stuff classes (road, buildings, vegetation, ...: no thing instance), the
             background that piece-wise pose must not make worse.

The median-scaling ratio of a region metric is still the whole image's (``metrics.evaluate_
predictions``), so a region number answers "how wrong is the depth here, given the scale the
image as a whole gets".
"""

from __future__ import annotations

import functools
import json
import os
from typing import Sequence

import numpy as np

from jdepth.data import kitti
from jdepth.data import panoptic_labels as pl
from jdepth.eval import depth_eval
from jdepth.eval import metrics as depth_metrics
from jdepth.eval import panoptic as panoptic_eval

META_FILE = "synthetic_meta.json"
GT_KINDS = ("velodyne", "dense")


@functools.lru_cache(maxsize=64)
def moving_panoptic_ids(drive_dir: str) -> frozenset[int] | None:
    """Panoptic ids of the independently moving cars of a drive, or None without a meta file."""
    path = os.path.join(drive_dir, META_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            cars = json.load(f)["cars"]
        return frozenset(int(c["panoptic_id"]) for c in cars if c["moving"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable synthetic meta file ({err})") from err


def moving_object_masks(root: str, refs: Sequence[kitti.FrameRef]) -> list[np.ndarray] | None:
    """Per frame, bool [H, W] pixels of moving objects; None if any drive lacks the meta file."""
    masks = []
    for ref in refs:
        ids = moving_panoptic_ids(os.path.join(root, ref.folder))
        if ids is None:
            return None
        labels = kitti.load_panoptic(kitti.panoptic_path(root, ref))
        masks.append(np.isin(labels, np.fromiter(ids, np.int64, len(ids))))
    return masks


def edge_band_masks(root: str, refs: Sequence[kitti.FrameRef], radius: int) -> list[np.ndarray]:
    """Per frame, bool [H, W] pixels within `radius` of a thing-instance edge."""
    return [panoptic_eval.instance_edge_band(kitti.load_panoptic(kitti.panoptic_path(root, r)),
                                             radius) for r in refs]


def static_masks(root: str, refs: Sequence[kitti.FrameRef]) -> list[np.ndarray]:
    """Per frame, bool [H, W] pixels of stuff classes (no thing instance, parked or moving)."""
    masks = []
    for ref in refs:
        ids = pl.canonical_ids(kitti.load_panoptic(kitti.panoptic_path(root, ref)).astype(np.int64))
        masks.append(~pl.is_thing_class(pl.class_of(ids)))
    return masks


def ground_truth(root: str, split_file: str, kind: str, cache_dir: str | None = None):
    """(gt maps, split_kind) of a split: Eigen velodyne GT, or the dense benchmark maps.

    On the synthetic set the dense maps are exact rendered depth: the only GT with enough points on
    small moving cars at demo resolution. Both are scored with the Eigen protocol's options (Garg
    crop, GT within (1e-3, 80) m), so region numbers read like the main table's.
    """
    if kind not in GT_KINDS:
        raise ValueError(f"gt kind must be one of {GT_KINDS}, got {kind!r}")
    if kind == "dense":
        refs = kitti.read_split_file(split_file)
        return [kitti.load_benchmark_depth(kitti.benchmark_gt_path(root, r)) for r in refs], "eigen"
    cache = None
    if cache_dir:
        cache = os.path.join(cache_dir, f"gt_{os.path.basename(split_file)}.npz")
    return depth_eval.gt_depths_for_split(root, split_file, cache), "eigen"


def evaluate_regions(
    predictor, root: str, split_file: str, *, gt_kind: str = "dense", band_radius: int = 3,
    median_scaling: bool = True, max_images: int | None = None, cache_dir: str | None = None,
    matching_mode: str = "lookup",
) -> dict[str, dict]:
    """Metrics dicts {"all", "moving" (if known), "edge_band", "static"} of a predictor on a split.

    One prediction pass serves every region. A region no image has pixels of gets
    ``{"num_images": 0}``.
    """
    refs = kitti.read_split_file(split_file)
    gt, split_kind = ground_truth(root, split_file, gt_kind, cache_dir)
    if len(gt) != len(refs):
        raise ValueError(f"{split_file}: {len(refs)} frames but {len(gt)} ground-truth maps")
    refs, gt = refs[: max_images or None], gt[: max_images or None]
    preds = depth_eval.predict_split(predictor, root, refs, matching_mode=matching_mode)
    options = dict(median_scaling=median_scaling, **depth_metrics.protocol_options(split_kind))

    def score(masks=None):
        if masks is not None:  # a label map of another size than its GT (never on synthetic)
            masks = [m if m.shape == g.shape else np.zeros_like(g, bool)
                     for m, g in zip(masks, gt)]
            if not any(np.any(m) for m in masks):
                return {"num_images": 0}
        try:
            return depth_metrics.evaluate_predictions(gt, preds, masks=masks, **options)
        except ValueError as err:
            if "inside its region mask" in str(err):
                return {"num_images": 0}
            raise

    out = {"all": score()}
    moving = moving_object_masks(root, refs)
    if moving is not None:
        out["moving"] = score(moving)
    out["edge_band"] = score(edge_band_masks(root, refs, band_radius))
    out["static"] = score(static_masks(root, refs))
    return out
