"""On-device half of the input pipeline: uint8 -> float, colour jitter, image pyramid.

The grain workers draw the jitter factors (one draw per sample, shared by all its frames); this
module applies them inside the jitted step. The order brightness -> contrast -> saturation -> hue is
fixed (torchvision's ColorJitter shuffles it per call; Monodepth2 inherits that, and the order has
no measurable effect at these magnitudes). Formulas follow torchvision's functional ops on float
images: every op clamps to [0, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _grayscale(image: jax.Array) -> jax.Array:
    """ITU-R 601 luma, [..., H, W, 3] -> [..., H, W, 1] (torchvision rgb_to_grayscale)."""
    return (0.299 * image[..., 0:1] + 0.587 * image[..., 1:2] + 0.114 * image[..., 2:3])


def _rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = jnp.max(rgb, axis=-1)
    minc = jnp.min(rgb, axis=-1)
    delta = maxc - minc
    v = maxc
    s = delta / jnp.where(maxc == 0, 1.0, maxc)
    safe = jnp.where(delta == 0, 1.0, delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    # The branch is the max channel's index, the first on ties (r, then g, then b), as in
    # torchvision/PIL. Not `maxc == r`: under jit XLA may recompute `rgb` in several fusions with
    # different rounding, so a max reduced in one fusion can equal neither r nor g of another and
    # the wrong branch turns the hue by up to 2/3; argmax always names a channel that is (within
    # rounding) the max, where every branch is continuous.
    channel = jnp.argmax(rgb, axis=-1)
    h = jnp.where(channel == 0, bc - gc, jnp.where(channel == 1, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(delta == 0, 0.0, (h / 6.0) % 1.0)
    return jnp.stack([h, s, v], axis=-1)


def _hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(jnp.int32) % 6
    r = jnp.choose(i, [v, q, p, p, t, v], mode="clip")
    g = jnp.choose(i, [t, v, v, q, p, p], mode="clip")
    b = jnp.choose(i, [p, p, t, v, v, q], mode="clip")
    return jnp.stack([r, g, b], axis=-1)


def color_jitter(image: jax.Array, jitter: jax.Array) -> jax.Array:
    """Applies one sample's jitter to all its frames.

    Args:
      image: [F, H, W, 3] float in [0, 1] (all frames of ONE sample).
      jitter: [5] = (apply, brightness, contrast, saturation, hue shift).

    Returns:
      [F, H, W, 3]; the input unchanged where apply == 0.
    """
    apply, b, c, s, h = jitter[0], jitter[1], jitter[2], jitter[3], jitter[4]
    out = jnp.clip(image * b, 0.0, 1.0)
    # Contrast blends towards the mean grey level of each frame, as torchvision does per image.
    mean = jnp.mean(_grayscale(out), axis=(-3, -2, -1), keepdims=True)
    out = jnp.clip(c * out + (1.0 - c) * mean, 0.0, 1.0)
    out = jnp.clip(s * out + (1.0 - s) * _grayscale(out), 0.0, 1.0)
    hsv = _rgb_to_hsv(out)
    hsv = hsv.at[..., 0].set((hsv[..., 0] + h) % 1.0)
    out = _hsv_to_rgb(hsv)
    return jnp.where(apply > 0.5, out, image)


def downscale(image: jax.Array, factor: int) -> jax.Array:
    """Antialiased downscale of [B, H, W, C] by an integer factor (Lanczos, as Monodepth2's PIL resize)."""
    b, h, w, c = image.shape
    return jax.image.resize(image, (b, h // factor, w // factor, c), "lanczos3", antialias=True)


def prepare_images(images_u8: jax.Array, jitter: jax.Array, num_scales: int):
    """Converts the batch's frames and builds what the networks and the losses consume.

    Args:
      images_u8: [B, F, H, W, 3] uint8.
      jitter: [B, 5] colour-jitter draws.
      num_scales: pyramid levels for the target frame (the smoothness term's edge image).

    Returns:
      (color [B, F, H, W, 3] un-augmented, for the losses;
       color_aug [B, F, H, W, 3] jittered, for the networks;
       pyramid: list over scales of [B, H/2^s, W/2^s, 3], frame 0 un-augmented.)
    """
    color = images_u8.astype(jnp.float32) / 255.0
    color_aug = jax.vmap(color_jitter)(color, jitter)
    target = color[:, 0]
    pyramid = [target] + [downscale(target, 2**s) for s in range(1, num_scales)]
    return color, color_aug, pyramid
