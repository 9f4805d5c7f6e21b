"""Instance-aware patch contrastive loss and FSRE's triplet alternative.

jdepth/losses/contrastive.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth.losses import contrastive
from jdepth.training import panoptic_config
from panoptic_helpers import fast_compiles  # noqa: F401 (autouse fixture)

# A 3 x 3 image, K = 3. With min_pairs = 3 only the centre is an anchor: its neighbours are
# 3 positives (label 1), 4 negatives (label 2) and one void pixel (-1), which is neither.
LABELS = np.array([[[1, 1, 2], [1, 1, 2], [-1, 2, 2]]], np.int32)
FEATURES = np.zeros((1, 3, 3, 2), np.float32)
FEATURES[0, 1, 1] = (1, 0)  # anchor
FEATURES[0, 0, 0], FEATURES[0, 0, 1], FEATURES[0, 1, 0] = (1, 0), (0, 1), (2, 0)  # positives
FEATURES[0, 0, 2], FEATURES[0, 1, 2] = (0, 1), (-1, 0)  # negatives ...
FEATURES[0, 2, 1], FEATURES[0, 2, 2] = (0, 3), (0, 1)  # ... (0, 3) normalises to (0, 1)
FEATURES[0, 2, 0] = (-5, 5)  # void: must not matter
# Squared distances of the normalised features to the anchor: positives 0, 2, 0 (the (2, 0)
# feature normalises to (1, 0)); negatives 2, 4, 2, 2.


def test_patch_relations_count_positives_negatives_and_anchors():
    positive, negative, anchor = contrastive.patch_relations(jnp.asarray(LABELS), 3, min_pairs=3)
    np.testing.assert_array_equal(anchor[0], [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert int(positive[0, 1, 1].sum()) == 3 and int(negative[0, 1, 1].sum()) == 4
    _, _, anchor4 = contrastive.patch_relations(jnp.asarray(LABELS), 3, min_pairs=4)
    assert not bool(anchor4.any())
    with pytest.raises(ValueError, match="odd"):
        contrastive.patch_relations(jnp.asarray(LABELS), 4, min_pairs=1)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_supervised_contrastive_hand_value(tau):
    loss_fn = functools.partial(contrastive.supervised_contrastive_loss, patch_size=3,
                                temperature=tau, min_pairs=3)
    loss, anchors = jax.jit(loss_fn)(FEATURES, LABELS)
    # -mean_p s_p + log sum_n exp(s_n), s = -d^2 / tau.
    pos_mean = -(0 + 2 + 0) / 3 / tau
    lse = math.log(3 * math.exp(-2 / tau) + math.exp(-4 / tau))
    assert int(anchors) == 1
    assert float(loss) == pytest.approx(lse - pos_mean, rel=1e-5)


def test_triplet_hand_value():
    loss_fn = functools.partial(contrastive.triplet_loss, patch_size=3, margin=2.0, min_pairs=3)
    loss, _ = jax.jit(loss_fn)(FEATURES, LABELS)
    eps = math.sqrt(1e-9)  # distance of identical features (FSRE's clamp)
    pos = (eps + math.sqrt(2) + eps) / 3
    neg = (3 * math.sqrt(2) + 2) / 4
    assert float(loss) == pytest.approx(pos - neg + 2.0, rel=1e-5)


def test_instances_of_one_class_are_negatives_of_each_other():
    ids = np.full((1, 6, 6), 13001, np.int32)
    ids[:, :, 3:] = 13002  # two touching cars
    positive, negative, anchor = contrastive.patch_relations(jnp.asarray(ids), 5, min_pairs=4)
    assert bool(anchor[0, :, 2:4].all()) and int(negative.sum()) > 0
    classes = contrastive.segment_labels(ids, "semantic")  # FSRE's labels: one segment
    np.testing.assert_array_equal(contrastive.segment_labels(ids, "panoptic"), ids)
    _, negative_sem, anchor_sem = contrastive.patch_relations(jnp.asarray(classes), 5, 4)
    assert not bool(anchor_sem.any()) and not bool(negative_sem.any())


def test_multiscale_loss_weights_scales_and_trains_only_near_boundaries():
    cfg = panoptic_config.contrastive_section()
    ids = np.full((2, 32, 32), 10, np.int32)
    ids[:, 16:] = 0
    ids[0, 12:28, 4:14] = 13001
    rng = np.random.default_rng(0)
    feats = {s: jnp.asarray(rng.normal(size=(2, 32 // 2**s, 32 // 2**s, 8)), jnp.float32)
             for s in (1, 2, 3)}

    def loss_fn(f):
        return contrastive.multiscale_contrastive_loss(f, jnp.asarray(ids), cfg)

    (total, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(feats)
    expected = sum(aux[f"contrastive/s{s}"] / 2**s for s in (1, 2, 3))
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    assert float(aux["contrastive/anchors"]) > 0
    # Scale 1 (16 x 16, boundary at row 8 of image 1): rows further than 2 (K // 2) from an
    # anchor get no gradient.
    g = np.abs(np.asarray(grads[1][1])).sum(-1)
    assert g[:4].sum() == 0 and g[13:].sum() == 0 and g[6:10].sum() > 0
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(grads))


def test_unknown_kind_or_labels_is_an_error():
    with pytest.raises(ValueError, match="labels must be one of"):
        contrastive.segment_labels(np.zeros(3, np.int32), "instance")
    cfg = panoptic_config.contrastive_section()
    cfg.kind = "infonce"
    with pytest.raises(ValueError, match="kind must be one of"):
        contrastive.multiscale_contrastive_loss({}, jnp.zeros((1, 8, 8), jnp.int32), cfg)
