"""Ground-contact prior: a car stands on the road, so its lowest rows are as deep as the road there.

Not in the seed paper; a geometric prior for the per-object depth that piece-wise pose leaves
free (issue 7). Per object, depth and the object's own motion trade off freely (a car twice as far
moving twice as fast warps the same), and a car driving with the camera barely moves in the image,
so its photometric error does not pin its depth. The static scene around it is pinned by parallax
(dense static AbsRel 0.22 against 0.33-0.39 on moving cars for Monodepth2 on the synthetic set),
and a car touches it: the road right below a car's lowest image rows is at the depth of those
rows. The prior pulls the two together, like a smoothness term across the line where they meet:

  prior = coverage x mean over usable instances i of |log D(base_i) - log D(ground_i)|

* ``base_i``: the instance's pixels in its lowest `BASE_ROWS` image rows; ``D(base_i)`` their mean
  depth. ``ground_i``: the pixels of no thing instance in the `GROUND_ROWS` rows right below the
  mask, within the mask's column span; ``D(ground_i)`` their mean depth.
* Both sides get the gradient, so the prior has none along a common log-depth shift: it cannot
  move the depth scale. A first version stopped the road's gradient (the road as the anchor, so a
  wrong car would not drag it). From scratch the car bases then sat consistently on one side of
  the road, the prior pushed the shared decoder one way at every step, Adam's normalisation made
  that push full-sized while moving the road along cancelled its effect, and the depth of every
  pixel saturated at max_depth by step 86 (`instance_pose=none`, weight 0.1: val AbsRel 0.65,
  median-scaling ratio 0.11 against Monodepth2's ~90; issue 7). The road is the larger, better
  pinned side (many pixels, parallax), so the car moves to it more than it to the car.
* Usable: a valid slot whose mask ends at least `GROUND_ROWS` rows above the image bottom, with at
  least `MIN_GROUND_PIXELS` ground pixels below it (a car whose bottom is hidden behind another
  car or cut by the frame has none).
* ``coverage``: the base pixels of the usable instances over the batch's pixels, so that a base
  pixel of an average instance is pulled by the prior's weight per unit of log depth, as a
  per-pixel mean like the photometric loss would.
* How right the prior is on exact depth, and what it did at the demo budget: RESULTS.md
  (issue 7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdepth.losses import object_size

BASE_ROWS = 2
GROUND_ROWS = 2
MIN_GROUND_PIXELS = 3


def contact_regions(masks: jax.Array, thing_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Base and ground pixels of every instance slot (module docstring).

    Args:
      masks: ``[B, M, H, W]`` bool instance masks of the target frame.
      thing_mask: ``[B, H, W]`` bool pixels of any thing instance of that frame.

    Returns:
      (base ``[B, M, H, W]``, ground ``[B, M, H, W]``) bool; both empty for an empty mask.
    """
    height, width = masks.shape[-2:]
    cols = jnp.any(masks, axis=-2)  # [B, M, W]
    r, c = jnp.arange(height), jnp.arange(width)
    bottom = object_size.row_extent(masks)[1][..., None]  # [B, M, 1]
    left = jnp.min(jnp.where(cols, c, width), axis=-1)[..., None]
    right = jnp.max(jnp.where(cols, c, -1), axis=-1)[..., None]
    base_rows = (r > bottom - BASE_ROWS) & (r <= bottom)  # [B, M, H]
    ground_rows = (r > bottom) & (r <= bottom + GROUND_ROWS)
    span = (c >= left) & (c <= right)  # [B, M, W]; empty for an empty mask, so is its ground
    base = masks & base_rows[..., None]
    ground = ground_rows[..., None] & span[:, :, None, :] & ~thing_mask[:, None]
    return base, ground


def contact_prior(
    depth: jax.Array, masks: jax.Array, valid: jax.Array, thing_mask: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The prior of the module docstring.

    Args:
      depth: ``[B, H, W, 1]`` target depth (any positive scale).
      masks: ``[B, M, H, W]`` bool target instance masks.
      valid: ``[B, M]`` bool slots to use.
      thing_mask: ``[B, H, W]`` bool thing pixels of the target frame (ground excludes them).

    Returns:
      (prior: scalar; log scalars, gradient stopped: ``contact/deviation``, the mean
      ``|log D(base) - log D(ground)|`` over the usable instances, and ``contact/instances``,
      their number; the prior and both scalars are 0 without a usable instance).
    """
    base, ground = contact_regions(masks, thing_mask)
    height = masks.shape[-2]
    base_pixels = jnp.sum(base, axis=(2, 3)).astype(jnp.float32)  # [B, M]
    ground_pixels = jnp.sum(ground, axis=(2, 3)).astype(jnp.float32)
    used = (valid & (base_pixels > 0) & (ground_pixels >= MIN_GROUND_PIXELS)
            & (object_size.row_extent(masks)[1] <= height - 1 - GROUND_ROWS))
    d = depth[:, None, :, :, 0]

    def log_mean(region, pixels):
        mean = jnp.sum(region * d, axis=(2, 3)) / jnp.maximum(pixels, 1.0)
        return jnp.log(jnp.where(used, mean, 1.0))  # finite, with a finite gradient, if unused

    offset = log_mean(base, base_pixels) - log_mean(ground, ground_pixels)
    deviation = jnp.where(used, jnp.abs(offset), 0.0)
    return object_size.instance_mean_prior(deviation, used, base_pixels, masks.shape, "contact")
