"""ISSL: isometric self-sample based learning (Cha et al., Sec. 3.2 and App. A.2) as a plug-in loss.

For each target image ``I_t`` with predicted depth ``D_t`` the generator draws ``n_k`` random rigid
transforms ``M``, moves the target point cloud ``p_t = D_t K^-1 (u, v, 1)`` by ``M``, projects it to
``u'`` and builds a self-sample by sampling ``I_t`` (and ``D_t``) bilinearly at ``u'``. The depth
network then has to predict, on the self-sample, the depth the generator knows for it.

Decisions where the paper is silent (there is no public code):

* Direction of ``M``. Sampling ``I_t`` at the projection of ``M p_t`` is the photometric inverse
  warp with ``I_t`` as the *source* and the self-sample as the *target*: ``M`` is the cam_T_cam from
  the self-sample camera into frame t, ``X_t = M @ X_self`` (the camera sits at ``M``'s translation
  in frame t). Like every inverse warp it uses ``D_t`` as the new view's depth to find ``u'``, so
  the self-sample is the true view up to second order in the motion; for pure rotations (where
  nearly all of the motion is, theta_T = 0.005) the warp is a homography and exact.
* Target depth. The paper samples ``D_t`` at ``u'``: a z-depth in *frame t*. The self-sample's own
  depth of that scene point ``Q = D_t(u') K^-1 (u', 1)`` is ``(M^-1 Q)_z``; with rotations of up to
  0.2 rad the two differ by a per-pixel factor of about ``cos a +- x sin a`` (+-17 % across a KITTI
  frame), a depth gradient the network would be taught wrongly. ``target_in_self_frame=True`` (the
  default) re-expresses the sampled point in the self-sample frame; False is the literal reading.
* Gradients. The self-samples are generated data: image, target depth and mask come from a
  stop-gradient copy of ``D_t``, and only the prediction on the self-samples is trained. Letting
  the loss move ``D_t`` as well would let it shrink by deforming the main prediction instead.
* Input image: the colour-jittered target the depth network saw in the main pass, so self-samples
  come from the same input distribution. Border padding (as the photometric warp), so invalid
  pixels repeat the edge instead of showing black holes to the network.
* Averaging: per self-sample mean over its valid pixels, then the mean over batch and self-samples
  (a self-sample with no valid pixel contributes 0). Normalising per self-sample keeps the loss
  weight independent of the invalid fraction, which grows with theta_R, and makes a pmap run over
  N devices compute the numbers of a 1-device run.
* Median scaling: per self-sample, the prediction is multiplied by median(target) / median(pred)
  over valid pixels (numpy's median: mean of the two middle values); the gradient flows through
  both medians, so the loss is exactly invariant to a global scale of the prediction.
* BatchNorm: the self-sample pass runs in train mode (batch statistics, as every training forward
  pass) on all ``n_k * B`` self-samples in one call; its running-statistics update is discarded, so
  the stored statistics are those of the main pass on real images.
* Random transforms are keyed per sample (by its index in the split), so the draw does not depend
  on how the batch is split over devices. theta_R rises per epoch: epoch e of E uses
  ``start + (end - start) * e / (E - 1)`` ("linearly increased ... every epoch").
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jdepth import geometry

DISTRIBUTIONS = ("uniform", "gaussian")

# Monodepth2's depth network, as the hook sees it: (params, batch_stats, images) -> depth.
DepthFn = Callable[[Any, Any, jax.Array], jax.Array]


class SelfSamples(NamedTuple):
    """``n_k`` self-samples per target image, flattened sample-major (``b * n_k + k``)."""

    image: jax.Array  # [B * n_k, H, W, C]
    depth: jax.Array  # [B * n_k, H, W, 1] target depth of each self-sample
    valid: jax.Array  # [B * n_k, H, W, 1] bool


def theta_r_schedule(
    step: jax.Array | int,
    steps_per_epoch: int,
    num_epochs: int,
    start: float = 0.005,
    end: float = 0.2,
) -> jax.Array:
    """Rotation range of the current epoch: ``start`` in epoch 0, ``end`` in the last epoch.

    Args:
      step: global optimisation step (traced or concrete).
      steps_per_epoch: optimisation steps per epoch (>= 1).
      num_epochs: number of training epochs (>= 1); later steps stay at ``end``.
      start: theta_R of the first epoch (radians).
      end: theta_R of the last epoch (radians).

    Returns:
      Scalar float32 theta_R.
    """
    if steps_per_epoch < 1 or num_epochs < 1:
        raise ValueError(
            f"jdepth/losses/issl.py: steps_per_epoch and num_epochs must be >= 1, got "
            f"{steps_per_epoch} and {num_epochs}"
        )
    epoch = jnp.floor_divide(jnp.asarray(step, jnp.int32), steps_per_epoch)
    progress = jnp.clip(epoch.astype(jnp.float32) / max(num_epochs - 1, 1), 0.0, 1.0)
    return jnp.float32(start) + jnp.float32(end - start) * progress


def sample_rigid_parameters(
    key: jax.Array,
    num_samples: int,
    theta_r: jax.Array | float,
    theta_t: jax.Array | float,
    distribution: str = "uniform",
) -> tuple[jax.Array, jax.Array]:
    """Random axis-angle rotations and translations for one image.

    ``'uniform'``: every component uniform in ``[-theta, theta]`` (the paper's setting).
    ``'gaussian'``: normal with std ``theta / 2``, clipped to ``[-theta, theta]`` (its ablation).

    Returns:
      ``(axisangle, translation)``, each ``[num_samples, 3]``.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"jdepth/losses/issl.py: distribution must be one of {DISTRIBUTIONS}, "
            f"got {distribution!r}"
        )
    if distribution == "uniform":
        unit = jax.random.uniform(key, (2, num_samples, 3), minval=-1.0, maxval=1.0)
    else:
        unit = jnp.clip(0.5 * jax.random.normal(key, (2, num_samples, 3)), -1.0, 1.0)
    return unit[0] * theta_r, unit[1] * theta_t


def sample_transforms(
    keys: jax.Array,
    num_samples: int,
    theta_r: jax.Array | float,
    theta_t: jax.Array | float,
    distribution: str = "uniform",
) -> jax.Array:
    """``n_k`` random rigid transforms ``M = T(t) @ R(v)`` per image, one key per image.

    Args:
      keys: ``[B]`` PRNG keys (typed) or ``[B, 2]`` raw keys.
      num_samples: ``n_k``.
      theta_r, theta_t: ranges of the rotation (radians) and translation (depth units).
      distribution: ``'uniform'`` or ``'gaussian'`` (see `sample_rigid_parameters`).

    Returns:
      ``[B, n_k, 4, 4]`` transforms mapping self-sample camera points into the target camera.
    """
    axisangle, translation = jax.vmap(
        lambda key: sample_rigid_parameters(key, num_samples, theta_r, theta_t, distribution)
    )(keys)
    batch = axisangle.shape[0]
    transforms = geometry.transformation_from_parameters(
        axisangle.reshape(-1, 3), translation.reshape(-1, 3)
    )
    return transforms.reshape(batch, num_samples, 4, 4)


def generate_self_samples(
    image: jax.Array,
    depth: jax.Array,
    transforms: jax.Array,
    K: jax.Array,
    inv_K: jax.Array,
    target_in_self_frame: bool = True,
) -> SelfSamples:
    """Isometric self-samples of every image (no gradient: they are generated data).

    Args:
      image: ``[B, H, W, C]`` target images.
      depth: ``[B, H, W, 1]`` their (predicted) depth, positive.
      transforms: ``[B, n_k, 4, 4]`` ``M`` with ``X_t = M @ X_self`` (see module docstring).
      K, inv_K: ``[B, 4, 4]`` intrinsics at ``H x W`` and their inverse.
      target_in_self_frame: target depth is the z of the sampled point in the self-sample camera
        (True) or the sampled frame-t depth ``D_t(u')`` itself (False, the paper's literal text).

    Returns:
      `SelfSamples`; a pixel is valid when its projection ``u'`` lies inside the image (pixel
      centres span ``[0, W-1] x [0, H-1]``), the moved point is in front of the camera and the
      target depth is positive.
    """
    image, depth, transforms = jax.lax.stop_gradient((image, depth, transforms))
    if image.ndim != 4 or depth.shape != image.shape[:3] + (1,):
        raise ValueError(
            f"jdepth/losses/issl.py: image must be [B, H, W, C] and depth [B, H, W, 1], got "
            f"{image.shape} and {depth.shape}"
        )
    batch, height, width, channels = image.shape
    if transforms.ndim != 4 or transforms.shape[0] != batch or transforms.shape[2:] != (4, 4):
        raise ValueError(
            f"jdepth/losses/issl.py: transforms must be [{batch}, n_k, 4, 4], got "
            f"{transforms.shape}"
        )
    num_samples = transforms.shape[1]

    def per_sample(x):
        return jnp.repeat(x, num_samples, axis=0)

    moves = transforms.reshape(batch * num_samples, 4, 4)
    K_rep, inv_K_rep = per_sample(K), per_sample(inv_K)
    depth_rep = per_sample(depth)
    pix, moved_z = geometry.project(geometry.backproject(depth_rep, inv_K_rep), K_rep, moves)
    # One gather for colour and depth: they are sampled at the same points.
    sampled = geometry.bilinear_sample(
        per_sample(jnp.concatenate([image, depth], axis=-1)), pix, "border"
    )
    sampled_image, sampled_depth = sampled[..., :channels], sampled[..., channels:]
    if target_in_self_frame:
        target = _depth_in_self_frame(sampled_depth, pix, moves, inv_K_rep)
    else:
        target = sampled_depth
    inside = (
        (pix[..., 0] >= 0.0) & (pix[..., 0] <= width - 1.0)
        & (pix[..., 1] >= 0.0) & (pix[..., 1] <= height - 1.0)
    )
    valid = inside[..., None] & (moved_z > 0.0) & (target > 0.0)
    return SelfSamples(sampled_image, target, valid)


def _depth_in_self_frame(
    sampled_depth: jax.Array, pix: jax.Array, moves: jax.Array, inv_K: jax.Array
) -> jax.Array:
    """z of ``M^-1 Q`` for the sampled frame-t points ``Q = D_t(u') K^-1 (u', 1)``.

    With ``M = [R | t]``, ``M^-1 Q = R^T (Q - t)``, whose z is ``R[:, 2] . (Q - t)``.
    """

    def per_image(matrix, i, j):
        return matrix[:, i, j, None, None]

    x, y = pix[..., 0], pix[..., 1]
    d = sampled_depth[..., 0]
    z_self = 0.0
    for i in range(3):
        ray_i = per_image(inv_K, i, 0) * x + per_image(inv_K, i, 1) * y + per_image(inv_K, i, 2)
        z_self = z_self + per_image(moves, i, 2) * (d * ray_i - per_image(moves, i, 3))
    return z_self[..., None]


def masked_median(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Median of each map over its masked pixels (numpy's: mean of the two middle values).

    Args:
      values: ``[N, H, W, 1]``.
      mask: ``[N, H, W, 1]`` bool.

    Returns:
      ``[N]`` medians; 1 for a map without a masked pixel.
    """
    flat = values.reshape(values.shape[0], -1)
    keep = mask.reshape(mask.shape[0], -1)
    # Unmasked entries sort last; a finite filler keeps the gradient of the sort NaN-free.
    ordered = jnp.sort(jnp.where(keep, flat, jnp.finfo(flat.dtype).max), axis=-1)
    count = jnp.sum(keep, axis=-1)
    lower = jnp.take_along_axis(ordered, (jnp.maximum(count - 1, 0) // 2)[:, None], axis=-1)
    upper = jnp.take_along_axis(ordered, (count // 2)[:, None], axis=-1)
    median = 0.5 * lower[:, 0] + 0.5 * upper[:, 0]
    return jnp.where(count > 0, median, 1.0)


def issl_loss(
    pred_depth: jax.Array, target_depth: jax.Array, valid: jax.Array, median_scaling: bool = True
) -> jax.Array:
    """Paper eq. 7: normalised absolute depth difference ``|a - b| / (a + b)`` on valid pixels.

    Args:
      pred_depth: ``[N, H, W, 1]`` the network's depth on each self-sample (positive).
      target_depth: ``[N, H, W, 1]`` the generator's depth of each self-sample.
      valid: ``[N, H, W, 1]`` bool validity mask.
      median_scaling: scale each prediction to the target's median over its valid pixels first.

    Returns:
      Scalar: mean over self-samples of the mean over each one's valid pixels (0 when none).
    """
    if not pred_depth.shape == target_depth.shape == valid.shape:
        raise ValueError(
            f"jdepth/losses/issl.py: pred_depth, target_depth and valid must have one shape, got "
            f"{pred_depth.shape}, {target_depth.shape} and {valid.shape}"
        )
    if median_scaling:
        ratio = masked_median(target_depth, valid) / masked_median(pred_depth, valid)
        pred_depth = pred_depth * ratio[:, None, None, None]
    # Invalid pixels may hold any value (even <= 0): keep them out of the division.
    pred = jnp.where(valid, pred_depth, 1.0)
    target = jnp.where(valid, target_depth, 1.0)
    difference = jnp.where(valid, jnp.abs(pred - target) / (pred + target), 0.0)
    count = jnp.sum(valid, axis=(1, 2, 3))
    per_sample = jnp.sum(difference, axis=(1, 2, 3)) / jnp.maximum(count, 1)
    return jnp.mean(per_sample)


def issl_objective(
    depth_fn: DepthFn,
    params,
    batch_stats,
    image: jax.Array,
    depth: jax.Array,
    K: jax.Array,
    inv_K: jax.Array,
    keys: jax.Array,
    theta_r: jax.Array | float,
    issl_config,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Generates the self-samples, predicts their depth in one batched call, returns the loss.

    Recipe-independent: any family passes its own ``depth_fn``.

    Args:
      depth_fn: ``(params, batch_stats, images [N, H, W, 3]) -> depth [N, H, W, 1]`` in train mode.
      params, batch_stats: passed through to ``depth_fn``.
      image: ``[B, H, W, 3]`` target images (the depth network's input of the main pass).
      depth: ``[B, H, W, 1]`` the main pass's depth of them (used as stop-gradient data).
      K, inv_K: ``[B, 4, 4]``.
      keys: ``[B]`` per-sample PRNG keys.
      theta_r: current rotation range (`theta_r_schedule`).
      issl_config: the ``config.issl`` section.

    Returns:
      ``(weighted loss, aux)``; aux scalars: ``'issl'`` (weighted term added to the total),
      ``'issl/unweighted'``, ``'issl/theta_r'``, ``'issl/valid_fraction'``.
    """
    transforms = sample_transforms(
        keys, issl_config.num_samples, theta_r, issl_config.theta_t, issl_config.distribution
    )
    samples = generate_self_samples(
        image, depth, transforms, K, inv_K, issl_config.target_in_self_frame
    )
    pred = depth_fn(params, batch_stats, samples.image)
    raw = issl_loss(pred, samples.depth, samples.valid, issl_config.median_scaling)
    weighted = issl_config.weight * raw
    aux = {
        "issl": weighted,
        "issl/unweighted": raw,
        "issl/theta_r": jnp.asarray(theta_r, jnp.float32),
        "issl/valid_fraction": jnp.mean(samples.valid.astype(jnp.float32)),
    }
    return weighted, aux
