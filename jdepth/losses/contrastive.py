"""Instance-aware patch-based supervised contrastive loss (Shyam et al. eq. 1; DESIGN.md item 3).

On depth-decoder features at 1/8, 1/4 and 1/2 resolution (FSRE's layers), every pixel is the
centre of a K x K patch (K = 5). Its neighbours with the same *panoptic segment* (not merely the
same class: two overlapping cars are different segments) are its positives P(i), the others its
negatives N(i). Anchors are boundary pixels, the ones with at least `min_pairs` of each. With
L2-normalised features z and similarity s(a, b) = -||z_a - z_b||^2 / tau,

    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(s(i, p)) / sum_{n in N(i)} exp(s(i, n)) )
        = -mean_p s(i, p) + logsumexp_n s(i, n)

The denominator holds the negatives only (eq. 1 as printed, unlike SupCon's all-but-self): the
pull on positives and the push on negatives are separate terms ("disentangles the embedding
triplet"), so L_i is not bounded below by 0.

`triplet_loss` is FSRE's semantics-guided triplet loss (relu(mean d+ - mean d- + margin) with
d = sqrt(2 - 2 cos)), the ablation alternative; with panoptic ids it is instance-aware too, with
`labels="semantic"` (class ids only) it is FSRE's loss as published.

Decisions where the paper and FSRE are silent or differ:
* Neighbours outside the image and void pixels (jdepth/data/panoptic_labels.py) are neither
  positives nor negatives, and a void centre is never an anchor (FSRE pads with label -1, so the
  border counts as negative with a zero feature); the centre is not its own positive.
* min_pairs = K - 1 (FSRE's boundary rule: >= K - 1 of each; FSRE counts the centre as positive).
* Per scale the loss is the mean over each image's anchors, then over images (an image without
  anchors adds 0); scales are combined as FSRE does, sum_s L_s / 2^s.
* Labels are nearest-downsampled with pixel-centre alignment (panoptic_labels.downsample_labels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jdepth.data import panoptic_labels

KINDS = ("supcon", "triplet")
LABELS = ("panoptic", "semantic")
_NORM_EPS = 1e-12
# Fill for masked similarities inside logsumexp: finite so the gradient stays finite.
_MASKED = -1e9


def _neighbours(x: jax.Array, patch_size: int, fill) -> jax.Array:
    """The K*K - 1 neighbours of every pixel: [B, h, w, ...] -> [B, h, w, K*K - 1, ...].

    Neighbour o (row-major over the patch, centre skipped) of pixel (i, j) is pixel
    (i + dy_o, j + dx_o), `fill` outside the image.
    """
    r = patch_size // 2
    h, w = x.shape[1:3]
    pad = [(0, 0), (r, r), (r, r)] + [(0, 0)] * (x.ndim - 3)
    padded = jnp.pad(x, pad, constant_values=fill)
    shifted = [
        padded[:, r + dy:r + dy + h, r + dx:r + dx + w]
        for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)
    ]
    return jnp.stack(shifted, axis=3)


def patch_relations(labels: jax.Array, patch_size: int, min_pairs: int):
    """Positives, negatives and anchors of every patch.

    Args:
      labels: [B, h, w] int segment ids, void = panoptic_labels.VOID.
      patch_size: K (odd).
      min_pairs: an anchor needs at least this many positives and this many negatives.

    Returns:
      (positive [B, h, w, K*K - 1] bool, negative [same] bool, anchor [B, h, w] bool).
    """
    if patch_size % 2 != 1 or patch_size < 3:
        raise ValueError(
            f"jdepth/losses/contrastive.py: patch_size must be odd >= 3, got {patch_size}"
        )
    void = panoptic_labels.VOID
    neighbours = _neighbours(labels, patch_size, void)
    centre = labels[..., None]
    usable = (neighbours != void) & (centre != void)
    positive = usable & (neighbours == centre)
    negative = usable & (neighbours != centre)
    anchor = (
        (labels != void)
        & (jnp.sum(positive, axis=-1) >= min_pairs)
        & (jnp.sum(negative, axis=-1) >= min_pairs)
    )
    return positive, negative, anchor


def patch_squared_distances(features: jax.Array, patch_size: int) -> jax.Array:
    """||z_i - z_o||^2 = 2 - 2 cos between L2-normalised features: [B, h, w, C] -> [B, h, w, O]."""
    features = features.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True) + _NORM_EPS)
    z = features / norm
    # One neighbour at a time keeps the peak memory at 2 feature maps, not K*K - 1 of them.
    r = patch_size // 2
    h, w = z.shape[1:3]
    padded = jnp.pad(z, [(0, 0), (r, r), (r, r), (0, 0)])
    cos = [
        jnp.sum(z * padded[:, r + dy:r + dy + h, r + dx:r + dx + w], axis=-1)
        for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)
    ]
    return jnp.maximum(2.0 - 2.0 * jnp.stack(cos, axis=-1), 0.0)


def _per_image_anchor_mean(per_anchor: jax.Array, anchor: jax.Array) -> jax.Array:
    total = jnp.sum(jnp.where(anchor, per_anchor, 0.0), axis=(1, 2))
    count = jnp.sum(anchor, axis=(1, 2))
    return jnp.mean(total / jnp.maximum(count, 1))


def supervised_contrastive_loss(
    features: jax.Array, labels: jax.Array, *, patch_size: int = 5, temperature: float = 0.1,
    min_pairs: int = 4,
) -> tuple[jax.Array, jax.Array]:
    """Eq. 1 at one scale (module docstring).

    Args:
      features: [B, h, w, C] decoder features.
      labels: [B, h, w] int segment ids at the same resolution (void = -1).
      patch_size, temperature, min_pairs: K, tau and the anchor rule.

    Returns:
      (loss scalar, number of anchors in the batch).
    """
    positive, negative, anchor = patch_relations(labels, patch_size, min_pairs)
    sim = -patch_squared_distances(features, patch_size) / temperature
    num_pos = jnp.maximum(jnp.sum(positive, axis=-1), 1)
    pos_mean = jnp.sum(jnp.where(positive, sim, 0.0), axis=-1) / num_pos
    neg_lse = jax.nn.logsumexp(jnp.where(negative, sim, _MASKED), axis=-1)
    return _per_image_anchor_mean(neg_lse - pos_mean, anchor), jnp.sum(anchor)


def triplet_loss(
    features: jax.Array, labels: jax.Array, *, patch_size: int = 5, margin: float = 0.3,
    min_pairs: int = 4,
) -> tuple[jax.Array, jax.Array]:
    """FSRE's SGT loss at one scale: relu(mean_p d(i, p) - mean_n d(i, n) + margin).

    Same arguments and anchors as `supervised_contrastive_loss`; d = sqrt(max(1e-9, 2 - 2 cos)).
    """
    positive, negative, anchor = patch_relations(labels, patch_size, min_pairs)
    dist = jnp.sqrt(jnp.maximum(patch_squared_distances(features, patch_size), 1e-9))
    pos = jnp.sum(jnp.where(positive, dist, 0.0), axis=-1) / jnp.maximum(
        jnp.sum(positive, axis=-1), 1)
    neg = jnp.sum(jnp.where(negative, dist, 0.0), axis=-1) / jnp.maximum(
        jnp.sum(negative, axis=-1), 1)
    return _per_image_anchor_mean(jax.nn.relu(pos - neg + margin), anchor), jnp.sum(anchor)


def segment_labels(panoptic: jax.Array, labels: str = "panoptic") -> jax.Array:
    """What counts as "the same segment": panoptic ids (instances apart) or class ids (FSRE).

    Args:
      panoptic: int Cityscapes panoptic ids, any shape.
      labels: "panoptic" or "semantic".

    Returns:
      int32 labels of the same shape, void = panoptic_labels.VOID.
    """
    if labels not in LABELS:
        raise ValueError(
            f"jdepth/losses/contrastive.py: labels must be one of {LABELS}, got {labels!r}"
        )
    if labels == "semantic":
        return panoptic_labels.class_of(panoptic)
    return panoptic_labels.canonical_ids(panoptic)


def multiscale_contrastive_loss(
    decoder_features: Mapping[int, jax.Array], panoptic: jax.Array, cfg: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """sum_s L_s / 2^s over `cfg.scales` (unweighted by `cfg.weight`).

    Args:
      decoder_features: {s: [B, H / 2^s, W / 2^s, C_s]} (DepthNet aux "decoder_features").
      panoptic: [B, H, W] int Cityscapes panoptic ids of the depth network's input.
      cfg: the `config.contrastive` section (kind, labels, scales, patch_size, temperature,
        margin, min_pairs).

    Returns:
      (loss, aux) with aux "contrastive/s{s}" per scale and "contrastive/anchors" (mean per image).
    """
    if cfg.kind not in KINDS:
        raise ValueError(
            f"jdepth/losses/contrastive.py: kind must be one of {KINDS}, got {cfg.kind!r}"
        )
    ids = segment_labels(panoptic, cfg.get("labels", "panoptic"))
    total, aux, anchors = 0.0, {}, 0
    for s in cfg.scales:
        labels = panoptic_labels.downsample_labels(ids, 2**s)
        features = decoder_features[s]
        if features.shape[1:3] != labels.shape[1:]:
            raise ValueError(
                f"jdepth/losses/contrastive.py: decoder features at scale {s} are "
                f"{features.shape[1:3]} but labels {labels.shape[1:]}"
            )
        if cfg.kind == "supcon":
            loss, count = supervised_contrastive_loss(
                features, labels, patch_size=cfg.patch_size, temperature=cfg.temperature,
                min_pairs=cfg.min_pairs)
        else:
            loss, count = triplet_loss(
                features, labels, patch_size=cfg.patch_size, margin=cfg.margin,
                min_pairs=cfg.min_pairs)
        aux[f"contrastive/s{s}"] = loss
        anchors = anchors + count
        total = total + loss / 2**s
    aux["contrastive/anchors"] = anchors.astype(jnp.float32) / panoptic.shape[0]
    return total, aux

