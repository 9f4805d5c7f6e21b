"""Photometric reconstruction error and per-pixel minimum reprojection (Monodepth2).

All maps are NHWC. The SSIM is Monodepth2's, not the library one: a 3x3 box filter on
reflection-padded images (tf.image.ssim / dm-pix use an 11x11 Gaussian, which gives different
values). ``ssim_loss`` has a hand-written VJP, so it is reverse-mode differentiable only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
# Std of the tie-breaking noise added to the identity (unwarped) error, as Monodepth2.
IDENTITY_NOISE_STD = 1e-5


_REFLECT_1 = ((0, 0), (1, 1), (1, 1), (0, 0))


def _box_sum_3x3(padded: jax.Array) -> jax.Array:
    """3x3 sums over the valid windows of a ``[B, H+2, W+2, C]`` array -> ``[B, H, W, C]``.

    Separable shifted sums fuse with the surrounding elementwise SSIM algebra on CPU, where
    ``reduce_window`` is a separate pass per statistic.
    """
    height = padded.shape[1] - 2
    width = padded.shape[2] - 2
    rows = padded[:, 0:height] + padded[:, 1 : height + 1] + padded[:, 2 : height + 2]
    return rows[:, :, 0:width] + rows[:, :, 1 : width + 1] + rows[:, :, 2 : width + 2]


def _reflect_box_mean_adjoint(cotangent: jax.Array) -> jax.Array:
    """Adjoint of ``x -> box_sum(reflect_pad(x)) / 9`` for ``[B, H, W, C]`` arrays."""
    _, height, width, _ = cotangent.shape
    spread = _box_sum_3x3(jnp.pad(cotangent / 9.0, ((0, 0), (2, 2), (2, 2), (0, 0))))
    # Reflection padding copied row 1 into padded row 0 and row H-2 into padded row H+1.
    rows = spread[:, 1 : height + 1]
    rows = rows.at[:, 1].add(spread[:, 0]).at[:, height - 2].add(spread[:, height + 1])
    cols = rows[:, :, 1 : width + 1]
    return cols.at[:, :, 1].add(rows[:, :, 0]).at[:, :, width - 2].add(rows[:, :, width + 1])


def _ssim_terms(x: jax.Array, y: jax.Array) -> tuple[jax.Array, ...]:
    """Local means and the four SSIM factors ``A B / (C D)`` of Monodepth2's SSIM."""
    x_pad = jnp.pad(x, _REFLECT_1, mode="reflect")
    y_pad = jnp.pad(y, _REFLECT_1, mode="reflect")
    mu_x = _box_sum_3x3(x_pad) / 9.0
    mu_y = _box_sum_3x3(y_pad) / 9.0
    sigma_x = _box_sum_3x3(x_pad * x_pad) / 9.0 - mu_x * mu_x
    sigma_y = _box_sum_3x3(y_pad * y_pad) / 9.0 - mu_y * mu_y
    sigma_xy = _box_sum_3x3(x_pad * y_pad) / 9.0 - mu_x * mu_y
    luminance_num = 2.0 * mu_x * mu_y + SSIM_C1
    structure_num = 2.0 * sigma_xy + SSIM_C2
    luminance_den = mu_x * mu_x + mu_y * mu_y + SSIM_C1
    structure_den = sigma_x + sigma_y + SSIM_C2
    return mu_x, mu_y, luminance_num, structure_num, luminance_den, structure_den


# A hand-written VJP: autodiff of the five box filters keeps every padded intermediate alive and
# ran about 2x slower on CPU (12x192x640x3) than recomputing the statistics in the backward pass.
@jax.custom_vjp
def ssim_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """Monodepth2's per-pixel, per-channel SSIM dissimilarity.

    Both images are reflection-padded by one pixel; means, variances and covariance are 3x3 box
    averages (``sigma^2 = E[x^2] - E[x]^2``), with C1 = 0.01^2 and C2 = 0.03^2. Differentiable
    (reverse mode) with respect to both images.

    Args:
      x: ``[B, H, W, C]`` image, ``H, W >= 2``.
      y: ``[B, H, W, C]`` image.

    Returns:
      ``[B, H, W, C]`` map of ``clip((1 - SSIM) / 2, 0, 1)``.
    """
    _check_ssim_inputs(x, y)
    _, _, a, b, c, d = _ssim_terms(x, y)
    return jnp.clip((1.0 - a * b / (c * d)) / 2.0, 0.0, 1.0)


def _ssim_loss_fwd(x: jax.Array, y: jax.Array):
    return ssim_loss(x, y), (x, y)


def _ssim_loss_bwd(residuals, cotangent: jax.Array):
    x, y = residuals
    mu_x, mu_y, a, b, c, d = _ssim_terms(x, y)
    ssim = a * b / (c * d)
    loss = (1.0 - ssim) / 2.0
    # d loss / d ssim = -1/2 inside the clip; every partial below is ssim * d(log ssim).
    g = jnp.where((loss > 0.0) & (loss < 1.0), -0.5 * cotangent, 0.0) * ssim
    # b = 2 sigma_xy + C2 crosses zero on anti-correlated patches, where g / b is 0 / 0. There
    # (exactly b == 0, seen once in a training run) g / b is taken in its limit
    # d loss / d ssim * a / (c d); elsewhere the expression (and its rounding) is unchanged.
    zero_b = b == 0.0
    safe_b = jnp.where(zero_b, 1.0, b)
    limit = jnp.where((loss > 0.0) & (loss < 1.0), -0.5 * cotangent, 0.0) * a / (c * d)
    g_second_moment = -g / d  # for E[x^2] and E[y^2]
    g_cross = 2.0 * jnp.where(zero_b, limit, g / safe_b)  # for E[xy]
    g_mu_x = jnp.where(
        zero_b,
        2.0 * (g * (mu_y / a - mu_x / c + mu_x / d) - mu_y * limit),
        2.0 * g * (mu_y / a - mu_x / c + mu_x / d - mu_y / safe_b),
    )
    g_mu_y = jnp.where(
        zero_b,
        2.0 * (g * (mu_x / a - mu_y / c + mu_y / d) - mu_x * limit),
        2.0 * g * (mu_x / a - mu_y / c + mu_y / d - mu_x / safe_b),
    )
    adjoint_second = _reflect_box_mean_adjoint(g_second_moment)
    adjoint_cross = _reflect_box_mean_adjoint(g_cross)
    grad_x = _reflect_box_mean_adjoint(g_mu_x) + 2.0 * x * adjoint_second + y * adjoint_cross
    grad_y = _reflect_box_mean_adjoint(g_mu_y) + 2.0 * y * adjoint_second + x * adjoint_cross
    return grad_x.astype(x.dtype), grad_y.astype(y.dtype)


# The backward runs under its own name: JAX gives its ops the primal call site's source
# location, so without it a profile (jdepth/training/hlo_profile.py) cannot tell them apart.
ssim_loss.defvjp(_ssim_loss_fwd, jax.named_call(_ssim_loss_bwd))


def _check_ssim_inputs(x: jax.Array, y: jax.Array) -> None:
    if x.shape != y.shape or x.ndim != 4 or min(x.shape[1:3]) < 2:
        raise ValueError(
            f"photometric.ssim_loss: x and y must be equal [B, H, W, C] shapes with H, W >= 2, "
            f"got {x.shape} and {y.shape}"
        )


def photometric_error(
    pred: jax.Array, target: jax.Array, ssim_weight: float = 0.85
) -> jax.Array:
    """Monodepth2's reprojection error: weighted SSIM dissimilarity plus L1, averaged over colour.

    Args:
      pred: ``[B, H, W, C]`` synthesised (or unwarped) image.
      target: ``[B, H, W, C]`` target image.
      ssim_weight: weight of the SSIM term; the L1 term gets ``1 - ssim_weight``.

    Returns:
      ``[B, H, W, 1]`` per-pixel error.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"photometric.photometric_error: pred {pred.shape} and target {target.shape} differ"
        )
    l1 = jnp.mean(jnp.abs(target - pred), axis=-1, keepdims=True)
    if ssim_weight == 0.0:
        return l1
    ssim = jnp.mean(ssim_loss(pred, target), axis=-1, keepdims=True)
    return ssim_weight * ssim + (1.0 - ssim_weight) * l1


def tie_breaking_noise(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normal noise of ``shape`` from one key, or from one key per sample.

    With a batch of keys (``[B, 2]`` raw or ``[B]`` typed), sample ``b`` draws from ``key[b]``:
    the train step keys them by the sample's index in the dataset, so the noise of a sample does
    not depend on how the batch is split over devices.
    """
    batched = key.ndim == 2 if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else (
        key.ndim == 1)
    if not batched:
        return jax.random.normal(key, shape, dtype)
    return jax.vmap(lambda k: jax.random.normal(k, shape[1:], dtype))(key)


def min_reprojection(
    reprojection: jax.Array,
    identity: jax.Array | None = None,
    noise_key: jax.Array | None = None,
    avg_reprojection: bool = False,
) -> tuple[jax.Array, dict[str, Any]]:
    """Per-pixel minimum over source views, with Monodepth2's automask.

    The identity errors (unwarped source vs target) compete in the same minimum as the warped
    errors: where a static-looking source explains the target better than any warp, the pixel is
    effectively masked out (its loss is the identity error, which has no gradient w.r.t. depth or
    pose).

    Args:
      reprojection: ``[B, H, W, S]`` error of each warped source.
      identity: ``[B, H, W, S_id]`` error of each unwarped source, or None to disable automasking.
      noise_key: PRNG key, or one key per sample (see ``tie_breaking_noise``); when given,
        ``N(0, 1) * 1e-5`` is added to the identity errors to break ties (e.g. a static scene
        where warp and identity are equal).
      avg_reprojection: average the errors over sources (and the identity errors over their
        sources) instead of keeping them apart for the minimum (Monodepth2 ``--avg_reprojection``).

    Returns:
      ``(per_pixel_loss [B, H, W, 1], aux)``. ``aux['identity_selection']`` ``[B, H, W, 1]`` is
      Monodepth2's visualised mask, 1.0 where a WARPED source has the minimum (pixel kept for
      training) and 0.0 where an identity error wins (pixel masked as static); it is all ones when
      ``identity`` is None. ``aux['identity_wins']`` is its complement. ``aux['min_index']``
      ``[B, H, W]`` int32 is the argmin over ``concat([identity, reprojection])`` channels.
    """
    if reprojection.ndim != 4:
        raise ValueError(
            f"photometric.min_reprojection: reprojection must be [B, H, W, S], got "
            f"{reprojection.shape}"
        )
    if avg_reprojection:
        reprojection = jnp.mean(reprojection, axis=-1, keepdims=True)
    if identity is None:
        combined = reprojection
        num_identity = 0
    else:
        if identity.shape[:3] != reprojection.shape[:3] or identity.ndim != 4:
            raise ValueError(
                f"photometric.min_reprojection: identity must be [B, H, W, S_id] matching "
                f"reprojection {reprojection.shape}, got {identity.shape}"
            )
        if avg_reprojection:
            identity = jnp.mean(identity, axis=-1, keepdims=True)
        if noise_key is not None:
            identity = identity + IDENTITY_NOISE_STD * tie_breaking_noise(
                noise_key, identity.shape, identity.dtype
            )
        combined = jnp.concatenate([identity, reprojection], axis=-1)
        num_identity = identity.shape[-1]
    per_pixel = jnp.min(combined, axis=-1, keepdims=True)
    min_index = jnp.argmin(combined, axis=-1).astype(jnp.int32)
    selection = (min_index >= num_identity).astype(per_pixel.dtype)[..., None]
    aux = {
        "identity_selection": selection,
        "identity_wins": 1.0 - selection,
        "min_index": min_index,
    }
    return per_pixel, aux
