"""Mask2Former's set loss for the panoptic head (YOSO loss.py / Mask2Former matcher.py, criterion).

Per stage and image: the proposals are matched one-to-one to the ground-truth segments by the
Hungarian algorithm on

    cost = w_cls * (-softmax(class_logits)[gt class]) + w_mask * BCE + w_dice * dice

with BCE and dice computed on the same P uniformly drawn points for every pair. Then

    loss_ce    cross-entropy over C + 1 classes for all N proposals of all images (unmatched ->
               no-object), class weights 1, ..., 1, no_object_weight: sum w NLL / sum w
               (torch F.cross_entropy with a weight vector)
    loss_mask  sigmoid BCE, mean over P importance-sampled points, summed over the matched
               pairs / num_masks (the batch's ground-truth segments, at least 1)
    loss_dice  1 - (2 sum pq + 1) / (sum p + sum q + 1) on the same points, summed / num_masks

and the stage loss is w_cls * ce + w_mask * mask + w_dice * dice (2 / 5 / 5). Stage 0 has no class
logits: its matching and loss use the mask terms only. Every stage is re-matched (deep
supervision; num_masks is the same for all) and the stage losses are summed, as YOSO does.
The class logits arrive divided by YOSO's temperature (jdepth/models/panoptic_head.py), in the
matching cost as in the loss, as YOSO passes them to its criterion.
tests/test_panoptic_criterion.py checks a 2-query case against these formulas by hand.

Decisions (documented deviations; see also jdepth/matching.py):
* Points: P = min(num_points, h * w of the predicted masks) - "fewer at small resolutions": more
  points than the stride-4 map has pixels add no information. Importance sampling as Mask2Former:
  draw 3P uniform points, keep the 0.75P with the smallest |logit|, add 0.25P uniform ones.
* Point coordinates are normalised to [0, 1)^2. Predicted logits are sampled bilinearly with
  half-pixel centres (grid_sample align_corners=False) but *border* padding instead of zeros, so
  a point near the edge is not pulled towards logit 0. Ground truth is read at full resolution by
  nearest neighbour on the label map (no [M, H, W] mask tensor is ever built): the target is the
  label of the pixel the point lies in.
* Normalisation (`normalization`), "mask2former" (default): Mask2Former's criterion. mask and
  dice are summed over the matched masks of the GLOBAL batch and divided by num_masks, the number
  of ground-truth segments in it (at least 1); CE is one weighted mean over every proposal of the
  global batch (torch F.cross_entropy with a weight vector). Under pmap both denominators are
  psum-ed over `axis_name` (Mask2Former all-reduces num_masks) and divided by the device count,
  so the device average that the gradient pmean takes is the 1-device value of the global batch.
  (Mask2Former clamps num_masks / world_size at 1, here max(num_masks, 1) / world_size: the same
  unless a batch has fewer segments than devices, and this way 2 devices == 1.)
  "per_image" (jdepth before issue 24): each image's mask and dice summed / its own segment count
  and its own weighted-mean CE, then the mean over images: an image with 2 segments weighs as
  much as one with 20.
* Point draws are keyed per sample (`panoptic_loss`'s `key` may be one key per sample, from the
  sample's index in the split), so a sample draws the same points whatever its batch position
  or device.
* Void pixels (jdepth/data/panoptic_labels.py) are never a target: points that land on them count
  as background for every segment (Mask2Former's padded region behaves the same way).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jdepth import geometry, matching
from jdepth.data import panoptic_labels


# --------------------------------------------------------------------------------- point sampling
def num_points_for(config_points: int, mask_shape: tuple[int, int]) -> int:
    """P = min(configured points, pixels of the predicted mask map) (module docstring)."""
    return int(min(config_points, mask_shape[0] * mask_shape[1]))


def sample_logits(logits: jax.Array, points: jax.Array) -> jax.Array:
    """Bilinear samples of maps at normalised points (align_corners=False, border padding).

    Args:
      logits: [B, h, w, Q].
      points: [B, P, 2] normalised (x, y).

    Returns:
      [B, P, Q].
    """
    h, w = logits.shape[1:3]
    pix = points * jnp.array([w, h], jnp.float32) - 0.5
    return geometry.bilinear_sample(logits, pix[:, None], "border")[:, 0]


def sample_labels(ids: jax.Array, points: jax.Array) -> jax.Array:
    """Label of the pixel each normalised point lies in.

    Args:
      ids: [B, H, W] int.
      points: [B, ..., 2] normalised (x, y).

    Returns:
      [B, ...] int labels.
    """
    height, width = ids.shape[1:]
    cols = jnp.clip(jnp.floor(points[..., 0] * width).astype(jnp.int32), 0, width - 1)
    rows = jnp.clip(jnp.floor(points[..., 1] * height).astype(jnp.int32), 0, height - 1)
    flat = ids.reshape(ids.shape[0], -1)
    index = (rows * width + cols).reshape(ids.shape[0], -1)
    return jnp.take_along_axis(flat, index, axis=1).reshape(rows.shape)


def importance_points(candidates: jax.Array, extra: jax.Array, logits_fn, num_uncertain: int):
    """Mask2Former's `get_uncertain_point_coords_with_randomness`, vectorised.

    Args:
      candidates: [..., S, 2] uniform points (S = oversample_ratio * P).
      extra: [..., P - num_uncertain, 2] uniform points added as they are.
      logits_fn: points [..., S, 2] -> logits [..., S] (no gradient is taken).
      num_uncertain: how many candidates to keep, those with the smallest |logit|.

    Returns:
      [..., P, 2] normalised points.
    """
    uncertainty = -jnp.abs(jax.lax.stop_gradient(logits_fn(candidates)))
    _, top = jax.lax.top_k(uncertainty, num_uncertain)
    chosen = jnp.take_along_axis(candidates, top[..., None], axis=-2)
    return jnp.concatenate([chosen, extra], axis=-2)


# ------------------------------------------------------------------------------- pairwise costs
def pairwise_sigmoid_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean BCE over points of every (proposal, segment) pair: [P, Q], [P, M] -> [Q, M]."""
    pos = jax.nn.softplus(-logits)  # BCE against target 1
    neg = jax.nn.softplus(logits)  # BCE against target 0
    targets = targets.astype(logits.dtype)
    cost = pos.T @ targets + neg.T @ (1.0 - targets)
    return cost / logits.shape[0]


def pairwise_dice(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Dice loss of every (proposal, segment) pair: [P, Q], [P, M] -> [Q, M]."""
    prob = jax.nn.sigmoid(logits)
    targets = targets.astype(logits.dtype)
    numerator = 2.0 * prob.T @ targets
    denominator = jnp.sum(prob, axis=0)[:, None] + jnp.sum(targets, axis=0)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


# ----------------------------------------------------------------------------------- the losses
def sigmoid_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """BCE with logits, mean over the last axis (points): [..., P] -> [...]."""
    targets = targets.astype(logits.dtype)
    per_point = jax.nn.softplus(logits) - logits * targets
    return jnp.mean(per_point, axis=-1)


def dice_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """1 - (2 sum pq + 1) / (sum p + sum q + 1) over the last axis: [..., P] -> [...]."""
    prob = jax.nn.sigmoid(logits)
    targets = targets.astype(logits.dtype)
    numerator = 2.0 * jnp.sum(prob * targets, axis=-1)
    denominator = jnp.sum(prob, axis=-1) + jnp.sum(targets, axis=-1)
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def class_cross_entropy(
    class_logits: jax.Array, target_classes: jax.Array, no_object_weight: float
) -> jax.Array:
    """Weighted-mean CE of one image (torch F.cross_entropy with `weight=`).

    Args:
      class_logits: [Q, C + 1]; the last class is no-object.
      target_classes: [Q] int in 0..C (C = no-object).
      no_object_weight: weight of the no-object class (0.1); the others weigh 1.

    Returns:
      Scalar sum_q w[t_q] CE_q / sum_q w[t_q].
    """
    nll, weight = class_nll(class_logits, target_classes, no_object_weight)
    return jnp.sum(weight * nll) / jnp.sum(weight)


def class_nll(
    class_logits: jax.Array, target_classes: jax.Array, no_object_weight: float
) -> tuple[jax.Array, jax.Array]:
    """Per-proposal CE and its class weight: [..., Q, C + 1], [..., Q] -> ([..., Q], [..., Q])."""
    num_classes = class_logits.shape[-1] - 1
    log_prob = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_prob, target_classes[..., None], axis=-1)[..., 0]
    weight = jnp.where(target_classes == num_classes, no_object_weight, 1.0)
    return nll, weight


def make_targets(panoptic: jax.Array, max_segments: int) -> dict[str, jax.Array]:
    """Ground-truth segments of a batch of label maps [B, H, W] (see panoptic_labels).

    Returns:
      {"ids": [B, H, W] canonical ids (void = -1), "segment_ids", "classes": [B, M] int32,
       "valid": [B, M] bool, "truncated": [B] bool}.
    """
    seg, cls, valid, truncated = jax.vmap(
        lambda ids: panoptic_labels.segment_targets(ids, max_segments)
    )(panoptic)
    return {
        "ids": panoptic_labels.canonical_ids(panoptic),
        "segment_ids": seg, "classes": cls, "valid": valid, "truncated": truncated,
    }


NORMALIZATIONS = ("mask2former", "per_image")


class PointBudget:
    """Sizes of one sample's random points for one stage (per-sample shapes, no batch axis).

    All stages and samples draw in ONE vmapped `jax.random.uniform` call (`draw_points`): each
    threefry call costs ~1 s of XLA compilation on CPU whatever its size, so one call per loss
    instead of three per stage keeps the train step's compile time down.
    """

    def __init__(self, cfg: Any, slots: int, mask_shape: tuple[int, int]):
        self.points = num_points_for(cfg.num_points, mask_shape)
        self.oversampled = int(self.points * cfg.oversample_ratio)
        self.uncertain = int(cfg.importance_sample_ratio * self.points)
        self.shapes = {
            "match": (self.points, 2),
            "candidates": (slots, self.oversampled, 2),
            "extra": (slots, self.points - self.uncertain, 2),
        }
        self.size = sum(math.prod(shape) for shape in self.shapes.values())

    def split(self, uniform: jax.Array) -> dict[str, jax.Array]:
        """[B, size] uniforms in [0, 1) -> {"match", "candidates", "extra"}, each [B, ...]."""
        out, start = {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = uniform[:, start:start + n].reshape((uniform.shape[0],) + shape)
            start += n
        return out


def _is_key_batch(key: jax.Array) -> bool:
    """Whether `key` holds one key per sample ([B] typed keys or [B, 2] raw uint32 keys)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


def draw_points(key: jax.Array, budget: PointBudget, batch: int, num_stages: int
                ) -> list[dict[str, jax.Array]]:
    """Every stage's uniform points: a list over stages of `PointBudget.split` dicts.

    Args:
      key: [B] keys, one per sample (each sample's points depend on its key only, so keys made
        from the samples' split indices give the same points on any device split), or one key,
        split over the batch positions.
      budget: the per-sample point counts.
      batch: B.
      num_stages: how many stages draw.
    """
    keys = key if _is_key_batch(key) else jax.random.split(key, batch)
    uniform = jax.vmap(lambda k: jax.random.uniform(k, (num_stages, budget.size), jnp.float32))(
        keys)  # [B, stages, size]
    return [budget.split(uniform[:, s]) for s in range(num_stages)]


def _psum(x: jax.Array, axis_name: str | None) -> jax.Array:
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _device_count(axis_name: str | None):
    return 1 if axis_name is None else jax.lax.psum(1, axis_name)


def global_denominator(local: jax.Array, axis_name: str | None, minimum: float = 0.0):
    """A denominator over the global batch, as each device must use it under pmap.

    max(sum over devices of `local`, minimum) / number of devices: a device's (local sum / this),
    averaged over devices (what the gradient pmean does), is the global sum / the global count.
    Without an axis: max(local, minimum).
    """
    total = jnp.maximum(_psum(jax.lax.stop_gradient(local), axis_name), minimum)
    return total / _device_count(axis_name)


def matching_cost(stage: dict, targets: dict, points: jax.Array, cfg: Any) -> jax.Array:
    """Hungarian cost of one stage on shared uniform points: [B, Q, M] (no gradient).

    Args:
      stage: head outputs of one stage ("mask_logits" [B, h, w, Q], optional "class_logits").
      targets: from `make_targets`.
      points: [B, P, 2] normalised points, the same for every proposal and segment of an image.
      cfg: weights (class_weight, mask_weight, dice_weight).
    """
    stage = jax.lax.stop_gradient(stage)
    pred = sample_logits(stage["mask_logits"], points)  # [B, P, Q]
    labels = sample_labels(targets["ids"], points)  # [B, P]
    gt = (labels[:, :, None] == targets["segment_ids"][:, None, :]) & targets["valid"][:, None]
    cost = cfg.mask_weight * jax.vmap(pairwise_sigmoid_ce)(pred, gt)
    cost = cost + cfg.dice_weight * jax.vmap(pairwise_dice)(pred, gt)
    if "class_logits" in stage:
        prob = jax.nn.softmax(stage["class_logits"], axis=-1)  # [B, Q, C + 1]
        gt_class = jnp.maximum(targets["classes"], 0)
        cost = cost - cfg.class_weight * jnp.take_along_axis(prob, gt_class[:, None, :], axis=-1)
    return cost


def stage_loss(
    stage: dict, targets: dict, proposal_of_slot: jax.Array, points: dict, budget: PointBudget,
    cfg: Any, num_masks: jax.Array | None = None, axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """Unweighted terms of one stage: {"mask", "dice"[, "ce"]} (module docstring's normalisation).

    Args:
      stage: head outputs of one stage.
      targets: from `make_targets`.
      proposal_of_slot: [B, M] the matching.
      points: the stage's uniform draws (`draw_points`).
      budget: the point counts.
      cfg: no_object_weight, normalization.
      num_masks: "mask2former": this device's share of the global segment count
        (`global_denominator`); unused with "per_image".
      axis_name: pmap axis of a sharded batch (global CE weights), or None.
    """
    normalization = cfg.get("normalization", "mask2former")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"jdepth/losses/panoptic.py: panoptic.normalization must be one of "
                         f"{NORMALIZATIONS}, got {normalization!r}")
    masks = stage["mask_logits"]  # [B, h, w, Q]
    valid = targets["valid"]
    matched = jnp.take_along_axis(masks, proposal_of_slot[:, None, None, :], axis=-1)  # [B,h,w,M]

    def logits_at(pts):  # [B, M, S, 2] -> [B, M, S]: each matched mask at its own points
        b, m, n = pts.shape[:3]
        maps = jnp.moveaxis(matched, -1, 1).reshape(b * m, *matched.shape[1:3], 1)
        return sample_logits(maps, pts.reshape(b * m, n, 2)).reshape(b, m, n)

    pts = importance_points(points["candidates"], points["extra"], logits_at, budget.uncertain)
    pred = logits_at(pts)
    gt = sample_labels(targets["ids"], pts) == targets["segment_ids"][:, :, None]  # [B, M, P]

    def reduce_masks(term):  # [B, M] per matched pair -> scalar
        per_image = jnp.sum(jnp.where(valid, term, 0.0), axis=1)
        if normalization == "per_image":
            count = jnp.maximum(jnp.sum(valid, axis=1), 1).astype(jnp.float32)
            return jnp.mean(per_image / count)
        return jnp.sum(per_image) / num_masks

    terms = {"mask": reduce_masks(sigmoid_ce(pred, gt)), "dice": reduce_masks(dice_loss(pred, gt))}
    if "class_logits" in stage:
        num_classes = stage["class_logits"].shape[-1] - 1
        target_classes = jnp.full(stage["class_logits"].shape[:2], num_classes, jnp.int32)
        batch_index = jnp.arange(valid.shape[0])[:, None]
        # Padded slots write no-object onto their (otherwise unmatched) proposals: harmless.
        target_classes = target_classes.at[batch_index, proposal_of_slot].set(
            jnp.where(valid, targets["classes"], num_classes)
        )
        nll, weight = class_nll(stage["class_logits"], target_classes, cfg.no_object_weight)
        if normalization == "per_image":
            terms["ce"] = jnp.mean(jnp.sum(weight * nll, axis=1) / jnp.sum(weight, axis=1))
        else:
            terms["ce"] = jnp.sum(weight * nll) / global_denominator(jnp.sum(weight), axis_name)
    return terms


def panoptic_loss(
    stages: list[dict], panoptic: jax.Array, key: jax.Array, cfg: Any,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Deep-supervised set loss of the panoptic head (unweighted by the recipe's lambda).

    Args:
      stages: the head's outputs (jdepth/models/panoptic_head.py): "mask_logits" [B, h, w, Q] on
        every stage (one shape for all), "class_logits" [B, Q, C + 1] on every stage but the first.
      panoptic: [B, H, W] int Cityscapes panoptic ids of the head's input image.
      key: PRNG keys of the point draws: [B] keys, one per sample (made from the samples' split
        indices they make the loss independent of how the batch is split over devices), or one
        key (split over the batch positions).
      cfg: the `config.panoptic` section (weights, points, no_object_weight, max_segments,
        normalization).
      axis_name: pmap axis the batch is sharded over (num_masks and the CE weights are then
        summed over it, as Mask2Former all-reduces num_masks), or None (jit: the batch is global).

    Returns:
      (sum over stages of w_cls ce + w_mask mask + w_dice dice, aux) with aux scalars
      "panoptic/s{k}_{ce,mask,dice}" (unweighted), "panoptic/segments" (mean per image) and
      "panoptic/truncated" (fraction of images with more than max_segments segments).
    """
    shapes = {stage["mask_logits"].shape for stage in stages}
    if len(shapes) != 1:
        raise ValueError(f"jdepth/losses/panoptic.py: stages have different mask shapes {shapes}")
    batch, h, w, _ = shapes.pop()
    targets = make_targets(panoptic, cfg.max_segments)
    budget = PointBudget(cfg, cfg.max_segments, (h, w))
    points = draw_points(key, budget, batch, len(stages))
    # All stages' assignments in one batched Hungarian call (one while-loop program to compile).
    cost = jnp.stack([
        matching_cost(stage, targets, pts["match"], cfg) for stage, pts in zip(stages, points)
    ])
    valid = jnp.broadcast_to(targets["valid"], (len(stages),) + targets["valid"].shape)
    assignment = matching.batched_hungarian_match(
        cost.reshape(-1, *cost.shape[2:]), valid.reshape(-1, valid.shape[-1])
    ).reshape(valid.shape)
    # Mask2Former's num_masks: the segments of the global batch, the same for every stage.
    num_masks = global_denominator(
        jnp.sum(targets["valid"]).astype(jnp.float32), axis_name, minimum=1.0)
    weights = {"ce": cfg.class_weight, "mask": cfg.mask_weight, "dice": cfg.dice_weight}
    total, aux = 0.0, {}
    for s, stage in enumerate(stages):
        terms = stage_loss(stage, targets, assignment[s], points[s], budget, cfg, num_masks,
                           axis_name)
        for name, value in terms.items():
            aux[f"panoptic/s{s}_{name}"] = value
            total = total + weights[name] * value
    aux["panoptic/segments"] = jnp.mean(jnp.sum(targets["valid"], axis=1).astype(jnp.float32))
    aux["panoptic/truncated"] = jnp.mean(targets["truncated"].astype(jnp.float32))
    return total, aux
