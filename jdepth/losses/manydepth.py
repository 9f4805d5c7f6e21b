"""ManyDepth's objectives: the mono teacher's loss, the multi-frame loss, masks and adaptive bins.

Reference: manydepth/trainer.py (``compute_losses``, ``compute_matching_mask``,
``update_adaptive_depth_bins``); numbers in REFERENCE_FACTS.md section 2. Full-res multiscale as
in Monodepth2: every scale's disparity is upsampled to H x W and warped at full resolution.

Teacher (single frame), per scale: the minimum over sources of the reprojection error and, with
the automask, of the identity error (+ N(0,1)e-5); a pixel is kept where the reprojection wins
(ties go to the reprojection, torch.argmin's first index) and the loss is the mean over kept
pixels. This differs from Monodepth2, which averages min(identity, reprojection) over all pixels;
``reduction="min"`` selects Monodepth2's form (configs/manydepth_demo.py, so that its teacher
trains exactly as the Monodepth2 demo's depth net).

Multi-frame, per scale: the minimum reprojection error (no automask) averaged over the pixels of
``reprojection_mask = consistency_mask * (1 - augmentation_mask)``; on the other pixels the
consistency loss ``|depth - stopgrad(teacher depth)|`` (mean over ALL pixels, on depth, weight 1).

Both add the edge-aware smoothness with weight ``w / 2^s`` and average over scales.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jdepth import geometry
from jdepth.losses import monodepth
from jdepth.losses.photometric import IDENTITY_NOISE_STD, min_reprojection, tie_breaking_noise
from jdepth.losses.smoothness import edge_aware_smoothness

# A pixel's cost-volume depth and teacher depth must agree within this factor (2x) to be trusted.
_MATCHING_RATIO_LIMIT = 1.0


def full_res_depths(disps: Mapping[int, jax.Array], height: int, width: int, min_depth, max_depth):
    """Depth of every scale's disparity upsampled to ``height x width``: ``[S, B, H, W, 1]``."""
    return jnp.stack([
        geometry.disp_to_depth(monodepth.upsample_disp(disps[s], height, width), min_depth,
                               max_depth)[1]
        for s in sorted(disps)
    ])


def global_masked_mean(values: jax.Array, weights: jax.Array, axis_name: str | None = None):
    """``sum(w * v) / (sum(w) + 1e-7)`` over the GLOBAL batch when sharded over ``axis_name``.

    Under pmap each device holds part of the batch; dividing by the device-averaged weight sum
    makes the device average of these values (what the gradient pmean computes) equal the masked
    mean over the whole batch, so N devices give the numbers of one. The weights carry no gradient.
    """
    return monodepth.masked_mean(values, weights, axis_name)


def _reduce_sources(errors: jax.Array, avg: bool) -> jax.Array:
    """``[B, H, W, S]`` -> ``[B, H, W, 1]`` minimum (or mean) over source frames."""
    if avg:
        return jnp.mean(errors, axis=-1, keepdims=True)
    return jnp.min(errors, axis=-1, keepdims=True)


def _smoothness_terms(disps, pyramid, smoothness_weight):
    terms = {s: edge_aware_smoothness(disps[s], pyramid[s]) for s in sorted(disps)}
    weighted = sum(smoothness_weight * v / (2**s) for s, v in terms.items()) / len(terms)
    return terms, weighted


def teacher_loss(
    disps: Mapping[int, jax.Array],
    target: jax.Array,
    sources: Mapping[Hashable, jax.Array],
    poses: Mapping[Hashable, jax.Array],
    K: jax.Array,
    inv_K: jax.Array,
    pyramid: Mapping[int, jax.Array],
    *,
    key: jax.Array | None,
    min_depth: float = 0.1,
    max_depth: float = 100.0,
    ssim_weight: float = 0.85,
    smoothness_weight: float = 1e-3,
    automask: bool = True,
    avg_reprojection: bool = False,
    axis_name: str | None = None,
    automask_active: jax.Array | None = None,
    reduction: str = "masked_mean",
    pixel_weights: jax.Array | None = None,
    depth_frozen_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """The single-frame teacher's loss (module docstring).

    Args:
      disps: scale -> ``[B, H/2^s, W/2^s, 1]`` teacher disparity.
      target: ``[B, H, W, 3]`` un-augmented frame 0.
      sources: frame id -> ``[B, H, W, 3]`` un-augmented source frames.
      poses: frame id -> ``[B, 4, 4]`` target -> source transform (with gradient: trains pose).
      K, inv_K: ``[B, 4, 4]`` at H x W.
      pyramid: scale -> ``[B, H/2^s, W/2^s, 3]`` frame 0 for the smoothness term.
      key: per-sample keys (``[B]`` typed / ``[B, 2]`` raw) or one key for the tie-breaking noise.
      min_depth, max_depth, ssim_weight, smoothness_weight, automask, avg_reprojection: as in
        ``monodepth.monodepth_loss``.
      axis_name: pmap axis of a sharded batch (masked means over the global batch), or None.
      automask_active: scalar 0/1 (traced), the automask delay of ``monodepth.automask_delay``
        (config ``loss.automask_start_step``), or None for always on.
      reduction: "masked_mean" (the reference: mean of the reprojection error over the pixels it
        wins) or "min" (Monodepth2: mean of min(reprojection, identity) over all pixels).
      pixel_weights: ``[B, H, W, 1]`` weights of the per-pixel photometric error (small-object
        masking, piece-wise pose), or None.
      depth_frozen_mask: ``[B, H, W, 1]`` bool, pixels whose photometric error does not train
        the depth (as ``monodepth.monodepth_loss``), or None.

    Returns:
      ``(total, aux)``: ``aux`` has ``photometric/s{s}``, ``smoothness/s{s}``, ``photometric``,
      ``smoothness`` (weighted) and ``depths`` ``[S, B, H, W, 1]``.
    """
    if reduction not in ("masked_mean", "min"):
        raise ValueError(
            f"teacher_loss: reduction must be 'masked_mean' or 'min', got {reduction!r}"
        )
    scales = sorted(disps)
    _, height, width, _ = target.shape
    depths = full_res_depths(disps, height, width, min_depth, max_depth)
    warp_depths = depths
    if depth_frozen_mask is not None:
        warp_depths = jnp.where(depth_frozen_mask[None], jax.lax.stop_gradient(depths), depths)
    weights = None if pixel_weights is None else pixel_weights.astype(target.dtype)
    identity_per_source = identity = None
    if automask:
        identity_per_source = monodepth.automask_delay(
            monodepth.identity_errors(target, sources, ssim_weight), automask_active
        )
        identity = _reduce_sources(identity_per_source, avg_reprojection)

    def photometric(depth, scale_id):
        errors, _ = monodepth.reprojection_errors(
            depth, target, sources, poses, K, inv_K, ssim_weight
        )
        noise_key = None if key is None or not automask else monodepth._fold_in(key, scale_id)
        if reduction == "min":  # Monodepth2's per-pixel minimum itself, noise included
            per_pixel, _ = min_reprojection(errors, identity_per_source, noise_key,
                                            avg_reprojection)
            if weights is None:
                return jnp.mean(per_pixel)
            return global_masked_mean(per_pixel, weights, axis_name)
        reprojection = _reduce_sources(errors, avg_reprojection)
        if identity is None:
            if weights is None:
                return jnp.mean(reprojection)
            return global_masked_mean(reprojection, weights, axis_name)
        noisy = identity
        if noise_key is not None:
            noisy = identity + IDENTITY_NOISE_STD * tie_breaking_noise(
                noise_key, identity.shape, identity.dtype
            )
        keep = (reprojection <= noisy).astype(reprojection.dtype)
        if weights is not None:
            keep = keep * weights
        return global_masked_mean(reprojection, keep, axis_name)

    per_scale = jax.vmap(photometric)(warp_depths, jnp.asarray(scales, jnp.uint32))
    smooth, smooth_weighted = _smoothness_terms(disps, pyramid, smoothness_weight)
    aux: dict[str, Any] = {"depths": depths}
    for i, s in enumerate(scales):
        aux[f"photometric/s{s}"] = per_scale[i]
        aux[f"smoothness/s{s}"] = smooth[s]
    aux["photometric"] = jnp.mean(per_scale)
    aux["smoothness"] = smooth_weighted
    return aux["photometric"] + aux["smoothness"], aux


def nearest_upsample(x: jax.Array, height: int, width: int) -> jax.Array:
    """``[B, h, w, C]`` -> ``[B, H, W, C]`` by an integer factor (F.interpolate mode='nearest')."""
    _, h, w, _ = x.shape
    if height % h or width % w:
        raise ValueError(f"nearest_upsample: {h}x{w} does not divide {height}x{width}")
    return jnp.repeat(jnp.repeat(x, height // h, axis=1), width // w, axis=2)


def consistency_mask(
    confidence: jax.Array,
    cost_depth: jax.Array,
    teacher_depth: jax.Array,
    *,
    motion_masking: bool = True,
) -> jax.Array:
    """Where the cost volume is trusted: confident, and (motion masking) close to the teacher.

    Args:
      confidence: ``[B, h, w, 1]`` cost-volume confidence at the matching resolution.
      cost_depth: ``[B, h, w, 1]`` depth of the cheapest hypothesis.
      teacher_depth: ``[B, H, W, 1]`` teacher depth at scale 0 (full resolution).
      motion_masking: also require the two depths to differ by less than 2x (reference default).

    Returns:
      ``[B, H, W, 1]`` float in {0, 1}.
    """
    _, height, width, _ = teacher_depth.shape
    mask = nearest_upsample(confidence, height, width)
    if motion_masking:
        matching = nearest_upsample(cost_depth, height, width)
        agree = ((matching - teacher_depth) / teacher_depth < _MATCHING_RATIO_LIMIT) & (
            (teacher_depth - matching) / matching < _MATCHING_RATIO_LIMIT
        )
        mask = mask * agree.astype(mask.dtype)
    return jax.lax.stop_gradient(mask)


def multi_frame_loss(
    disps: Mapping[int, jax.Array],
    target: jax.Array,
    sources: Mapping[Hashable, jax.Array],
    poses: Mapping[Hashable, jax.Array],
    K: jax.Array,
    inv_K: jax.Array,
    pyramid: Mapping[int, jax.Array],
    teacher_depths: jax.Array,
    consistency: jax.Array,
    augmentation: jax.Array,
    *,
    min_depth: float = 0.1,
    max_depth: float = 100.0,
    ssim_weight: float = 0.85,
    smoothness_weight: float = 1e-3,
    avg_reprojection: bool = False,
    axis_name: str | None = None,
    pixel_weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """The multi-frame network's loss (module docstring).

    Args:
      disps, target, sources, K, inv_K, pyramid: as in ``teacher_loss``.
      poses: frame id -> ``[B, 4, 4]``; the caller detaches them (the pose net is not trained by
        the multi-frame loss).
      teacher_depths: ``[S, B, H, W, 1]`` teacher depth per scale (full resolution, detached here).
      consistency: ``[B, H, W, 1]`` from ``consistency_mask``.
      augmentation: ``[B]`` 1 where matching augmentation was applied (reprojection off).
      axis_name: pmap axis of a sharded batch (masked means over the global batch), or None.
      pixel_weights: ``[B, H, W, 1]`` weights of the photometric (reprojection) error, or None;
        the consistency term is not weighted.

    Returns:
      ``(total, aux)``: ``aux`` has ``photometric/s{s}``, ``consistency/s{s}``, ``smoothness/s{s}``,
      ``photometric``, ``consistency``, ``smoothness`` (weighted), ``reprojection_mask``
      ``[B, H, W, 1]`` and ``depths`` ``[S, B, H, W, 1]``.
    """
    scales = sorted(disps)
    _, height, width, _ = target.shape
    depths = full_res_depths(disps, height, width, min_depth, max_depth)
    teacher_depths = jax.lax.stop_gradient(teacher_depths)
    if teacher_depths.shape != depths.shape:
        raise ValueError(
            f"multi_frame_loss: teacher_depths {teacher_depths.shape} must match {depths.shape}"
        )
    reprojection_mask = consistency * (1.0 - augmentation.astype(consistency.dtype))[
        :, None, None, None
    ]
    fallback = 1.0 - reprojection_mask
    photometric_mask = reprojection_mask
    if pixel_weights is not None:
        photometric_mask = reprojection_mask * pixel_weights.astype(reprojection_mask.dtype)

    def per_scale(depth, teacher):
        errors, _ = monodepth.reprojection_errors(
            depth, target, sources, poses, K, inv_K, ssim_weight
        )
        reprojection = _reduce_sources(errors, avg_reprojection)
        photometric = global_masked_mean(reprojection, photometric_mask, axis_name)
        consistency_term = jnp.mean(jnp.abs(depth - teacher) * fallback)
        return photometric, consistency_term

    photometric, consistency_terms = jax.vmap(per_scale)(depths, teacher_depths)
    smooth, smooth_weighted = _smoothness_terms(disps, pyramid, smoothness_weight)
    aux: dict[str, Any] = {"depths": depths, "reprojection_mask": reprojection_mask}
    for i, s in enumerate(scales):
        aux[f"photometric/s{s}"] = photometric[i]
        aux[f"consistency/s{s}"] = consistency_terms[i]
        aux[f"smoothness/s{s}"] = smooth[s]
    aux["photometric"] = jnp.mean(photometric)
    aux["consistency"] = jnp.mean(consistency_terms)
    aux["smoothness"] = smooth_weighted
    return aux["photometric"] + aux["consistency"] + aux["smoothness"], aux


def update_depth_bins(
    min_bin: jax.Array,
    max_bin: jax.Array,
    teacher_depth: jax.Array,
    *,
    min_depth: float = 0.1,
    momentum: float = 0.99,
    margins: tuple[float, float] = (0.9, 1.1),
    axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """One EMA step of the adaptive depth range from the teacher's depth.

    The batch mean of the per-image minimum (maximum) depth, widened by ``margins`` (the minimum
    not below ``min_depth``), is blended in with weight ``1 - momentum``.

    Args:
      min_bin, max_bin: current trackers (scalars).
      teacher_depth: ``[B, H, W, 1]`` teacher depth at scale 0.
      min_depth: floor of the widened minimum (the network's min depth).
      momentum: EMA weight of the old value (0.99).
      margins: (0.9, 1.1).
      axis_name: pmap axis to average the batch statistics over (global batch mean).

    Returns:
      ``(new_min, new_max, stats)`` with the un-widened batch means in ``stats``.
    """
    depth = jax.lax.stop_gradient(teacher_depth)
    batch_min = jnp.mean(jnp.min(depth, axis=(1, 2, 3)))
    batch_max = jnp.mean(jnp.max(depth, axis=(1, 2, 3)))
    if axis_name is not None:
        batch_min = jax.lax.pmean(batch_min, axis_name)
        batch_max = jax.lax.pmean(batch_max, axis_name)
    target_min = jnp.maximum(min_depth, margins[0] * batch_min)
    target_max = margins[1] * batch_max
    new_min = momentum * min_bin + (1.0 - momentum) * target_min
    new_max = momentum * max_bin + (1.0 - momentum) * target_max
    return new_min, new_max, {"batch_min_depth": batch_min, "batch_max_depth": batch_max}
