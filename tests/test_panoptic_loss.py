"""Panoptic labels and the Mask2Former set loss.

jdepth/data/panoptic_labels.py and jdepth/losses/panoptic.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth.data import panoptic_labels as pl
from jdepth.losses import panoptic as pan
from jdepth.training import panoptic_config
from panoptic_helpers import fast_compiles  # noqa: F401 (autouse fixture)

H, W = 32, 24


def _cfg(**overrides):
    cfg = panoptic_config.panoptic_section()
    cfg.max_segments = 6
    cfg.update(overrides)
    return cfg


def _band_labels():
    """Two images of horizontal bands: sky, car 1, void, car 2, road (no segment corners).

    Full-width bands keep a "perfect" low-resolution prediction exact under bilinear sampling
    (a segment corner would mix 4 pixels of different labels).
    """
    rows = np.empty(H, np.int32)
    rows[:8], rows[8:14], rows[14:16], rows[16:22], rows[22:] = 10, 13001, 255, 13002, 0
    first = np.broadcast_to(rows[:, None], (H, W))
    second = np.full((H, W), 2, np.int32)  # one building segment
    second[H // 2:] = 13  # a car without instance id: crowd -> void
    return np.stack([first, second])


def test_class_of_and_void_rules():
    ids = np.array([0, 10, 13001, 18999, 13, 19, 255, -1, 19000, 11000])
    np.testing.assert_array_equal(pl.class_of(ids), [0, 10, 13, 18, -1, -1, -1, -1, -1, 11])
    np.testing.assert_array_equal(pl.class_of(jnp.asarray(ids)), pl.class_of(ids))
    np.testing.assert_array_equal(pl.canonical_ids(ids)[4:8], [-1, -1, -1, -1])


def test_segment_targets_lists_sorted_real_segments_and_flags_truncation():
    labels = _band_labels()
    targets = jax.jit(pl.segment_targets, static_argnums=1)
    seg, cls, valid, truncated = targets(labels[0], 6)
    np.testing.assert_array_equal(seg, [0, 10, 13001, 13002, -1, -1])
    np.testing.assert_array_equal(cls, [0, 10, 13, 13, -1, -1])
    np.testing.assert_array_equal(valid, [True] * 4 + [False] * 2)
    assert not bool(truncated)
    seg, _, valid, truncated = targets(labels[0], 3)
    np.testing.assert_array_equal(seg, [0, 10, 13001])
    assert bool(truncated) and bool(valid.all())


def test_downsample_labels_picks_the_pixel_nearest_each_centre():
    ids = np.arange(64, dtype=np.int32).reshape(1, 8, 8)
    np.testing.assert_array_equal(pl.downsample_labels(ids, 4), ids[:, 2::4, 2::4])
    with pytest.raises(ValueError, match="does not divide"):
        pl.downsample_labels(np.zeros((1, 6, 8), np.int32), 4)


def test_sigmoid_ce_dice_and_class_ce_hand_values():
    logits = jnp.array([[0.0, 2.0]])
    targets = jnp.array([[1.0, 0.0]])
    # BCE: (log 2 + log(1 + e^2)) / 2
    expected_bce = (math.log(2.0) + math.log1p(math.exp(2.0))) / 2
    assert float(pan.sigmoid_ce(logits, targets)[0]) == pytest.approx(expected_bce, rel=1e-6)
    # Dice with p = (0.5, 0.5), q = (1, 0): 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3.
    assert float(pan.dice_loss(jnp.zeros((1, 2)), targets)[0]) == pytest.approx(1 / 3, rel=1e-6)
    confident = jnp.array([[30.0, -30.0]])
    assert float(pan.dice_loss(confident, targets)[0]) == pytest.approx(0, abs=1e-6)
    # CE, 2 classes + no-object: query 0 uniform with target 0 -> log 3; query 1 with logits
    # (0, 0, log 2) and target no-object -> log 2, weight 0.1. Weighted mean (torch semantics).
    class_logits = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)]])
    got = pan.class_cross_entropy(class_logits, jnp.array([0, 2]), no_object_weight=0.1)
    expected = (math.log(3.0) + 0.1 * math.log(2.0)) / 1.1
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_pairwise_costs_equal_the_per_pair_losses():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(50, 4)) * 3, jnp.float32)  # [P, Q]
    targets = jnp.asarray(rng.random((50, 3)) < 0.4)  # [P, M]
    # Every (q, m) pair through the per-pair losses, by broadcasting [Q, 1, P] against [1, M, P].
    pairs = (logits.T[:, None, :], targets.T[None, :, :])
    np.testing.assert_allclose(pan.pairwise_sigmoid_ce(logits, targets),
                               pan.sigmoid_ce(*pairs), rtol=1e-5)
    np.testing.assert_allclose(pan.pairwise_dice(logits, targets), pan.dice_loss(*pairs),
                               rtol=1e-5)


def test_sample_logits_is_half_pixel_bilinear_with_border_padding():
    maps = jnp.arange(8.0).reshape(1, 2, 4, 1)  # rows [0..3], [4..7]
    points = jnp.array([[[0.125, 0.25], [0.25, 0.25], [0.0, 0.0], [1.0, 1.0]]])
    got = np.asarray(pan.sample_logits(maps, points))[0, :, 0]
    # Pixel centres at ((j + 0.5) / 4, (i + 0.5) / 2); corners clamp to the edge pixels.
    np.testing.assert_allclose(got, [0.0, 0.5, 0.0, 7.0], atol=1e-6)
    labels = jnp.arange(8).reshape(1, 2, 4)
    np.testing.assert_array_equal(pan.sample_labels(labels, points)[0], [0, 1, 0, 7])


def _perfect_stages(labels, num_queries, permutation, scale=1e4):
    """Head outputs that predict `labels` exactly, segment k on proposal permutation[k]."""
    batch = labels.shape[0]
    masks = np.full((batch, H, W, num_queries), -scale, np.float32)
    classes = np.zeros((batch, num_queries, pl.NUM_CLASSES + 1), np.float32)
    classes[..., pl.NUM_CLASSES] = scale
    for b in range(batch):
        seg, cls, valid, _ = pl.segment_targets(jnp.asarray(labels[b]), 6)
        for k in np.nonzero(np.asarray(valid))[0]:
            q = permutation[k]
            masks[b, ..., q] = np.where(pl.canonical_ids(labels[b]) == int(seg[k]), scale, -scale)
            classes[b, q] = 0.0
            classes[b, q, int(cls[k])] = scale
    stage = {"mask_logits": jnp.asarray(masks), "class_logits": jnp.asarray(classes)}
    return [{"mask_logits": stage["mask_logits"]}, stage, stage]


def _loss_fn(stages, labels, key):
    return pan.panoptic_loss(stages, labels, key, _cfg())


# One compilation for every loss test below: they share the stage structure and shapes. (Finite
# gradients are checked through the whole train step in tests/test_panoptic_train.py.)
_loss = jax.jit(_loss_fn)


def test_perfect_prediction_gives_near_zero_loss_terms():
    labels = _band_labels()
    stages = _perfect_stages(labels, 10, permutation=[7, 2, 9, 0, 4, 5])
    total, aux = _loss(stages, jnp.asarray(labels), jax.random.PRNGKey(0))
    for s in range(3):
        assert float(aux[f"panoptic/s{s}_mask"]) < 1e-3
        assert float(aux[f"panoptic/s{s}_dice"]) < 1e-3
    assert float(aux["panoptic/s1_ce"]) < 1e-3 and "panoptic/s0_ce" not in aux
    assert float(total) < 1e-2
    assert float(aux["panoptic/segments"]) == pytest.approx(2.5)  # 4 and 1 segments


def test_permuting_proposals_does_not_change_the_matched_loss():
    rng = np.random.default_rng(0)
    labels = jnp.asarray(_band_labels())
    q = 10
    stages = [{"mask_logits": rng.normal(size=(2, H, W, q)) * 4}] + [
        {"mask_logits": rng.normal(size=(2, H, W, q)) * 4,
         "class_logits": rng.normal(size=(2, q, pl.NUM_CLASSES + 1)) * 2} for _ in range(2)]
    stages = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), stages)
    perm = rng.permutation(q)
    permuted = [{"mask_logits": s["mask_logits"][..., perm],
                 **({"class_logits": s["class_logits"][:, perm]} if "class_logits" in s else {})}
                for s in stages]
    key = jax.random.PRNGKey(3)
    total, aux = _loss(stages, labels, key)
    total_p, aux_p = _loss(permuted, labels, key)
    assert float(total) > 1.0
    assert float(total_p) == pytest.approx(float(total), rel=1e-5)
    for name in aux:
        assert float(aux_p[name]) == pytest.approx(float(aux[name]), rel=1e-5, abs=1e-6), name


def test_image_without_segments_only_trains_no_object():
    labels = jnp.full((2, H, W), 255, jnp.int32)
    stages = _perfect_stages(np.asarray(labels), 10, permutation=range(6), scale=3.0)
    total, aux = _loss(stages, labels, jax.random.PRNGKey(0))
    assert float(aux["panoptic/s1_mask"]) == 0.0 and float(aux["panoptic/s1_dice"]) == 0.0
    # Every proposal predicts no-object with logit 3 against 19 zeros: CE = log(19 + e^3) - 3.
    expected_ce = math.log(19 + math.exp(3.0)) - 3.0
    assert float(aux["panoptic/s1_ce"]) == pytest.approx(expected_ce, rel=1e-5)
    assert float(total) == pytest.approx(2 * 2.0 * expected_ce, rel=1e-5)
