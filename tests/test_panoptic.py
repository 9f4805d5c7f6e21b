"""Panoptic head (models/panoptic_head.py), inference and PQ (eval/panoptic.py) on hand-made and
synthetic-KITTI labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth.data import panoptic_labels as pl
from jdepth.data import pipeline
from jdepth.eval import panoptic as pan_eval
from jdepth.models import panoptic_head
from jdepth.models.resnet import encoder_channels
from jdepth.training.state import param_count
from panoptic_helpers import fast_compiles, fill_like  # noqa: F401 (autouse fixture)

C = pl.NUM_CLASSES


def _head_param_count(in_channels, num_proposals=100, hidden=256, agg=128, ffn=2048,
                      cls_fcs=3, mask_fcs=3, stages=2, classes=C, k=3):
    """Parameter count of PanopticHead by layer (the layout in the module docstring)."""
    half = [c // 2 for c in in_channels]
    n = sum(c * h + h for c, h in zip(in_channels, half))  # lateral 1x1 convs
    for level in range(3):  # UpLayer(half[l + 1] -> half[l]): conv, GN, deconv, GN
        n += 9 * half[level + 1] * half[level] + 2 * half[level]
        n += 16 * half[level] * half[level] + 2 * half[level]
    n += sum(h * agg for h in half) + agg  # agg 1x1 convs (no bias) + shared bias
    n += 9 * agg * agg + agg + (agg + 2) * hidden + hidden  # output conv, coord conv
    n += hidden * num_proposals + num_proposals  # stage-0 kernels
    stage = 2 * (hidden * (num_proposals + k) + num_proposals + k + 2 * hidden)  # DySepConvAtten
    stage += 4 * 2 * hidden  # f/k/s atten norms, ffn norm
    stage += 4 * (hidden * hidden + hidden)  # self-attention q, k, v, out
    stage += hidden * ffn + ffn + ffn * hidden + hidden
    stage += cls_fcs * (hidden * hidden + 2 * hidden) + hidden * (classes + 1) + classes + 1
    stage += mask_fcs * (hidden * hidden + 2 * hidden) + hidden * hidden + hidden
    return n + stages * stage


def _features(batch, height, width, channels):
    return [jnp.zeros((batch, height // 2**(l + 2), width // 2**(l + 2), c), jnp.float32)
            for l, c in enumerate(channels)]


@pytest.mark.parametrize("kwargs", [
    {},  # YOSO's Cityscapes sizes on ResNet-18
    dict(num_proposals=8, hidden_dim=32, agg_dim=16, ffn_dim=64, num_heads=2, num_cls_fcs=1,
         num_mask_fcs=2, num_stages=1),
])
def test_head_parameter_count_matches_the_layer_formula(kwargs):
    channels = encoder_channels(18)[1:]
    head = panoptic_head.PanopticHead(**kwargs)
    shapes = jax.eval_shape(head.init, jax.random.PRNGKey(0), _features(1, 64, 96, channels))
    expected = _head_param_count(
        channels, kwargs.get("num_proposals", 100), kwargs.get("hidden_dim", 256),
        kwargs.get("agg_dim", 128), kwargs.get("ffn_dim", 2048), kwargs.get("num_cls_fcs", 3),
        kwargs.get("num_mask_fcs", 3), kwargs.get("num_stages", 2))
    assert param_count(shapes["params"]) == expected
    if not kwargs:
        assert expected == 4_849_544


def test_head_outputs_per_stage_on_hrnet_like_channels():
    head = panoptic_head.PanopticHead(num_proposals=6, hidden_dim=16, agg_dim=8, ffn_dim=32,
                                      num_heads=2, num_cls_fcs=1, num_mask_fcs=1)
    rng = np.random.default_rng(0)
    feats = [jnp.asarray(rng.normal(size=f.shape), jnp.float32)
             for f in _features(2, 64, 96, (18, 36, 72, 144))]
    shapes = jax.eval_shape(head.init, jax.random.PRNGKey(0), feats)
    assert "batch_stats" not in shapes  # GroupNorm: nothing to synchronise across devices
    variables = fill_like(shapes)  # GroupNorm: nothing to synchronise across devices
    stages, aux = jax.jit(head.apply)(variables, feats)
    assert len(stages) == 3 and "class_logits" not in stages[0]
    for stage in stages:
        assert stage["mask_logits"].shape == (2, 16, 24, 6)
        assert np.all(np.isfinite(stage["mask_logits"]))
    for stage in stages[1:]:
        assert stage["class_logits"].shape == (2, 6, C + 1)
    assert aux["features"].shape == (2, 16, 24, 16)


def test_dynamic_separable_conv_matches_a_loop_reference():
    b, n, c, k = 2, 5, 7, 3
    rng = np.random.default_rng(1)
    query = jnp.asarray(rng.normal(size=(b, n, c)), jnp.float32)
    value = jnp.asarray(rng.normal(size=(b, n, c)), jnp.float32)
    module = panoptic_head.DySepConvAtten(num_proposals=n, kernel_size=k)
    variables = fill_like(jax.eval_shape(module.init, jax.random.PRNGKey(0), query, value))
    variables["params"]["weight_linear"]["bias"] = rng.normal(size=n + k).astype(np.float32)
    got = np.asarray(module.apply(variables, query, value))
    dense = variables["params"]["weight_linear"]
    weights = np.asarray(query) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    v = np.asarray(value)
    expected = np.zeros_like(v)
    for i in range(b):
        depth = np.zeros((n, c))
        for p in range(n):  # torch conv1d(groups=N, padding='same'): cross-correlation
            for ch in range(c):
                for t in range(k):
                    src = ch + t - 1
                    if 0 <= src < c:
                        depth[p, ch] += weights[i, p, t] * v[i, p, src]
        expected[i] = weights[i, :, k:] @ np.maximum(depth, 0)
    mean = expected.mean(-1, keepdims=True)
    expected = (expected - mean) / np.sqrt(expected.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _inference_case():
    """8 x 8 image, 7 proposals (see the expected map in the test)."""
    q = 7
    cls = np.zeros((q, C + 1), np.float32)
    masks = np.full((8, 8, q), -5.0, np.float32)
    cls[0, 0] = 10; masks[4:, :, 0] = 5           # road
    cls[1, 0] = 10; masks[7, 6:, 1] = 6           # road again, wins 2 pixels: merged with q0
    cls[2, 13] = 10; masks[:3, :3, 2] = 5         # car -> instance 1
    cls[3, 11] = 10; masks[:3, 1:4, 3] = 4        # person, loses 6 of its 9 pixels -> dropped
    cls[4, C] = 10; masks[:2, 3:5, 4] = 9         # no-object -> dropped
    cls[5, 13] = 1; masks[3, :, 5] = 9            # car with probability 0.12 -> dropped
    cls[6, 13] = 10; masks[:3, 5:, 6] = 5         # car -> instance 2 (q3 does not count)
    expected = np.full((8, 8), -1, np.int32)
    expected[4:] = 0
    expected[:3, :3], expected[:3, 5:] = 13001, 13002
    return cls, masks, expected


def test_panoptic_inference_merges_stuff_and_numbers_instances():
    cls, masks, expected = _inference_case()
    got = jax.jit(pan_eval.panoptic_inference)(cls, masks)
    np.testing.assert_array_equal(got, expected)
    # The same proposals in another order: same map up to the instance numbering.
    perm = np.array([6, 1, 0, 3, 5, 4, 2])
    got = np.asarray(jax.jit(pan_eval.panoptic_inference)(cls[perm], masks[..., perm]))
    swapped = np.where(expected == 13001, 13002, np.where(expected == 13002, 13001, expected))
    np.testing.assert_array_equal(got, swapped)


def test_panoptic_quality_hand_values():
    _, _, pred = _inference_case()
    gt = np.where(pred == -1, 10, pred)  # the void pixels are sky in the ground truth
    pq = pan_eval.PanopticQuality()
    pq.update(pred, gt)
    res = pq.result()
    # road and both cars exact (IoU 1), sky missed (FN): PQ per class 1, 1, 0.
    assert res["pq"] == pytest.approx(100 * 2 / 3) and res["pq_things"] == pytest.approx(100)
    assert res["pq_stuff"] == pytest.approx(50) and res["classes_stuff"] == 2

    pq = pan_eval.PanopticQuality()
    gt = np.array([[0] * 6 + [13001] * 4 + [255] * 4])
    pred = np.array([[0] * 5 + [13007] * 5 + [13008] * 2 + [2] * 2])
    pq.update(pred, gt)
    res = pq.result()
    # road IoU 5/6, car IoU 4/5 (instance numbers need not agree); the predicted car 13008 and
    # building lie entirely on void: no false positives.
    assert res["pq/road"] == pytest.approx(100 * 5 / 6) and res["pq/car"] == pytest.approx(80)
    assert res["rq"] == pytest.approx(100) and res["classes"] == 2

    pq = pan_eval.PanopticQuality()
    pq.update(np.array([[13001] * 2 + [0] * 4]), np.array([[13001] * 4 + [0] * 2]))
    # car IoU 2/4 = 0.5 is not a match (> 0.5 needed): one FN and one FP for the car class;
    # road IoU 2/4 as well.
    res = pq.result()
    assert res["pq"] == 0.0 and res["rq"] == 0.0
    assert pq.fn[13] == 1 and pq.fp[13] == 1 and pq.fp[0] == 1


def test_instance_edge_band():
    ids = np.full((9, 9), 10, np.int32)
    ids[3:6, 3:6] = 13001
    ids[7:, :] = 0  # a stuff-stuff edge: not an instance edge
    band = pan_eval.instance_edge_band(ids, radius=1)
    assert band[4, 4] and band[1, 4] and not band[0, 4] and not band[8, 0]


def test_synthetic_kitti_labels_are_cityscapes_panoptic_ids(synthetic_root):
    cfg = pipeline.PipelineConfig(root=synthetic_root, height=64, width=96, load_panoptic=True,
                                  flip_prob=0.5)
    ds = pipeline.make_dataset(cfg, f"{synthetic_root}/splits/train_files.txt", batch_size=4,
                               seed=0, train=True)
    labels = ds[0]["panoptic"]
    assert labels.shape == (4, 3, 64, 96)
    classes = pl.class_of(labels)
    assert classes.min() >= 0  # the generator labels every pixel
    assert set(np.unique(classes)) <= {0, 1, 2, 5, 8, 9, 10, 13}
    things = np.unique(labels[pl.is_thing_class(classes)])
    assert len(things) > 0 and np.all(things // 1000 == 13) and np.all(things % 1000 > 0)
    pq = pan_eval.PanopticQuality()
    for frame in labels.reshape(-1, 64, 96):
        pq.update(frame, frame)
    assert pq.result()["pq"] == pytest.approx(100.0)
    assert pq.result()["classes_things"] == 1
