"""The set loss against Mask2Former's criterion computed by hand, on 1 and on 2 devices.

jdepth/losses/panoptic.py. The reference below is numpy written from Mask2Former's formulas
(mask2former/modeling/criterion.py, matcher.py; YOSO loss.py), not from the code under test:

  matching  C[q, m] = w_cls * -softmax(cls_q)[c_m] + w_mask * mean_P BCE + w_dice * dice
            on one set of uniform points per image, brute-forced over the assignments
  loss_ce   sum over all queries of all images of w[t] * NLL / sum of w[t] (w = 1, no-object 0.1)
  loss_mask sum over matched pairs of mean_P BCE / num_masks
  loss_dice sum over matched pairs of 1 - (2 sum pq + 1) / (sum p + sum q + 1) / num_masks
  num_masks the number of ground-truth segments in the (global) batch, at least 1

Only the uniform point coordinates come from the library (`draw_points`, an RNG utility); with
importance_sample_ratio 0 the loss uses exactly those, and mask logits constant per query make
every sampled logit known.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from panoptic_helpers import fast_compiles  # noqa: F401 (autouse fixture)

from jdepth.losses import panoptic as pan
from jdepth.training import panoptic as panoptic_plugin
from jdepth.training import panoptic_config

H = W = 8  # label maps
h = w = 4  # mask maps (P = min(num_points, h * w) = 16)
Q = 2  # queries
NO_OBJECT = 2  # 2 classes + no-object
WEIGHTS = {"ce": 2.0, "mask": 5.0, "dice": 5.0}

# Image 0: road (id 0, class 0) on the left half, sidewalk (id 1, class 1) on the right half.
# Image 1: sidewalk everywhere. num_masks = 3; image 0 has 2 segments, image 1 one.
LABELS = np.ones((2, H, W), np.int32)
LABELS[0, :, : W // 2] = 0
SEGMENTS = [[(0, 0), (1, 1)], [(1, 1)]]  # (panoptic id, class) per image, sorted by id

# Constant mask logits [stage, image, query]; class logits of stage 1 [image, query, 3].
MASK = np.array([[[1.5, -0.5], [0.3, 2.0]], [[-1.0, 0.8], [1.2, -0.4]]], np.float32)
CLASS = np.array([[[2.0, -1.0, 0.5], [0.1, 1.5, -0.3]],
                  [[-0.7, 0.4, 1.1], [0.9, 0.2, -1.2]]], np.float32)


def _cfg(**overrides):
    cfg = panoptic_config.panoptic_section()
    cfg.update({"max_segments": 2, "num_points": 16, "importance_sample_ratio": 0.0})
    cfg.update(overrides)
    return cfg


def _stages():
    stages = []
    for s in range(2):
        masks = np.broadcast_to(MASK[s][:, None, None, :], (2, h, w, Q)).copy()
        stage = {"mask_logits": jnp.asarray(masks)}
        if s == 1:
            stage["class_logits"] = jnp.asarray(CLASS)
        stages.append(stage)
    return stages


def _keys():
    # One key per sample, from sample indices 11 and 4 (as the plug-in makes them).
    return panoptic_plugin.point_keys(jax.random.PRNGKey(5), jnp.array([11, 4]))


def _points(cfg):
    budget = pan.PointBudget(cfg, cfg.max_segments, (h, w))
    return jax.tree_util.tree_map(np.asarray, pan.draw_points(_keys(), budget, 2, 2))


def _labels_at(image, pts):  # pts [..., 2] normalised (x, y) -> the label of the pixel
    cols = np.clip(np.floor(pts[..., 0] * W).astype(int), 0, W - 1)
    rows = np.clip(np.floor(pts[..., 1] * H).astype(int), 0, H - 1)
    return LABELS[image][rows, cols]


def _bce(logit, target):  # mean over points of BCE with logits
    return np.mean(np.log1p(np.exp(logit)) - logit * target)


def _dice(logit, target):
    p = np.full(target.shape, 1 / (1 + np.exp(-logit)))
    return 1 - (2 * np.sum(p * target) + 1) / (np.sum(p) + np.sum(target) + 1)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _by_hand(points, normalization="mask2former"):
    """{stage terms, total} from the formulas in the module docstring (float64 numpy)."""
    out, total = {}, 0.0
    num_masks = max(sum(len(s) for s in SEGMENTS), 1)
    for s in range(2):
        mask_terms, dice_terms = [[], []], [[], []]
        targets = np.full((2, Q), NO_OBJECT)
        for b, segments in enumerate(SEGMENTS):
            match_labels = _labels_at(b, points[s]["match"][b])
            cost = np.zeros((Q, len(segments)))
            for q, (m, (seg_id, cls)) in itertools.product(range(Q), enumerate(segments)):
                gt = (match_labels == seg_id).astype(float)
                cost[q, m] = (WEIGHTS["mask"] * _bce(MASK[s, b, q], gt)
                              + WEIGHTS["dice"] * _dice(MASK[s, b, q], gt))
                if s == 1:
                    cost[q, m] -= WEIGHTS["ce"] * _softmax(CLASS[b, q])[cls]
            best = min(itertools.permutations(range(Q), len(segments)),
                       key=lambda qs, c=cost: sum(c[q, m] for m, q in enumerate(qs)))
            for m, q in enumerate(best):
                seg_id, cls = segments[m]
                gt = (_labels_at(b, points[s]["extra"][b, m]) == seg_id).astype(float)
                mask_terms[b].append(_bce(MASK[s, b, q], gt))
                dice_terms[b].append(_dice(MASK[s, b, q], gt))
                targets[b, q] = cls
        if normalization == "mask2former":
            terms = {"mask": sum(map(sum, mask_terms)) / num_masks,
                     "dice": sum(map(sum, dice_terms)) / num_masks}
        else:
            terms = {"mask": np.mean([sum(t) / len(t) for t in mask_terms]),
                     "dice": np.mean([sum(t) / len(t) for t in dice_terms])}
        if s == 1:
            nll = -np.log(np.take_along_axis(_softmax(CLASS.astype(float)), targets[..., None],
                                             -1)[..., 0])
            weight = np.where(targets == NO_OBJECT, 0.1, 1.0)
            terms["ce"] = (np.sum(weight * nll) / np.sum(weight) if normalization == "mask2former"
                           else np.mean(np.sum(weight * nll, 1) / np.sum(weight, 1)))
        for name, value in terms.items():
            out[f"panoptic/s{s}_{name}"] = value
            total += WEIGHTS[name] * value
    return out, total


def _check(got_total, got_aux, expected, expected_total):
    for name, value in expected.items():
        assert float(got_aux[name]) == pytest.approx(value, rel=1e-5), name
    assert float(got_total) == pytest.approx(expected_total, rel=1e-5)


def _loss(stages, labels, keys, axis_name=None, cfg=None):
    return pan.panoptic_loss(stages, labels, keys, cfg or _cfg(), axis_name=axis_name)


@functools.cache
def _one_device():
    """((total, aux), grads) of the jitted 1-device loss: one compilation for two tests."""
    return jax.jit(jax.value_and_grad(_loss, has_aux=True))(
        _stages(), jnp.asarray(LABELS), _keys())


def test_two_query_set_loss_matches_mask2former_by_hand():
    cfg = _cfg()
    expected, expected_total = _by_hand(_points(cfg))
    (total, aux), _ = _one_device()
    _check(total, aux, expected, expected_total)
    # The images differ in their segment counts, so the per-image normalisation is another loss.
    per_image, _ = _by_hand(_points(cfg), "per_image")
    assert abs(per_image["panoptic/s1_mask"] - expected["panoptic/s1_mask"]) > 1e-3


def test_per_image_normalisation_option_by_hand():
    cfg = _cfg(normalization="per_image")
    expected, expected_total = _by_hand(_points(cfg), "per_image")
    total, aux = jax.jit(functools.partial(_loss, cfg=cfg))(
        _stages(), jnp.asarray(LABELS), _keys())
    _check(total, aux, expected, expected_total)


def test_two_devices_give_the_one_device_loss_and_gradients():
    """pmap over 2 devices, one image each: num_masks and the CE weights are summed over the axis,
    the points keyed by sample, so the device average is the 1-device loss of the batch."""
    devices = jax.local_devices()
    assert len(devices) >= 2, "tests/conftest.py must force 2 host devices"
    expected, expected_total = _by_hand(_points(_cfg()))
    stages, labels, keys = _stages(), jnp.asarray(LABELS), _keys()
    shard = functools.partial(jax.tree_util.tree_map, lambda x: x.reshape(2, 1, *x.shape[1:]))
    per_device = jax.pmap(
        jax.value_and_grad(functools.partial(_loss, axis_name="batch"), has_aux=True),
        axis_name="batch", devices=devices[:2])
    (totals, aux), grads = per_device(shard(stages), shard(labels), shard(keys))
    # What the train step logs (pmean of the device values) is the 1-device value.
    _check(np.mean(totals), jax.tree_util.tree_map(lambda x: np.mean(x), aux), expected,
           expected_total)
    _, grads_1 = _one_device()
    # d(device mean)/d(device's logits) = (device's gradient) / 2.
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_1)):
        np.testing.assert_allclose(np.asarray(got).reshape(want.shape) / 2, want, rtol=1e-5,
                                   atol=1e-7)


def test_point_draws_follow_the_sample_not_its_batch_position():
    cfg = _cfg()
    budget = pan.PointBudget(cfg, cfg.max_segments, (h, w))
    rng = jax.random.PRNGKey(5)
    both = pan.draw_points(panoptic_plugin.point_keys(rng, jnp.array([11, 4])), budget, 2, 2)
    alone = pan.draw_points(panoptic_plugin.point_keys(rng, jnp.array([4])), budget, 1, 2)
    for stage_both, stage_alone in zip(both, alone):
        for name in budget.shapes:
            np.testing.assert_array_equal(stage_both[name][1], stage_alone[name][0])
    assert not np.array_equal(both[0]["match"][0], both[0]["match"][1])
