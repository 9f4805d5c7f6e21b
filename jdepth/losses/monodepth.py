"""The Monodepth2 self-supervised objective, as one pure function built from reusable pieces.

"Full-res multiscale" (Monodepth2's default): the disparity of every decoder scale is upsampled to
the input resolution before conversion to depth, the sources are warped and compared with the
target at full resolution, and only the smoothness term sees each scale's native disparity.

Pieces other objectives reuse with their own masks and depths (ManyDepth, ISSL, piece-wise pose):
``upsample_disp``, ``identity_errors``, ``warp_sources``, ``reprojection_errors``, ``masked_mean``
and ``photometric_loss_for_depth``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jdepth import geometry
from jdepth.geometry import upsample_disp
from jdepth.losses.photometric import min_reprojection, photometric_error
from jdepth.losses.smoothness import edge_aware_smoothness

_MASKED_MEAN_EPS = 1e-7


# Added to the identity errors while the automask is switched off: larger than any photometric error
# (which lies in [0, 1]), so a warped source always wins.
_AUTOMASK_OFF = 1e3


def automask_delay(identity: jax.Array | None, active: jax.Array | None) -> jax.Array | None:
    """The identity errors, or errors that never win the minimum while ``active`` is 0.

    From scratch the automask can trap the pose net in a wrong direction of motion (a lateral move
    that explains the near side of the street while the automask discards the rest); training
    the first steps without it lets the pose net find the forward motion first (configs/demo.py).

    Args:
      identity: ``[B, H, W, S]`` from ``identity_errors``, or None (automask disabled).
      active: scalar 0/1, or None (always active).
    """
    if identity is None or active is None:
        return identity
    return identity + (1.0 - jnp.asarray(active, identity.dtype)) * _AUTOMASK_OFF


def identity_errors(
    target: jax.Array, sources: Mapping[Hashable, jax.Array], ssim_weight: float = 0.85
) -> jax.Array:
    """Photometric error of each *unwarped* source against the target (the automask baseline).

    Args:
      target: ``[B, H, W, 3]``.
      sources: frame id -> ``[B, H, W, 3]``; channel order follows the mapping's iteration order.
      ssim_weight: SSIM weight of the photometric error.

    Returns:
      ``[B, H, W, S]``.
    """
    return jnp.concatenate(
        [photometric_error(source, target, ssim_weight) for source in sources.values()], axis=-1
    )


def warp_sources(
    depth: jax.Array,
    sources: Mapping[Hashable, jax.Array],
    poses: Mapping[Hashable, jax.Array],
    K: jax.Array,
    inv_K: jax.Array,
    padding: str = "border",
) -> dict[Hashable, jax.Array]:
    """Synthesises the target view from every source frame.

    Args:
      depth: ``[B, H, W, 1]`` target depth.
      sources: frame id -> ``[B, H, W, C]`` source image.
      poses: frame id -> ``[B, 4, 4]`` target->source transform (or ``[B, H, W, 4, 4]`` per pixel).
      K: ``[B, 4, 4]`` intrinsics at ``H x W``.
      inv_K: ``[B, 4, 4]`` their inverse.
      padding: ``'border'`` (Monodepth2) or ``'zeros'``.

    Returns:
      frame id -> ``[B, H, W, C]`` warped source, in the order of ``sources``.
    """
    _check_same_frames(sources, poses)
    return {
        frame: geometry.inverse_warp(source, depth, poses[frame], K, inv_K, padding)[0]
        for frame, source in sources.items()
    }


def reprojection_errors(
    depth: jax.Array,
    target: jax.Array,
    sources: Mapping[Hashable, jax.Array],
    poses: Mapping[Hashable, jax.Array],
    K: jax.Array,
    inv_K: jax.Array,
    ssim_weight: float = 0.85,
    padding: str = "border",
) -> tuple[jax.Array, dict[Hashable, jax.Array]]:
    """Per-pixel photometric error of every warped source against the target.

    Args:
      depth: ``[B, H, W, 1]`` target depth.
      target: ``[B, H, W, 3]``.
      sources, poses, K, inv_K, padding: as in ``warp_sources``.
      ssim_weight: SSIM weight of the photometric error.

    Returns:
      ``(errors [B, H, W, S], warped)`` with ``warped`` frame id -> ``[B, H, W, 3]``; channel ``i``
      of ``errors`` belongs to the ``i``-th frame of ``sources``.
    """
    warped = warp_sources(depth, sources, poses, K, inv_K, padding)
    errors = jnp.concatenate(
        [photometric_error(image, target, ssim_weight) for image in warped.values()], axis=-1
    )
    return errors, warped


def masked_mean(
    values: jax.Array, weights: jax.Array | None = None, axis_name: str | None = None
) -> jax.Array:
    """Mean of ``values``, or ``sum(w * v) / (sum(w) + 1e-7)`` when ``weights`` are given.

    Args:
      values: ``[B, H, W, 1]`` per-pixel loss.
      weights: ``[B, H, W, 1]`` non-negative weights, or None.
      axis_name: pmap axis the batch is sharded over, or None. With weights, the denominator is
        then the device average of the weight sums: a device's value, averaged over devices (the
        gradient pmean), is the masked mean of the global batch, so N devices give the numbers of
        one. (A per-device ``sum(w)`` would weigh a device's pixels by its own mask count.) The
        weights then carry no gradient into the denominator.

    Returns:
      Scalar.
    """
    if weights is None:
        return jnp.mean(values)
    if weights.shape != values.shape:
        raise ValueError(
            f"monodepth.masked_mean: weights {weights.shape} must match values {values.shape}"
        )
    if axis_name is None:
        return jnp.sum(weights * values) / (jnp.sum(weights) + _MASKED_MEAN_EPS)
    total = jax.lax.pmean(jnp.sum(jax.lax.stop_gradient(weights)), axis_name)
    return jnp.sum(weights * values) / (total + _MASKED_MEAN_EPS)


def photometric_loss_for_depth(
    depth: jax.Array,
    target: jax.Array,
    sources: Mapping[Hashable, jax.Array],
    poses: Mapping[Hashable, jax.Array],
    K: jax.Array,
    inv_K: jax.Array,
    *,
    identity: jax.Array | None = None,
    noise_key: jax.Array | None = None,
    ssim_weight: float = 0.85,
    avg_reprojection: bool = False,
    pixel_weights: jax.Array | None = None,
    padding: str = "border",
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """Min-reprojection photometric loss of one full-resolution depth map.

    Args:
      depth: ``[B, H, W, 1]`` target depth.
      target: ``[B, H, W, 3]``.
      sources, poses, K, inv_K, padding: as in ``warp_sources``.
      identity: ``[B, H, W, S]`` from ``identity_errors`` to enable the automask, or None.
      noise_key: PRNG key for the identity tie-breaking noise, or None for none.
      ssim_weight: SSIM weight of the photometric error.
      avg_reprojection: average over sources instead of the per-pixel minimum.
      pixel_weights: ``[B, H, W, 1]`` weights of the per-pixel loss in the mean, or None.
      axis_name: pmap axis of a sharded batch (the weighted mean is global, `masked_mean`).

    Returns:
      ``(loss, aux)``: scalar loss and ``aux`` with ``'per_pixel'`` ``[B, H, W, 1]``,
      ``'identity_selection'`` ``[B, H, W, 1]`` (1 = a warped source wins), ``'reprojection'``
      ``[B, H, W, S]`` and ``'warped'`` (frame id -> ``[B, H, W, 3]``).
    """
    errors, warped = reprojection_errors(
        depth, target, sources, poses, K, inv_K, ssim_weight, padding
    )
    per_pixel, selection = min_reprojection(errors, identity, noise_key, avg_reprojection)
    aux = {
        "per_pixel": per_pixel,
        "identity_selection": selection["identity_selection"],
        "reprojection": errors,
        "warped": warped,
    }
    return masked_mean(per_pixel, pixel_weights, axis_name), aux


def monodepth_loss(
    disps: Mapping[int, jax.Array],
    target: jax.Array,
    sources: Mapping[Hashable, jax.Array],
    poses: Mapping[Hashable, jax.Array],
    K: jax.Array,
    inv_K: jax.Array,
    target_pyramid: Mapping[int, jax.Array],
    *,
    key: jax.Array | None,
    min_depth: float = 0.1,
    max_depth: float = 100.0,
    ssim_weight: float = 0.85,
    smoothness_weight: float = 1e-3,
    automask: bool = True,
    avg_reprojection: bool = False,
    pixel_weights: jax.Array | None = None,
    automask_active: jax.Array | None = None,
    depth_frozen_mask: jax.Array | None = None,
    depth_normalization: bool = False,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """Monodepth2's training objective (full-res multiscale, min reprojection, automask).

    For each scale ``s``: ``disps[s]`` is upsampled to ``H x W``, converted to depth, every source
    is warped into the target with border padding, and the per-pixel minimum over warped and
    (with ``automask``) unwarped errors is averaged (``pixel_weights``-weighted if given). The
    smoothness uses the native ``disps[s]`` against ``target_pyramid[s]`` with weight
    ``smoothness_weight / 2**s``. ``total = sum_s(photo_s + weighted smooth_s) / num_scales``.

    All images must be the un-augmented colour frames (the networks see the augmented ones).

    Args:
      disps: scale -> ``[B, H/2^s, W/2^s, 1]`` sigmoid disparity at its native resolution.
      target: ``[B, H, W, 3]`` frame 0 at full resolution.
      sources: frame id -> ``[B, H, W, 3]`` source frames (e.g. -1 and +1).
      poses: frame id -> ``[B, 4, 4]`` target->source transform ``T(0 -> f)``, or a per-pixel
        ``[B, H, W, 4, 4]`` one (piece-wise rigid motion, jdepth/training/piecewise.py); every
        scale is warped at ``H x W``, so one full-resolution field serves all scales.
      K: ``[B, 4, 4]`` intrinsics at ``H x W``.
      inv_K: ``[B, 4, 4]`` their inverse.
      target_pyramid: scale -> ``[B, H/2^s, W/2^s, 3]`` frame 0 resized to each scale.
      key: PRNG key for the automask tie-breaking noise (folded with the scale), or one key per
        sample (``[B]`` typed / ``[B, 2]`` raw) so the noise does not depend on how the batch is
        split over devices, or None for no noise.
      min_depth: depth at disparity 1.
      max_depth: depth at disparity 0.
      ssim_weight: SSIM weight in the photometric error (L1 gets the rest).
      smoothness_weight: smoothness weight at scale 0.
      automask: compete with the identity (unwarped) errors.
      avg_reprojection: average over sources instead of the minimum.
      pixel_weights: ``[B, H, W, 1]`` weights of the per-pixel photometric loss, or None.
      automask_active: scalar, 0 or 1 (traced: the step compiles once), or None for always on.
        While 0 the identity errors never win the minimum (``automask_delay``).
      depth_frozen_mask: ``[B, H, W, 1]`` bool, pixels whose photometric error sends no gradient
        into the depth (piece-wise pose: `piecewise.instance_depth_gradient`), or None. Their
        error still trains the poses; the smoothness term is unchanged.
      depth_normalization: warp with each scale's depth divided by its per-image mean (Wang et
        al., CVPR 2018, "Learning Depth from Monocular Videos using Direct Methods"; not in
        Monodepth2). The photometric loss is invariant to scaling depth and translation together;
        without the normalisation that direction is free, and the depth net can shrink its depth
        (towards `min_depth`) to grow the warps, the collapse of README "When training
        collapses". With it, the translation is in units of the mean scene depth.
      axis_name: pmap axis of a sharded batch, or None: with ``pixel_weights`` the weighted mean
        is over the global batch (`masked_mean`).

    Returns:
      ``(total, aux)``. Scalars in ``aux``: ``'photometric/s{s}'`` and ``'smoothness/s{s}'``
      (unweighted), ``'photometric'`` (mean over scales) and ``'smoothness'`` (weighted, divided by
      the number of scales), so ``total = photometric + smoothness``. Images at the finest scale:
      ``'identity_selection'`` ``[B, H, W, 1]`` (1 = a warped source wins), ``'warped/{f}'``
      ``[B, H, W, 3]`` per source, ``'depth'`` ``[B, H, W, 1]``.
    """
    scales = sorted(disps)
    _check_inputs(disps, target, sources, poses, K, inv_K, target_pyramid, pixel_weights)
    _, height, width, _ = target.shape
    identity = identity_errors(target, sources, ssim_weight) if automask else None
    identity = automask_delay(identity, automask_active)

    # All scales share the full-resolution target, sources and poses, so one vmapped photometric
    # graph serves every scale: a quarter of the compile time of a Python loop over scales, at the
    # same run time. (Sources stay a Python loop: vmapping over them batches the gather operand,
    # which JAX lowers with materialised index arrays, and that ran ~1.8x slower.)
    depths = jnp.stack([
        geometry.disp_to_depth(upsample_disp(disps[s], height, width), min_depth, max_depth)[1]
        for s in scales
    ])
    if depth_normalization:
        depths = depths / jnp.mean(depths, axis=(2, 3, 4), keepdims=True)
    if depth_frozen_mask is not None:
        depths = jnp.where(depth_frozen_mask[None], jax.lax.stop_gradient(depths), depths)
    scale_ids = jnp.asarray(scales, jnp.uint32)

    def photometric_at_scale(depth: jax.Array, scale_id: jax.Array):
        noise_key = None if key is None or not automask else _fold_in(key, scale_id)
        return photometric_loss_for_depth(
            depth,
            target,
            sources,
            poses,
            K,
            inv_K,
            identity=identity,
            noise_key=noise_key,
            ssim_weight=ssim_weight,
            avg_reprojection=avg_reprojection,
            pixel_weights=pixel_weights,
            axis_name=axis_name,
        )

    photometric_per_scale, photo_aux = jax.vmap(photometric_at_scale)(depths, scale_ids)

    aux: dict[str, Any] = {}
    smoothness_sum = 0.0
    for index, scale in enumerate(scales):
        smoothness = edge_aware_smoothness(disps[scale], target_pyramid[scale])
        smoothness_sum = smoothness_sum + smoothness_weight * smoothness / (2**scale)
        aux[f"photometric/s{scale}"] = photometric_per_scale[index]
        aux[f"smoothness/s{scale}"] = smoothness
    aux["identity_selection"] = photo_aux["identity_selection"][0]
    aux["depth"] = depths[0]
    for frame, warped in photo_aux["warped"].items():
        aux[f"warped/{frame}"] = warped[0]

    num_scales = len(scales)
    aux["photometric"] = jnp.mean(photometric_per_scale)
    aux["smoothness"] = smoothness_sum / num_scales
    total = aux["photometric"] + aux["smoothness"]
    return total, aux


def _fold_in(key: jax.Array, data) -> jax.Array:
    """`jax.random.fold_in` for one key or a batch of per-sample keys (see tie_breaking_noise)."""
    batched = key.ndim == 2 if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else (
        key.ndim == 1)
    if batched:
        return jax.vmap(lambda k: jax.random.fold_in(k, data))(key)
    return jax.random.fold_in(key, data)


def _check_same_frames(sources: Mapping[Hashable, Any], poses: Mapping[Hashable, Any]) -> None:
    if not sources:
        raise ValueError("monodepth: sources is empty; at least one source frame is needed")
    missing = [frame for frame in sources if frame not in poses]
    if missing:
        raise ValueError(
            f"monodepth: no pose for source frame(s) {missing}; poses has {list(poses)}"
        )


def _check_inputs(
    disps: Mapping[int, jax.Array],
    target: jax.Array,
    sources: Mapping[Hashable, jax.Array],
    poses: Mapping[Hashable, jax.Array],
    K: jax.Array,
    inv_K: jax.Array,
    target_pyramid: Mapping[int, jax.Array],
    pixel_weights: jax.Array | None,
) -> None:
    """Raises ValueError naming the argument whose shape breaks the contract (shapes are static)."""
    if not disps:
        raise ValueError("monodepth_loss: disps is empty")
    if target.ndim != 4:
        raise ValueError(f"monodepth_loss: target must be [B, H, W, 3], got {target.shape}")
    batch, height, width, _ = target.shape
    _check_same_frames(sources, poses)
    for frame, source in sources.items():
        if source.shape != target.shape:
            raise ValueError(
                f"monodepth_loss: sources[{frame}] has shape {source.shape}, expected the target "
                f"shape {target.shape}"
            )
    for frame, pose in poses.items():
        if pose.shape not in ((batch, 4, 4), (batch, height, width, 4, 4)):
            raise ValueError(
                f"monodepth_loss: poses[{frame}] must be [{batch}, 4, 4] or [{batch}, {height}, "
                f"{width}, 4, 4], got {pose.shape}"
            )
    for name, matrix in (("K", K), ("inv_K", inv_K)):
        if matrix.shape != (batch, 4, 4):
            raise ValueError(f"monodepth_loss: {name} must be [{batch}, 4, 4], got {matrix.shape}")
    for scale, disp in disps.items():
        if disp.ndim != 4 or disp.shape[0] != batch or disp.shape[-1] != 1:
            raise ValueError(
                f"monodepth_loss: disps[{scale}] must be [{batch}, h, w, 1], got {disp.shape}"
            )
        if scale not in target_pyramid:
            raise ValueError(
                f"monodepth_loss: target_pyramid has no scale {scale} (has {list(target_pyramid)})"
            )
        if target_pyramid[scale].shape[:3] != disp.shape[:3]:
            raise ValueError(
                f"monodepth_loss: target_pyramid[{scale}] {target_pyramid[scale].shape} does not "
                f"match disps[{scale}] {disp.shape}"
            )
    if pixel_weights is not None and pixel_weights.shape != (batch, height, width, 1):
        raise ValueError(
            f"monodepth_loss: pixel_weights must be [{batch}, {height}, {width}, 1], got "
            f"{pixel_weights.shape}"
        )


def monodepth_loss_v1(
    disps: Mapping[int, jax.Array],
    target_pyramid: Mapping[int, jax.Array],
    source_pyramids: Mapping[Hashable, Mapping[int, jax.Array]],
    poses: Mapping[Hashable, jax.Array],
    K_pyramid: jax.Array,
    inv_K_pyramid: jax.Array,
    *,
    key: jax.Array | None,
    min_depth: float = 0.1,
    max_depth: float = 100.0,
    ssim_weight: float = 0.85,
    smoothness_weight: float = 1e-3,
    automask: bool = True,
    avg_reprojection: bool = False,
    automask_active: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """Monodepth2's ``--v1_multiscale`` objective: each scale is warped at its own resolution.

    The coarse scales compare coarse images, so a pose or depth that is many full-resolution pixels
    off still gets a gradient pointing the right way (the bilinear warp only "sees" one pixel
    around each sample). That widens the basin of convergence when training from scratch.

    Args:
      disps: scale -> ``[B, H/2^s, W/2^s, 1]`` sigmoid disparity.
      target_pyramid: scale -> frame 0 ``[B, H/2^s, W/2^s, 3]``.
      source_pyramids: frame id -> scale -> source frame at that scale.
      poses: frame id -> ``[B, 4, 4]`` target->source transform.
      K_pyramid, inv_K_pyramid: ``[B, S, 4, 4]`` intrinsics per scale.
      key, min_depth, max_depth, ssim_weight, smoothness_weight, automask, avg_reprojection,
        automask_active: as in ``monodepth_loss``.

    Returns:
      ``(total, aux)`` with the same scalar keys as ``monodepth_loss``.
    """
    scales = sorted(disps)
    aux: dict[str, Any] = {}
    photometric_sum, smoothness_sum = 0.0, 0.0
    for scale in scales:
        _, depth = geometry.disp_to_depth(disps[scale], min_depth, max_depth)
        target = target_pyramid[scale]
        sources = {f: pyramid[scale] for f, pyramid in source_pyramids.items()}
        identity = identity_errors(target, sources, ssim_weight) if automask else None
        identity = automask_delay(identity, automask_active)
        noise_key = None if key is None or not automask else _fold_in(key, scale)
        photometric, _ = photometric_loss_for_depth(
            depth, target, sources, poses, K_pyramid[:, scale], inv_K_pyramid[:, scale],
            identity=identity, noise_key=noise_key, ssim_weight=ssim_weight,
            avg_reprojection=avg_reprojection,
        )
        smoothness = edge_aware_smoothness(disps[scale], target)
        photometric_sum = photometric_sum + photometric
        smoothness_sum = smoothness_sum + smoothness_weight * smoothness / (2**scale)
        aux[f"photometric/s{scale}"] = photometric
        aux[f"smoothness/s{scale}"] = smoothness
    aux["photometric"] = photometric_sum / len(scales)
    aux["smoothness"] = smoothness_sum / len(scales)
    return aux["photometric"] + aux["smoothness"], aux
