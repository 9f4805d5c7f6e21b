"""Plane-sweep feature cost volume (ManyDepth's matching), as pure functions.

For every pixel of the current frame's feature map and every depth hypothesis ``d`` of a set of
fronto-parallel planes, the pixel is lifted to depth ``d``, moved into each lookup frame with the
relative pose and projected; the lookup features are sampled there (bilinear, zero padding) and
compared with the current features (L1, averaged over channels). The hypothesis with the lowest
cost is the matching depth.

Shapes (channels last, so the volume concatenates with features along the last axis):
  B batch, N lookup frames, D depth hypotheses, h x w matching resolution (1/4 of the input in
  ManyDepth, 48 x 160 at 640 x 192), C feature channels (64).

Validity rules (manydepth/networks/resnet_encoder.py ``match_features``, reproduced exactly):
  * a projection counts only when x in [border, w - border] and y in [border, h - border]
    (border = 2) and the current pixel is not within ``border`` pixels of the edge (ResNet's zero
    padding makes features there unreliable);
  * a lookup frame whose pose sums to zero is skipped (missing frame / zero-cost-volume
    augmentation);
  * costs of several frames are summed and divided by the number of frames with a cost > 0;
  * an entry that ends at exactly 0 is "missing" and takes the per-pixel maximum over bins;
  * a pixel is confident only if none of its D entries is missing.
Points that land behind the lookup camera are not rejected, as in the reference (with the
forward motion of driving data the previous camera sees every hypothesis in front of it).

Memory: the warped lookup features are ``B x D x h x w x C`` floats (12 x 96 x 48 x 160 x 64 x 4 B
= 2.3 GB at the reference size). ``bins_per_chunk`` sweeps the bins in chunks under ``lax.map`` so
at most ``B x bins_per_chunk x h x w x C`` exist at once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jdepth import geometry

BINNINGS = ("linear", "inverse")
_COUNT_EPS = 1e-7  # the reference's denominator guard
_VIZ_MISSING_COST = 100.0  # entries that stay 0 never win the argmin (reference value)


def depth_bins(min_depth, max_depth, num_bins: int, binning: str = "linear") -> jax.Array:
    """The depth hypotheses, in increasing depth order.

    Args:
      min_depth, max_depth: scalars (may be traced: ManyDepth's adaptive range lives in the state).
      num_bins: D.
      binning: ``'linear'`` (uniform in depth, the reference default) or ``'inverse'`` (uniform in
        1/depth, denser near the camera).

    Returns:
      ``[D]`` float32.
    """
    if binning not in BINNINGS:
        raise ValueError(
            f"cost_volume.depth_bins: binning must be one of {BINNINGS}, got {binning!r}"
        )
    lo = jnp.asarray(min_depth, jnp.float32)
    hi = jnp.asarray(max_depth, jnp.float32)
    if binning == "linear":
        return jnp.linspace(lo, hi, num_bins)
    return (1.0 / jnp.linspace(1.0 / hi, 1.0 / lo, num_bins))[::-1]


def hypothesis_pixels(
    bins: jax.Array, K: jax.Array, inv_K: jax.Array, T: jax.Array, height: int, width: int
) -> jax.Array:
    """Where every (hypothesis, pixel) of the current frame lands in a lookup frame.

    Args:
      bins: ``[D]`` depths.
      K, inv_K: ``[B, 4, 4]`` intrinsics at the matching resolution and their inverse.
      T: ``[B, 4, 4]`` current -> lookup transform.
      height, width: h, w.

    Returns:
      ``[B, D, h, w, 2]`` (x, y) pixel coordinates in the lookup frame.
    """
    batch = K.shape[0]

    def one_plane(depth):
        plane = jnp.full((batch, height, width, 1), depth, jnp.float32)
        pix, _ = geometry.project(geometry.backproject(plane, inv_K), K, T)
        return pix

    return jnp.moveaxis(jax.vmap(one_plane)(bins), 0, 1)


def valid_projections(pix: jax.Array, height: int, width: int, border: int = 2) -> jax.Array:
    """ManyDepth's validity rule for ``[B, D, h, w, 2]`` projections -> ``[B, D, h, w]`` bool."""
    x, y = pix[..., 0], pix[..., 1]
    inside = (x >= border) & (x <= width - border) & (y >= border) & (y <= height - border)
    rows = jnp.arange(height)
    cols = jnp.arange(width)
    current = ((rows >= border) & (rows < height - border))[:, None] & (
        (cols >= border) & (cols < width - border)
    )[None, :]
    return inside & current


def frame_costs(
    current: jax.Array,
    lookup: jax.Array,
    T: jax.Array,
    K: jax.Array,
    inv_K: jax.Array,
    bins: jax.Array,
    border: int = 2,
) -> jax.Array:
    """Masked L1 feature differences against ONE lookup frame.

    Args:
      current: ``[B, h, w, C]`` current-frame features.
      lookup: ``[B, h, w, C]`` lookup-frame features.
      T: ``[B, 4, 4]`` current -> lookup; a pose summing to 0 marks the frame as missing.
      K, inv_K: ``[B, 4, 4]`` at h x w.
      bins: ``[D]``.
      border: see ``valid_projections``.

    Returns:
      ``[B, h, w, D]``: mean over C of |warped - current|, 0 where invalid or the frame is missing.
    """
    batch, height, width, channels = current.shape
    num_bins = bins.shape[0]
    pix = hypothesis_pixels(bins, K, inv_K, T, height, width)
    # Bins are folded into the rows so one bilinear gather serves the whole sweep.
    warped = geometry.bilinear_sample(
        lookup, pix.reshape(batch, num_bins * height, width, 2), padding="zeros"
    ).reshape(batch, num_bins, height, width, channels)
    diff = jnp.mean(jnp.abs(warped - current[:, None]), axis=-1)
    present = jnp.sum(T, axis=(1, 2)) != 0
    keep = valid_projections(pix, height, width, border) & present[:, None, None, None]
    return jnp.moveaxis(jnp.where(keep, diff, 0.0), 1, -1)


def cost_volume(
    current: jax.Array,
    lookups: jax.Array,
    poses: jax.Array,
    K: jax.Array,
    inv_K: jax.Array,
    bins: jax.Array,
    *,
    border: int = 2,
    bins_per_chunk: int | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """ManyDepth's cost volume with its missing-value and confidence rules (module docstring).

    Args:
      current: ``[B, h, w, C]`` current-frame matching features.
      lookups: ``[B, N, h, w, C]`` lookup-frame features.
      poses: ``[B, N, 4, 4]`` current -> lookup transforms (all-zero: frame skipped).
      K, inv_K: ``[B, 4, 4]`` intrinsics at h x w and their inverse.
      bins: ``[D]`` depth hypotheses (increasing).
      border: validity border in pixels (2 in the reference).
      bins_per_chunk: sweep this many bins at a time (must divide D) to bound memory; None: all.

    Returns:
      ``(cost [B, h, w, D], aux)`` where ``cost`` has missing entries replaced by the per-pixel
      maximum, and ``aux`` holds ``missing`` ``[B, h, w, D]`` bool, ``confidence`` ``[B, h, w, 1]``
      float (1 where no bin is missing), ``argmin`` ``[B, h, w]`` int32 and ``lowest_cost_depth``
      ``[B, h, w, 1]`` (depth of the cheapest bin; entries that stayed 0 never win).
    """
    _check_inputs(current, lookups, poses, K, inv_K, bins)
    num_bins = bins.shape[0]

    def sweep(chunk_bins):
        total = 0.0
        count = 0.0
        for n in range(lookups.shape[1]):
            diff = frame_costs(current, lookups[:, n], poses[:, n], K, inv_K, chunk_bins, border)
            total = total + diff
            count = count + (diff > 0).astype(diff.dtype)
        return total / (count + _COUNT_EPS)

    if bins_per_chunk is None or bins_per_chunk >= num_bins:
        cost = sweep(bins)
    else:
        if num_bins % bins_per_chunk:
            raise ValueError(
                f"cost_volume: bins_per_chunk={bins_per_chunk} must divide the {num_bins} bins"
            )
        chunks = jax.lax.map(sweep, bins.reshape(-1, bins_per_chunk))  # [n, B, h, w, chunk]
        cost = jnp.moveaxis(chunks, 0, -2).reshape(current.shape[:3] + (num_bins,))

    missing = cost == 0
    cost = jnp.where(missing, jnp.max(cost, axis=-1, keepdims=True), cost)
    confidence = jnp.all(~missing, axis=-1, keepdims=True).astype(cost.dtype)
    argmin = jnp.argmin(jnp.where(cost == 0, _VIZ_MISSING_COST, cost), axis=-1).astype(jnp.int32)
    aux = {
        "missing": missing,
        "confidence": confidence,
        "argmin": argmin,
        "lowest_cost_depth": bins[argmin][..., None],
    }
    return cost, aux


def _check_inputs(current, lookups, poses, K, inv_K, bins) -> None:
    if current.ndim != 4:
        raise ValueError(f"cost_volume: current must be [B, h, w, C], got {current.shape}")
    batch = current.shape[0]
    if lookups.ndim != 5 or lookups.shape[0] != batch or lookups.shape[2:] != current.shape[1:]:
        raise ValueError(
            f"cost_volume: lookups must be [B, N, h, w, C] matching current {current.shape}, got "
            f"{lookups.shape}"
        )
    if poses.shape != (batch, lookups.shape[1], 4, 4):
        raise ValueError(
            f"cost_volume: poses must be [{batch}, {lookups.shape[1]}, 4, 4], got {poses.shape}"
        )
    for name, matrix in (("K", K), ("inv_K", inv_K)):
        if matrix.shape != (batch, 4, 4):
            raise ValueError(f"cost_volume: {name} must be [{batch}, 4, 4], got {matrix.shape}")
    if bins.ndim != 1:
        raise ValueError(f"cost_volume: bins must be [D], got {bins.shape}")
