"""Piece-wise pose targets in the data pipeline (jdepth/data/instances.py, pipeline hook)."""

import numpy as np
import pytest

from jdepth.data import instances, kitti, pipeline

H, W = 20, 30  # 600 pixels: alpha = 1 % keeps instances of >= 6 pixels
CAR, PERSON = 13000, 11000


def _labels() -> np.ndarray:
    """Frames (0, -1, +1) of a hand-built scene; every IoU below is counted by hand.

    Frame 0: car A cols 0-9 and car B cols 10-13 (rows 0-4), person P rows 10-12 x cols 20-23,
    tiny car C (4 px, under alpha), a crowd car region (class 13 without instance), road elsewhere.
    Frame -1: A one column to the right (IoU 45/55), P in place (IoU 1), B gone.
    Frame +1: S1 cols 5-13 (IoU A 25/70 = 0.357, IoU B 20/45 = 0.444) and S2 cols 0-2 (IoU A
    15/50 = 0.3): greedy gives B -> S1 then A -> S2, where taking each target's best in turn would
    give A -> S1 and leave B out. A car where P was (another class): P unmatched.
    """
    frame0 = np.zeros((H, W), np.int32)
    frame0[0:5, 0:10] = CAR + 1
    frame0[0:5, 10:14] = CAR + 2
    frame0[10:13, 20:24] = PERSON + 1
    frame0[17:19, 0:2] = CAR + 3
    frame0[17:19, 10:13] = 13
    previous = np.zeros((H, W), np.int32)
    previous[0:5, 1:11] = CAR + 7
    previous[10:13, 20:24] = PERSON + 4
    following = np.zeros((H, W), np.int32)
    following[0:5, 5:14] = CAR + 1
    following[0:5, 0:3] = CAR + 2
    following[10:13, 20:24] = CAR + 5
    return np.stack([frame0, previous, following])


def _box(rows, cols) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def test_greedy_match_takes_the_highest_iou_first():
    iou = np.array([[0.357, 0.3], [0.444, 0.0]])
    np.testing.assert_array_equal(instances.greedy_match(iou), [1, 0])
    np.testing.assert_array_equal(instances.greedy_match(np.zeros((2, 3))), [-1, -1])
    # Ties: lower row first, then lower column.
    np.testing.assert_array_equal(instances.greedy_match(np.full((2, 2), 0.5)), [0, 1])
    np.testing.assert_array_equal(instances.greedy_match(np.zeros((0, 2))), np.zeros(0))


def test_mask_iou_by_hand():
    a, b = _box((0, 5), (0, 10)), _box((0, 5), (5, 14))
    np.testing.assert_allclose(instances.mask_iou(a[None], b[None]), [[25 / 70]])
    assert instances.mask_iou(a[None], np.zeros((1, H, W), bool))[0, 0] == 0.0


def test_matching_order_alpha_drop_padding_and_valid_flags():
    out = instances.match_instances(_labels(), max_instances=4, min_area_fraction=0.01)
    assert out["instance_masks"].shape == (3, 4, H, W) and out["instance_masks"].dtype == bool
    assert out["instance_valid"].shape == (3, 4) and out["thing_mask"].shape == (3, H, W)
    assert out["dropped_mask"].shape == (H, W)
    masks, valid = out["instance_masks"], out["instance_valid"]
    a, b, p = _box((0, 5), (0, 10)), _box((0, 5), (10, 14)), _box((10, 13), (20, 24))
    # Target slots by area: A (50 px), B (20), P (12); C (4 px < 6) dropped; slot 3 padding.
    np.testing.assert_array_equal(valid[0], [True, True, True, False])
    for slot, mask in enumerate([a, b, p]):
        np.testing.assert_array_equal(masks[0, slot], mask)
    assert not masks[:, 3].any()
    # Frame -1: A matched to the shifted car (another instance number), B gone, P in place.
    np.testing.assert_array_equal(valid[1], [True, False, True, False])
    np.testing.assert_array_equal(masks[1, 0], _box((0, 5), (1, 11)))
    assert not masks[1, 1].any()
    np.testing.assert_array_equal(masks[1, 2], p)
    # Frame +1: greedy B -> S1 (0.444), then A -> S2 (0.3); P not matched to a car.
    np.testing.assert_array_equal(valid[2], [True, True, False, False])
    np.testing.assert_array_equal(masks[2, 0], _box((0, 5), (0, 3)))
    np.testing.assert_array_equal(masks[2, 1], _box((0, 5), (5, 14)))
    assert not masks[2, 2].any()
    # Thing pixels include the crowd region; dropped = target thing pixels outside the slots.
    crowd, tiny = _box((17, 19), (10, 13)), _box((17, 19), (0, 2))
    np.testing.assert_array_equal(out["thing_mask"][0], a | b | p | crowd | tiny)
    np.testing.assert_array_equal(out["dropped_mask"], crowd | tiny)


def test_instances_beyond_max_are_dropped_and_alpha_is_a_fraction_of_the_image():
    out = instances.match_instances(_labels(), max_instances=2)
    np.testing.assert_array_equal(out["instance_valid"][0], [True, True])
    p = _box((10, 13), (20, 24))
    assert out["dropped_mask"][p].all()  # the person did not fit
    # alpha = 4 %: 24 px; B (20 px) drops too, and frame +1's S1 (45 px) is A's only candidate.
    out = instances.match_instances(_labels(), max_instances=3, min_area_fraction=0.04)
    np.testing.assert_array_equal(out["instance_valid"], [[1, 0, 0], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(out["instance_masks"][2, 0], _box((0, 5), (5, 14)))
    assert out["dropped_mask"][_box((0, 5), (10, 14))].all()


def test_matching_commutes_with_the_flip():
    labels = _labels()
    plain = instances.match_instances(labels, 4)
    mirrored = instances.match_instances(np.ascontiguousarray(labels[..., ::-1]), 4)
    _assert_mirrored(mirrored, plain)


def _assert_mirrored(mirrored: dict, plain: dict) -> None:
    np.testing.assert_array_equal(mirrored["instance_valid"], plain["instance_valid"])
    for key in ("instance_masks", "thing_mask", "dropped_mask"):
        np.testing.assert_array_equal(mirrored[key], plain[key][..., ::-1], err_msg=key)


def test_assemble_sample_matches_after_the_flip():
    cfg = pipeline.PipelineConfig(root="", height=H, width=W, num_scales=1, load_panoptic=True,
                                  max_instances=4)
    images = [np.zeros((H, W, 3), np.uint8)] * 3
    k_norm = np.array([[0.5, 0, 0.5, 0], [0, 1.5, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    labels = list(_labels())
    jitter = np.zeros(5, np.float32)
    plain = pipeline.assemble_sample(0, images, k_norm, False, jitter, cfg, labels)
    flipped = pipeline.assemble_sample(0, images, k_norm, True, jitter, cfg, labels)
    _assert_mirrored(flipped, plain)
    # The masks are the flipped labels' segments.
    np.testing.assert_array_equal(flipped["instance_masks"][0, 0], flipped["panoptic"][0] == CAR + 1)
    without = pipeline.assemble_sample(
        0, images, k_norm, False, jitter, pipeline.PipelineConfig(
            root="", height=H, width=W, num_scales=1, load_panoptic=True), labels)
    assert not set(instances.KEYS) & set(without)
    with pytest.raises(ValueError, match="load_panoptic"):
        pipeline.PipelineConfig(root="", height=H, width=W, max_instances=4)


def test_synthetic_moving_cars_are_matched_to_themselves(synthetic_root):
    """On the rendered drives, IoU matching recovers the true identity of every matched car."""
    cfg = pipeline.PipelineConfig(root=synthetic_root, height=64, width=96, load_panoptic=True,
                                  max_instances=4)
    split = f"{synthetic_root}/splits/train_files.txt"
    refs = kitti.read_split_file(split)
    matched = 0
    for index, ref in enumerate(refs):
        sample = pipeline.load_sample((index, ref), None, cfg, train=False)
        labels, masks, valid = sample["panoptic"], sample["instance_masks"], sample["instance_valid"]
        for slot in np.flatnonzero(valid[0]):
            (target_id,) = np.unique(labels[0][masks[0, slot]])
            for f in (1, 2):
                if valid[f, slot]:
                    (source_id,) = np.unique(labels[f][masks[f, slot]])
                    assert source_id == target_id
                    matched += 1
    assert matched > 0
