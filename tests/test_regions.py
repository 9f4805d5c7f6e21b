"""Region metrics (jdepth/eval/regions.py): moving objects and instance-edge bands."""

import json
import os

import numpy as np
import pytest

from jdepth.data import kitti
from jdepth.eval import regions


class _OraclePredictor:
    """Predicts the exact dense depth of each frame, optionally halved on moving-car pixels."""

    lookup_offsets = ()

    def __init__(self, root, refs, break_moving=False):
        self.maps = {}
        for ref in refs:
            image = kitti.load_image(kitti.image_path(root, ref))
            depth = kitti.load_benchmark_depth(kitti.benchmark_gt_path(root, ref))
            depth = np.where(depth > 0, depth, 80.0)
            if break_moving:
                moving = regions.moving_object_masks(root, [ref])[0]
                depth = np.where(moving, depth * 0.5, depth)
            self.maps[image.tobytes()] = 1.0 / depth

    def predict_disparity(self, images, batch_size=8, **extra):
        return [self.maps[np.asarray(im).tobytes()] for im in images]


def _split_with_moving_cars(root):
    split = os.path.join(root, "splits", "train_files.txt")
    refs = kitti.read_split_file(split)
    masks = regions.moving_object_masks(root, refs)
    assert masks is not None and sum(m.sum() for m in masks) > 0, "fixture shows no moving car"
    return split, refs


def test_moving_masks_follow_the_meta_file(synthetic_root):
    split, refs = _split_with_moving_cars(synthetic_root)
    ref = refs[0]
    with open(os.path.join(synthetic_root, ref.folder, regions.META_FILE)) as f:
        cars = json.load(f)["cars"]
    moving_ids = {c["panoptic_id"] for c in cars if c["moving"]}
    parked_ids = {c["panoptic_id"] for c in cars if not c["moving"]}
    labels = kitti.load_panoptic(kitti.panoptic_path(synthetic_root, ref))
    mask = regions.moving_object_masks(synthetic_root, [ref])[0]
    np.testing.assert_array_equal(mask, np.isin(labels, list(moving_ids)))
    assert not np.any(mask & np.isin(labels, list(parked_ids)))


def test_moving_masks_absent_without_meta(tmp_path):
    ref = kitti.FrameRef("2011_09_26/2011_09_26_drive_0001_sync", 0, "l")
    assert regions.moving_object_masks(str(tmp_path), [ref]) is None


def test_region_metrics_isolate_an_error_on_moving_cars(synthetic_root):
    split, refs = _split_with_moving_cars(synthetic_root)
    exact = regions.evaluate_regions(
        _OraclePredictor(synthetic_root, refs), synthetic_root, split, gt_kind="dense",
        median_scaling=False)
    for name in ("all", "moving", "edge_band", "static"):
        assert exact[name]["num_images"] > 0
    # Exact depth is off only where the protocol clamps predictions to 80 m (far facades).
    assert exact["moving"]["abs_rel"] < 0.01
    assert exact["all"]["abs_rel"] < 0.03
    broken = regions.evaluate_regions(
        _OraclePredictor(synthetic_root, refs, break_moving=True), synthetic_root, split,
        gt_kind="dense", median_scaling=False)
    # Half the depth on every moving-car pixel: AbsRel there is exactly 0.5 (up to rounding),
    # while the whole-image number is diluted by the static pixels.
    assert broken["moving"]["abs_rel"] == pytest.approx(0.5, abs=0.01)
    assert broken["all"]["abs_rel"] < exact["all"]["abs_rel"] + 0.25
    assert broken["all"]["abs_rel"] > exact["all"]["abs_rel"]
    # No moving car is a stuff pixel: the static background is untouched, exactly.
    assert broken["static"]["abs_rel"] == exact["static"]["abs_rel"]


def test_static_masks_are_the_stuff_pixels(synthetic_root):
    _, refs = _split_with_moving_cars(synthetic_root)
    labels = kitti.load_panoptic(kitti.panoptic_path(synthetic_root, refs[0]))
    mask = regions.static_masks(synthetic_root, refs[:1])[0]
    np.testing.assert_array_equal(mask, labels < 1000)  # things are class * 1000 + instance
    assert mask.any() and not mask.all()
