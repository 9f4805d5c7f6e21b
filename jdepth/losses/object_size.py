"""Object-size prior: cars of one class have one real height, so depth x image height agrees.

Not in the seed paper; the constraint of struct2depth (Casser et al., AAAI 2019, "object size
constraint"), written without its learned per-class height. Issue 7 measured why piece-wise pose
needs it: per object, depth and the object's own motion trade off freely (a car twice as far
moving twice as fast warps the same), and most moving cars of a street scene drive with the
camera, so their photometric error says nothing about their depth. Their size does: a car of
real height ``H`` at distance ``D`` spans ``h = f H / D`` pixel rows, so ``D h = f H`` is the same
for every car of the class. The prior pulls each instance's ``log(mean depth x pixel height)``
towards the batch median of that quantity:

  prior = coverage x mean over clear instances i of |log(D_i h_i) - median_j log(D_j h_j)|

with ``coverage`` the fraction of the batch's pixels those instances cover.

* The median (gradient stopped) stands in for struct2depth's learned ``f H``: it leaves the scale
  that self-supervised depth and translation share untouched and trains only the cars' depths
  relative to each other. Most cars are parked (4 of 5 instances of the synthetic set), so the
  median follows the parallax-trained parked cars, and a moving car is pulled to the depth its
  size says. Every term is invariant to a common depth scale.
* ``D_i`` is the mean depth over the instance's target mask, ``h_i`` the number of image rows the
  mask spans. A mask touching the top or bottom image row is cut by the frame, so its ``h`` is too
  small: such instances are left out ("clear" below). Occlusion by another object cuts ``h`` the
  same way and is not detected: it is noise the median absorbs.
* On the synthetic set's exact depth (car roofs 1.40-1.55 m), ``log(D h)`` of the clear instances
  of >= 1 % of the image has a standard deviation of 0.057 across 156 training instances (0.058,
  29 test instances): the prior is right to about 6 %, against a moving-car AbsRel of 0.33-0.39
  for Monodepth2 (issue 7).
* Every instance counts once, so the prior does not move the depth scale: at the median as many
  instances are pulled deeper as shallower, and the gradient of a common log-depth shift is 0.
  A first version weighted each instance by its area. From scratch, with the depth still flat,
  the large near cars (above the median) then outweighed the small far ones and the prior pushed
  every depth down: at weight 0.5 the depth sat at one value from step 86 to 172 (val AbsRel
  0.515 at both, issue 7). The ``coverage`` factor keeps the scale of a per-pixel mean like the
  photometric loss: a car of average size is pulled by the prior's weight per unit of log depth
  per pixel, a smaller one harder, a larger one less.
* How right the prior is on exact depth, and what it did at the demo budget: RESULTS.md
  (issue 7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def row_extent(masks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First and last image row of every mask: ``[B, M]`` each (H and -1 for an empty mask).

    Args:
      masks: ``[B, M, H, W]`` bool instance masks.
    """
    rows = jnp.any(masks, axis=-1)  # [B, M, H]
    index = jnp.arange(rows.shape[-1])
    return (jnp.min(jnp.where(rows, index, rows.shape[-1]), axis=-1),
            jnp.max(jnp.where(rows, index, -1), axis=-1))


def instance_heights(masks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Image rows spanned by every instance mask, and whether the frame cuts it.

    Args:
      masks: ``[B, M, H, W]`` bool instance masks.

    Returns:
      (heights ``[B, M]`` float: last row - first row + 1, 0 for an empty mask; clear ``[B, M]``
      bool: non-empty and touching neither the top nor the bottom image row).
    """
    top, bottom = row_extent(masks)
    filled = bottom >= 0
    spans = jnp.where(filled, bottom - top + 1, 0).astype(jnp.float32)
    return spans, filled & (top > 0) & (bottom < masks.shape[-2] - 1)


def size_prior(
    depth: jax.Array, masks: jax.Array, valid: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The prior of the module docstring.

    Args:
      depth: ``[B, H, W, 1]`` target depth (any positive scale).
      masks: ``[B, M, H, W]`` bool target instance masks (disjoint), all of one class.
      valid: ``[B, M]`` bool slots to use.

    Returns:
      (prior: scalar; log scalars, gradient stopped: ``size/deviation``, the mean
      ``|log(D h) - median|`` over the used instances, and ``size/instances``, their number).
      The prior and the deviation are 0 with fewer than two usable instances: one car has
      nothing to agree with.
    """
    spans, clear = instance_heights(masks)
    weights = masks.astype(jnp.float32)
    area = jnp.sum(weights, axis=(2, 3))  # [B, M]
    used = valid & clear
    mean_depth = jnp.sum(weights * depth[:, None, :, :, 0], axis=(2, 3)) / jnp.maximum(area, 1.0)
    # Unused slots get a finite stand-in, so neither the log nor its gradient is inf or NaN.
    log_size = jnp.log(jnp.where(used, mean_depth * spans, 1.0))
    count = jnp.sum(used)
    reference = jax.lax.stop_gradient(
        jnp.nanmedian(jnp.where(used, log_size, jnp.nan)))
    offset = log_size - jnp.where(count >= 2, reference, 0.0)
    # |x|'s derivative at 0 is 1 in JAX: the median instance itself (0 offset) would be pushed.
    deviation = jnp.where(used & (count >= 2) & (offset != 0.0), jnp.abs(offset), 0.0)
    return instance_mean_prior(deviation, used, area, masks.shape, "size")


def instance_mean_prior(deviation: jax.Array, used: jax.Array, pixels: jax.Array,
                        mask_shape: tuple[int, ...], name: str
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``coverage x mean deviation`` over the used instances, and its log scalars.

    Every instance counts once (so a prior balanced around a reference cannot move the depth
    scale); ``coverage``, the used instances' ``pixels`` over the batch's ``B H W`` pixels, gives
    it the scale of a per-pixel mean like the photometric loss.

    Args:
      deviation: ``[B, M]`` per-instance deviations, 0 where unused.
      used: ``[B, M]`` bool.
      pixels: ``[B, M]`` the pixels each instance's deviation is measured on.
      mask_shape: ``(B, M, H, W)``.
      name: prefix of the log scalars ``{name}/deviation`` (the mean deviation) and
        ``{name}/instances`` (the number used).
    """
    b, _, h, w = mask_shape
    count = jnp.sum(used)
    coverage = jnp.sum(jnp.where(used, pixels, 0.0)) / (b * h * w)
    mean_deviation = jnp.sum(deviation) / jnp.maximum(count, 1)
    return coverage * mean_deviation, {
        f"{name}/deviation": jax.lax.stop_gradient(mean_deviation),
        f"{name}/instances": count.astype(jnp.float32)}
