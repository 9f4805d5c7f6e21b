"""Camera geometry for view synthesis: depth <-> points, poses, bilinear sampling, warping.

Conventions (see ``jdepth/__init__.py``): KITTI rectified camera frame (x right, y down, z forward),
pixel centres at integer coordinates (pixel row i, column j is the point x=j, y=i), 4x4 pixel
intrinsics ``K``/``inv_K`` at the resolution in use, and ``T`` maps homogeneous target-camera points
into the source camera, ``X_src = T @ X_tgt`` (Monodepth2's ``cam_T_cam``).

Every function is pure, batched over a leading ``B`` axis and safe to ``jax.jit`` and ``jax.vmap``.
``bilinear_sample`` and ``inverse_warp`` carry hand-written VJPs (for CPU speed): they support
reverse-mode differentiation (``jax.grad``, ``jax.vjp``) but not forward mode (``jax.jvp``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Monodepth2 adds these to denominators; keeping them identical keeps outputs comparable.
_PROJECTION_EPS = 1e-7
_AXIS_EPS = 1e-7

PADDING_MODES = ("border", "zeros")


def disp_to_depth(
    disp: jax.Array, min_depth: float = 0.1, max_depth: float = 100.0
) -> tuple[jax.Array, jax.Array]:
    """Maps a sigmoid disparity in [0, 1] to a depth in [min_depth, max_depth].

    Args:
      disp: network disparity, any shape (typically ``[B, H, W, 1]``), values in [0, 1].
      min_depth: depth reached at ``disp == 1``.
      max_depth: depth reached at ``disp == 0``.

    Returns:
      ``(scaled_disp, depth)``, both shaped like ``disp``, with
      ``scaled_disp = 1/max + (1/min - 1/max) * disp`` and ``depth = 1 / scaled_disp``.
    """
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    return scaled_disp, 1.0 / scaled_disp


def pixel_grid(height: int, width: int) -> jax.Array:
    """Homogeneous pixel coordinates ``(x, y, 1)`` of every pixel centre.

    Returns:
      ``[H, W, 3]`` float32 array with ``grid[i, j] = (j, i, 1)``.
    """
    ys, xs = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    return jnp.stack([xs, ys, jnp.ones_like(xs)], axis=-1)


def backproject(depth: jax.Array, inv_K: jax.Array) -> jax.Array:
    """Lifts every pixel to a 3-D point in its camera frame.

    Args:
      depth: ``[B, H, W, 1]`` z-depth per pixel.
      inv_K: ``[B, 4, 4]`` inverse intrinsics at the resolution of ``depth``.

    Returns:
      ``[B, H, W, 4]`` homogeneous points ``(X, Y, Z, 1)``, where
      ``XYZ = depth * inv_K[:3, :3] @ (x, y, 1)``.
    """
    _check_rank(depth, 4, "depth")
    _check_matrix(inv_K, depth.shape[0], "inv_K")
    _, height, width, _ = depth.shape
    grid = pixel_grid(height, width)
    rays = _apply_affine(inv_K[:, None, None, :3, :3], grid[None, ..., :2])
    return jnp.concatenate([depth * rays, jnp.ones_like(depth)], axis=-1)


def project(
    points: jax.Array, K: jax.Array, T: jax.Array, eps: float = _PROJECTION_EPS
) -> tuple[jax.Array, jax.Array]:
    """Moves points by ``T`` and projects them with ``K``.

    Args:
      points: ``[B, H, W, 4]`` homogeneous points in the target camera frame.
      K: ``[B, 4, 4]`` intrinsics of the source camera.
      T: ``[B, 4, 4]`` target->source transform, or ``[B, H, W, 4, 4]`` for a per-pixel transform
        (piece-wise rigid motion).
      eps: added to z before the perspective divide (Monodepth2 uses 1e-7).

    Returns:
      ``(pix, z)``: ``pix`` ``[B, H, W, 2]`` are (x, y) pixel coordinates in the source image and
      ``z`` ``[B, H, W, 1]`` is the depth of each point in the source camera.
    """
    _check_rank(points, 4, "points")
    batch = points.shape[0]
    _check_matrix(K, batch, "K")
    if T.ndim == 3:
        _check_matrix(T, batch, "T")
        P = jnp.matmul(K, T)[:, None, None, :3, :]
    elif T.ndim == 5 and T.shape[:3] == points.shape[:3] and T.shape[3:] == (4, 4):
        P = jnp.matmul(K[:, None, None, :3, :], T)
    else:
        raise ValueError(
            f"geometry.project: T must be [B, 4, 4] or [B, H, W, 4, 4] matching points "
            f"{points.shape}, got {T.shape}"
        )
    # The homogeneous coordinate is taken as 1 (as backproject returns it).
    cam = _apply_affine(P, points[..., :3])
    z = cam[..., 2:3]
    pix = cam[..., :2] / (z + eps)
    return pix, z


def _safe_norm(vec: jax.Array) -> jax.Array:
    """L2 norm over the last axis whose gradient is 0 (not NaN) at the origin.

    ``sqrt`` has an infinite derivative at 0, and ``0 * inf = NaN`` poisons the whole gradient.
    The double ``where`` keeps the unselected branch's NaN out of the backward pass.
    """
    squared = jnp.sum(vec * vec, axis=-1, keepdims=True)
    positive = squared > 0
    safe_squared = jnp.where(positive, squared, 1.0)
    return jnp.where(positive, jnp.sqrt(safe_squared), 0.0)


def rotation_from_axisangle(vec: jax.Array) -> jax.Array:
    """Rodrigues' formula: axis-angle vectors to homogeneous rotation matrices.

    Follows Monodepth2 in value (angle = ||v||, axis = v / (angle + 1e-7)), but the norm is
    NaN-safe, so ``jax.grad`` at ``v = 0`` is finite (it is 0 there, as in the reference, because
    ``sin(angle) * axis`` has zero slope within ~1e-7 of the origin).

    Args:
      vec: ``[B, 3]`` axis-angle vectors (radians).

    Returns:
      ``[B, 4, 4]`` rotation matrices with ``[0, 0, 0, 1]`` as the last row and column.
    """
    _check_last_dim(vec, 3, "vec")
    angle = _safe_norm(vec)
    axis = vec / (angle + _AXIS_EPS)
    cos_a = jnp.cos(angle)[..., 0]
    sin_a = jnp.sin(angle)[..., 0]
    one_minus_cos = 1.0 - cos_a
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    rows = [
        [x * x * one_minus_cos + cos_a, x * y * one_minus_cos - z * sin_a,
         x * z * one_minus_cos + y * sin_a],
        [y * x * one_minus_cos + z * sin_a, y * y * one_minus_cos + cos_a,
         y * z * one_minus_cos - x * sin_a],
        [z * x * one_minus_cos - y * sin_a, z * y * one_minus_cos + x * sin_a,
         z * z * one_minus_cos + cos_a],
    ]
    rotation = jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)
    return _embed_3x3(rotation)


def translation_matrix(translation: jax.Array) -> jax.Array:
    """Homogeneous translation matrices.

    Args:
      translation: ``[B, 3]``.

    Returns:
      ``[B, 4, 4]`` identity matrices with ``translation`` in the last column.
    """
    _check_last_dim(translation, 3, "translation")
    eye = jnp.broadcast_to(jnp.eye(4, dtype=translation.dtype), translation.shape[:-1] + (4, 4))
    return eye.at[..., :3, 3].set(translation)


def transformation_from_parameters(
    axisangle: jax.Array, translation: jax.Array, invert: bool = False
) -> jax.Array:
    """Pose-network outputs to a 4x4 transform, as Monodepth2 does.

    Args:
      axisangle: ``[B, 3]`` rotation as an axis-angle vector.
      translation: ``[B, 3]``.
      invert: when False returns ``T(t) @ R(v)``; when True returns ``R(v)^T @ T(-t)``, the exact
        inverse (used for frames before the target, whose pose is predicted in reverse order).

    Returns:
      ``[B, 4, 4]`` transform.
    """
    rotation = rotation_from_axisangle(axisangle)
    if invert:
        rotation = jnp.swapaxes(rotation, -1, -2)
        return jnp.matmul(rotation, translation_matrix(-translation))
    return jnp.matmul(translation_matrix(translation), rotation)


def bilinear_sample(image: jax.Array, pix: jax.Array, padding: str = "border") -> jax.Array:
    """Samples ``image`` bilinearly at pixel coordinates (align_corners=True semantics).

    Coordinate ``(x, y) = (j, i)`` returns ``image[:, i, j]`` exactly. ``'border'`` clamps the
    coordinates to the image (grid_sample ``padding_mode='border'``, including its zero gradient
    for clamped coordinates); ``'zeros'`` treats every tap outside the image as 0, so a point half
    a pixel outside gets half the edge value (``padding_mode='zeros'``). Differentiable with
    respect to both ``image`` and ``pix``.

    Args:
      image: ``[B, H, W, C]``.
      pix: ``[B, h, w, 2]`` (x, y) pixel coordinates into ``image``.
      padding: ``'border'`` or ``'zeros'``.

    Returns:
      ``[B, h, w, C]`` samples.
    """
    image = jnp.asarray(image)
    pix = jnp.asarray(pix)
    _check_rank(image, 4, "image")
    _check_rank(pix, 4, "pix")
    if pix.shape[0] != image.shape[0] or pix.shape[-1] != 2:
        raise ValueError(
            f"geometry.bilinear_sample: pix must be [B, h, w, 2] with B={image.shape[0]}, "
            f"got {pix.shape}"
        )
    if padding not in PADDING_MODES:
        raise ValueError(
            f"geometry.bilinear_sample: padding must be one of {PADDING_MODES}, got {padding!r}"
        )
    if padding == "zeros":
        # Zero padding is border padding on an image framed by zeros: every clamped tap reads 0.
        image = jnp.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)))
        pix = pix + 1.0
    return _sample_border(image, pix)


# The hand-written VJP is the speed-critical part of the photometric loss on CPU: autodiff keeps the
# four gathered taps as residuals (4 x the image size of fresh memory per warp), whereas
# recomputing the gathers inside one fused backward loop is ~2x faster for the pix gradient.
@jax.custom_vjp
def _sample_border(image: jax.Array, pix: jax.Array) -> jax.Array:
    cell = _bilinear_cell(image.shape, pix)
    top_left, top_right, bottom_left, bottom_right = _gather_taps(image, cell)
    wx, wy = cell.wx, cell.wy
    top = top_left + wx * (top_right - top_left)
    bottom = bottom_left + wx * (bottom_right - bottom_left)
    return top + wy * (bottom - top)


def _sample_border_fwd(image: jax.Array, pix: jax.Array):
    return _sample_border(image, pix), (image, pix)


def _sample_border_bwd(residuals, cotangent: jax.Array):
    image, pix = residuals
    batch, height, width, channels = image.shape
    cell = _bilinear_cell(image.shape, pix)
    top_left, top_right, bottom_left, bottom_right = _gather_taps(image, cell)
    wx, wy = cell.wx, cell.wy
    top_slope = top_right - top_left
    bottom_slope = bottom_right - bottom_left
    d_dx = top_slope + wy * (bottom_slope - top_slope)
    d_dy = (bottom_left + wx * bottom_slope) - (top_left + wx * top_slope)
    # Channel sums as explicit adds: a reduce over a size-3 minor axis is several times slower.
    grad_x = sum(cotangent[..., c] * d_dx[..., c] for c in range(channels))
    grad_y = sum(cotangent[..., c] * d_dy[..., c] for c in range(channels))
    # Clamped coordinates get no gradient, as in grid_sample's border mode.
    inside_x = (pix[..., 0] > 0) & (pix[..., 0] < width - 1)
    inside_y = (pix[..., 1] > 0) & (pix[..., 1] < height - 1)
    grad_pix = jnp.stack(
        [jnp.where(inside_x, grad_x, 0.0), jnp.where(inside_y, grad_y, 0.0)], axis=-1
    ).astype(pix.dtype)

    wx0, wy0 = 1.0 - wx, 1.0 - wy
    index = jnp.concatenate([cell.index(y, x) for y, x in cell.taps()], axis=0)
    weights = [wy0 * wx0, wy0 * wx, wy * wx0, wy * wx]
    updates = jnp.concatenate([(cotangent * w).reshape(-1, channels) for w in weights], axis=0)
    grad_image = jnp.zeros((batch * height * width, channels), cotangent.dtype)
    grad_image = grad_image.at[index.reshape(-1)].add(updates, mode="promise_in_bounds")
    return grad_image.reshape(image.shape).astype(image.dtype), grad_pix


# The backward runs under its own name: JAX gives its ops the primal call site's source
# location, so without it a profile (jdepth/training/hlo_profile.py) cannot tell them apart.
_sample_border.defvjp(_sample_border_fwd, jax.named_call(_sample_border_bwd))


class _Cell(NamedTuple):
    """Integer corners and fractional weights of the bilinear cell of each sample point."""

    x0: jax.Array  # [B, h, w] int32
    x1: jax.Array
    y0: jax.Array
    y1: jax.Array
    wx: jax.Array  # [B, h, w, 1] weight of the x1 column
    wy: jax.Array  # [B, h, w, 1] weight of the y1 row
    batch_offset: jax.Array  # [B, 1, 1] first flat pixel index of each image
    width: int

    def taps(self) -> list[tuple[jax.Array, jax.Array]]:
        return [(self.y0, self.x0), (self.y0, self.x1), (self.y1, self.x0), (self.y1, self.x1)]

    def index(self, y: jax.Array, x: jax.Array) -> jax.Array:
        return self.batch_offset + y * self.width + x


def _bilinear_cell(image_shape: tuple[int, ...], pix: jax.Array) -> _Cell:
    batch, height, width, _ = image_shape
    x = jnp.clip(pix[..., 0], 0.0, width - 1.0)
    y = jnp.clip(pix[..., 1], 0.0, height - 1.0)
    # The last cell starts one pixel before the edge, so a point on the far edge gets weight 1 on
    # the far tap and every tap index stays in range.
    x0 = jnp.clip(jnp.floor(x), 0, max(width - 2, 0))
    y0 = jnp.clip(jnp.floor(y), 0, max(height - 2, 0))
    x0i = x0.astype(jnp.int32)
    y0i = y0.astype(jnp.int32)
    offset = jnp.arange(batch, dtype=jnp.int32) * (height * width)
    return _Cell(
        x0=x0i,
        x1=jnp.minimum(x0i + 1, width - 1),
        y0=y0i,
        y1=jnp.minimum(y0i + 1, height - 1),
        wx=(x - x0)[..., None],
        wy=(y - y0)[..., None],
        batch_offset=offset.reshape(batch, 1, 1),
        width=width,
    )


def _gather_taps(image: jax.Array, cell: _Cell) -> list[jax.Array]:
    """The four corner values of every cell, each ``[B, h, w, C]``."""
    flat = image.reshape(-1, image.shape[-1])
    # One flat gather per tap fuses with its consumer; take_along_axis materialises index arrays.
    return [flat.at[cell.index(y, x)].get(mode="promise_in_bounds") for y, x in cell.taps()]


def inverse_warp(
    source: jax.Array,
    depth: jax.Array,
    T: jax.Array,
    K: jax.Array,
    inv_K: jax.Array,
    padding: str = "border",
) -> tuple[jax.Array, jax.Array]:
    """Synthesises the target view by sampling the source image at reprojected target pixels.

    Args:
      source: ``[B, H_s, W_s, C]`` source image (same intrinsics ``K`` as the target).
      depth: ``[B, H, W, 1]`` target depth.
      T: ``[B, 4, 4]`` target->source transform (or ``[B, H, W, 4, 4]`` per pixel).
      K: ``[B, 4, 4]`` intrinsics.
      inv_K: ``[B, 4, 4]`` inverse intrinsics at the resolution of ``depth``.
      padding: ``'border'`` (Monodepth2 photometric loss) or ``'zeros'``.

    Returns:
      ``(warped, pix)``: ``warped`` ``[B, H, W, C]`` and the source pixel coordinates
      ``pix`` ``[B, H, W, 2]`` each target pixel was sampled from.
    """
    _check_rank(depth, 4, "depth")
    _check_matrix(K, depth.shape[0], "K")
    _check_matrix(inv_K, depth.shape[0], "inv_K")
    if T.ndim == 3:
        _check_matrix(T, depth.shape[0], "T")
        pix = _reproject(depth, jnp.matmul(K, T)[:, :3, :], inv_K[:, :3, :3])
    else:
        pix, _ = project(backproject(depth, inv_K), K, T)
    return bilinear_sample(source, pix, padding), pix


# backproject -> project fused into per-pixel scalar arithmetic with a hand-written VJP. Under
# autodiff, XLA on CPU materialised a dozen full-size intermediates and the depth/pose gradient of
# the projection cost more than the bilinear sampling; recomputing the cheap forward terms in the
# backward pass and reducing the pose gradient directly was several times faster.
@jax.custom_vjp
def _reproject(depth: jax.Array, P: jax.Array, inv_K3: jax.Array) -> jax.Array:
    """Source pixel coordinates ``[B, H, W, 2]`` of every target pixel.

    Args:
      depth: ``[B, H, W, 1]``.
      P: ``[B, 3, 4]`` = ``(K @ T)[:3]``.
      inv_K3: ``[B, 3, 3]`` = ``inv_K[:3, :3]``.
    """
    terms = _ReprojectionTerms.build(depth, P, inv_K3)
    return jnp.stack([terms.u, terms.v], axis=-1)


def _reproject_fwd(depth: jax.Array, P: jax.Array, inv_K3: jax.Array):
    return _reproject(depth, P, inv_K3), (depth, P, inv_K3)


def _reproject_bwd(residuals, cotangent: jax.Array):
    depth, P, inv_K3 = residuals
    # Materialise the incoming gradient: otherwise XLA fuses its producer (the bilinear sampler's
    # backward, with four gathers) into each of the reductions below and recomputes it ~12 times.
    cotangent = jax.lax.optimization_barrier(cotangent)
    terms = _ReprojectionTerms.build(depth, P, inv_K3)
    # A point that lands on the source camera's plane (z + eps == 0) projects to +-inf; the sampler
    # clamps it to the border and passes back a zero cotangent, and 0 * inf would be a NaN that
    # poisons every gradient of the step. Such points have no gradient: drop them.
    finite = jnp.isfinite(terms.u) & jnp.isfinite(terms.v) & jnp.isfinite(terms.inv_z)
    grad_u = jnp.where(finite, cotangent[..., 0], 0.0)
    grad_v = jnp.where(finite, cotangent[..., 1], 0.0)
    u, v = jnp.where(finite, terms.u, 0.0), jnp.where(finite, terms.v, 0.0)
    inv_z = jnp.where(finite, terms.inv_z, 0.0)
    # d(u, v) / d(camera point): u = c0 / (c2 + eps), v = c1 / (c2 + eps).
    grad_cam = [
        grad_u * inv_z,
        grad_v * inv_z,
        -(grad_u * u + grad_v * v) * inv_z,
    ]
    # camera point = depth * (A @ ray) + b, with P = [A | b].
    grad_depth = sum(g * q for g, q in zip(grad_cam, terms.rotated_rays))[..., None]
    points = [terms.depth * ray for ray in terms.rays] + [jnp.ones_like(terms.depth)]
    grad_P = jnp.stack(
        [jnp.stack([jnp.sum(g * x, axis=(1, 2)) for x in points], axis=-1) for g in grad_cam],
        axis=-2,
    )
    grid = [terms.xs, terms.ys, jnp.ones_like(terms.xs)]
    grad_rays = [
        terms.depth * sum(_per_image(P, i, j) * grad_cam[i] for i in range(3)) for j in range(3)
    ]
    grad_inv_K3 = jnp.stack(
        [jnp.stack([jnp.sum(g * c, axis=(1, 2)) for c in grid], axis=-1) for g in grad_rays],
        axis=-2,
    )
    return grad_depth.astype(depth.dtype), grad_P, grad_inv_K3


# The backward runs under its own name: JAX gives its ops the primal call site's source
# location, so without it a profile (jdepth/training/hlo_profile.py) cannot tell them apart.
_reproject.defvjp(_reproject_fwd, jax.named_call(_reproject_bwd))


def _per_image(matrix: jax.Array, i: int, j: int) -> jax.Array:
    """Entry ``(i, j)`` of ``[B, ., .]`` matrices, shaped ``[B, 1, 1]`` to broadcast over pixels."""
    return matrix[:, i, j, None, None]


class _ReprojectionTerms(NamedTuple):
    """Per-pixel ``[B, H, W]`` quantities of the target->source reprojection."""

    xs: jax.Array  # [H, W] pixel x
    ys: jax.Array  # [H, W] pixel y
    depth: jax.Array
    rays: list[jax.Array]  # inv_K3 @ (x, y, 1)
    rotated_rays: list[jax.Array]  # A @ ray
    u: jax.Array
    v: jax.Array
    inv_z: jax.Array  # 1 / (z + eps)

    @classmethod
    def build(cls, depth: jax.Array, P: jax.Array, inv_K3: jax.Array) -> "_ReprojectionTerms":
        _, height, width, _ = depth.shape
        grid = pixel_grid(height, width)
        xs, ys = grid[..., 0], grid[..., 1]
        rays = [
            _per_image(inv_K3, j, 0) * xs + _per_image(inv_K3, j, 1) * ys + _per_image(inv_K3, j, 2)
            for j in range(3)
        ]
        rotated = [sum(_per_image(P, i, j) * rays[j] for j in range(3)) for i in range(3)]
        d = depth[..., 0]
        cam = [d * rotated[i] + _per_image(P, i, 3) for i in range(3)]
        inv_z = 1.0 / (cam[2] + _PROJECTION_EPS)
        return cls(xs, ys, d, rays, rotated, cam[0] * inv_z, cam[1] * inv_z, inv_z)


def _apply_affine(matrix: jax.Array, vectors: jax.Array) -> jax.Array:
    """``matrix @ (v, 1)`` for ``[..., 3, n+1]`` matrices and ``[..., n]`` vectors -> ``[..., 3]``.

    Spelled out as multiply-adds: a batched matmul with contraction size 3 or 4 per pixel is a
    poorly vectorised dot on CPU and cost several times the bilinear sampling itself, while the
    elementwise form fuses into the surrounding projection arithmetic.
    """
    size = vectors.shape[-1]
    rows = []
    for i in range(3):
        row = matrix[..., i, size]
        for j in range(size):
            row = row + matrix[..., i, j] * vectors[..., j]
        rows.append(row)
    return jnp.stack(rows, axis=-1)


def _check_rank(array: jax.Array, rank: int, name: str) -> None:
    if array.ndim != rank:
        raise ValueError(f"geometry: {name} must have rank {rank}, got shape {array.shape}")


def _check_last_dim(array: jax.Array, size: int, name: str) -> None:
    if array.ndim < 1 or array.shape[-1] != size:
        raise ValueError(f"geometry: {name} must be [..., {size}], got shape {array.shape}")


def _check_matrix(matrix: jax.Array, batch: int, name: str) -> None:
    if matrix.shape != (batch, 4, 4):
        raise ValueError(f"geometry: {name} must be [{batch}, 4, 4], got shape {matrix.shape}")


def _embed_3x3(matrix: jax.Array) -> jax.Array:
    """``[..., 3, 3]`` -> ``[..., 4, 4]`` homogeneous matrix."""
    eye = jnp.broadcast_to(jnp.eye(4, dtype=matrix.dtype), matrix.shape[:-2] + (4, 4))
    return eye.at[..., :3, :3].set(matrix)


def _interpolation_matrix(out_size: int, in_size: int) -> np.ndarray:
    """``[out, in]`` weights of 1-D linear interpolation with half-pixel centres.

    PyTorch's ``align_corners=False`` rule: source coordinate ``(i + 0.5) * in / out - 0.5``,
    clamped at 0, with the upper neighbour clamped to the last pixel (no antialiasing).
    """
    source = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
    lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = source - lower
    matrix = np.zeros((out_size, in_size), np.float32)
    np.add.at(matrix, (np.arange(out_size), lower), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), upper), frac)
    return matrix


def upsample_disp(disp: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of a disparity map to ``height x width``, align_corners=False.

    Matches PyTorch's ``F.interpolate(mode='bilinear', align_corners=False)`` as Monodepth2 uses
    it. When upsampling this equals ``jax.image.resize(..., 'linear')`` (also half-pixel centres;
    its renormalised edge taps equal PyTorch's clamp), which tests/test_losses.py checks; the two
    fixed interpolation matrices built here compile much faster than ``jax.image.resize``, whose
    weight computation XLA constant-folds.

    Args:
      disp: ``[B, h, w, C]``.
      height: output height ``H``.
      width: output width ``W``.

    Returns:
      ``[B, H, W, C]``; ``disp`` itself when it already has that size.
    """
    _, in_height, in_width, _ = disp.shape
    if (in_height, in_width) == (height, width):
        return disp
    rows = jnp.asarray(_interpolation_matrix(height, in_height), disp.dtype)
    cols = jnp.asarray(_interpolation_matrix(width, in_width), disp.dtype)
    return jnp.einsum("Hh,bhwc,Ww->bHWc", rows, disp, cols)
