"""Edge-aware disparity smoothness (Monodepth2's ``get_smooth_loss``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Keeps the mean-normalisation finite for an all-zero disparity, as Monodepth2.
_MEAN_EPS = 1e-7


def edge_aware_smoothness(disp: jax.Array, image: jax.Array) -> jax.Array:
    """First-order disparity smoothness, down-weighted at image edges.

    The disparity is divided by its per-image spatial mean so the loss does not favour shrinking
    the whole depth map. Gradients are forward differences; each is weighted by
    ``exp(-mean_c |image gradient|)`` and the x and y terms are averaged separately, then added.

    Args:
      disp: ``[B, h, w, 1]`` disparity (at the resolution of ``image``).
      image: ``[B, h, w, C]`` colour image.

    Returns:
      Scalar loss.
    """
    if disp.ndim != 4 or disp.shape[-1] != 1 or image.shape[:3] != disp.shape[:3]:
        raise ValueError(
            f"smoothness.edge_aware_smoothness: disp must be [B, h, w, 1] and image [B, h, w, C] "
            f"with the same B, h, w; got {disp.shape} and {image.shape}"
        )
    mean_disp = jnp.mean(disp, axis=(1, 2), keepdims=True)
    norm_disp = disp / (mean_disp + _MEAN_EPS)

    disp_dx = jnp.abs(norm_disp[:, :, :-1] - norm_disp[:, :, 1:])
    disp_dy = jnp.abs(norm_disp[:, :-1] - norm_disp[:, 1:])
    image_dx = jnp.mean(jnp.abs(image[:, :, :-1] - image[:, :, 1:]), axis=-1, keepdims=True)
    image_dy = jnp.mean(jnp.abs(image[:, :-1] - image[:, 1:]), axis=-1, keepdims=True)
    return jnp.mean(disp_dx * jnp.exp(-image_dx)) + jnp.mean(disp_dy * jnp.exp(-image_dy))
