"""The plane-sweep cost volume (jdepth/cost_volume.py) against brute force and rendered views."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth import cost_volume as cv


def _intrinsics(batch, height, width, focal):
    K = np.array([[focal, 0, (width - 1) / 2, 0], [0, focal, (height - 1) / 2, 0],
                  [0, 0, 1, 0], [0, 0, 0, 1]], np.float64)
    K = np.broadcast_to(K, (batch, 4, 4)).copy()
    return K, np.linalg.inv(K)


def _pose(rx, ry, rz, tx, ty, tz):
    """4x4 current -> lookup transform from small Euler angles (radians) and a translation."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = Rz @ Ry @ Rx
    T[:3, 3] = (tx, ty, tz)
    return T


def _bilinear_zeros(image, x, y):
    """grid_sample(bilinear, zeros, align_corners=True) of one [h, w, C] image at (x, y)."""
    h, w, _ = image.shape
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    out = np.zeros(image.shape[-1])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= xx < w and 0 <= yy < h:
                out += wy * wx * image[yy, xx]
    return out


def _brute_force(current, lookups, poses, K, inv_K, bins, border=2):
    """ManyDepth's match_features + confidence, one pixel and one hypothesis at a time."""
    B, h, w, C = current.shape
    D = len(bins)
    cost = np.zeros((B, h, w, D))
    for b in range(B):
        total = np.zeros((h, w, D))
        count = np.zeros((h, w, D))
        for n in range(lookups.shape[1]):
            T = poses[b, n]
            if T.sum() == 0:
                continue
            P = (K[b] @ T)[:3]
            for y in range(h):
                for x in range(w):
                    for d, depth in enumerate(bins):
                        point = depth * (inv_K[b, :3, :3] @ np.array([x, y, 1.0]))
                        cam = P @ np.append(point, 1.0)
                        u, v = cam[0] / (cam[2] + 1e-7), cam[1] / (cam[2] + 1e-7)
                        ok = border <= u <= w - border and border <= v <= h - border
                        ok = ok and border <= x < w - border and border <= y < h - border
                        if not ok:
                            continue
                        warped = _bilinear_zeros(lookups[b, n], u, v)
                        diff = np.mean(np.abs(warped - current[b, y, x]))
                        total[y, x, d] += diff
                        count[y, x, d] += diff > 0
        cost[b] = total / (count + 1e-7)
    missing = cost == 0
    cost = np.where(missing, cost.max(-1, keepdims=True), cost)
    confidence = (~missing).all(-1, keepdims=True).astype(np.float64)
    return cost, missing, confidence


def test_depth_bins():
    lin = np.asarray(cv.depth_bins(0.5, 8.0, 6))
    np.testing.assert_allclose(lin, np.linspace(0.5, 8.0, 6), rtol=1e-6)
    inv = np.asarray(cv.depth_bins(0.5, 8.0, 6, "inverse"))
    assert inv[0] == pytest.approx(0.5) and inv[-1] == pytest.approx(8.0)
    assert np.all(np.diff(inv) > 0)  # increasing depth order, like linear bins
    np.testing.assert_allclose(np.diff(1 / inv), np.diff(1 / inv)[0], rtol=1e-5)
    with pytest.raises(ValueError, match="binning"):
        cv.depth_bins(0.1, 1.0, 3, "log")


def test_cost_volume_matches_brute_force():
    rng = np.random.default_rng(0)
    B, N, h, w, C = 2, 2, 9, 13, 3
    bins = np.linspace(1.5, 9.0, 7)
    current = rng.normal(size=(B, h, w, C))
    lookups = rng.normal(size=(B, N, h, w, C))
    K, inv_K = _intrinsics(B, h, w, focal=8.0)
    poses = np.stack([
        np.stack([_pose(0.02, -0.03, 0.01, 0.4, 0.05, 0.3), _pose(0.0, 0.05, 0.0, -0.3, 0.0, 0.6)]),
        # second sample: its second frame is "missing" (zero pose) and must be skipped
        np.stack([_pose(-0.01, 0.02, 0.0, 0.6, -0.1, -0.2), np.zeros((4, 4))]),
    ])
    want_cost, want_missing, want_conf = _brute_force(current, lookups, poses, K, inv_K, bins)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    cost, aux = cv.cost_volume(f32(current), f32(lookups), f32(poses), f32(K), f32(inv_K),
                               f32(bins))
    np.testing.assert_allclose(np.asarray(cost), want_cost, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(aux["missing"]), want_missing)
    np.testing.assert_array_equal(np.asarray(aux["confidence"]), want_conf)
    # Some pixels are confident and some are not, so the test exercises both rules.
    assert 0 < want_conf.mean() < 1 and 0 < want_missing.mean() < 1
    viz = np.where(want_cost == 0, 100.0, want_cost)
    np.testing.assert_allclose(np.asarray(aux["lowest_cost_depth"])[..., 0],
                               bins[np.argmin(viz, -1)], rtol=1e-6)
    # Chunked sweep (memory-bounded) gives the same volume.
    chunked, _ = cv.cost_volume(f32(current), f32(lookups), f32(poses), f32(K), f32(inv_K),
                                f32(bins), bins_per_chunk=1)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(cost), atol=1e-5)


def _render_slanted_plane(height, width, focal, T, channels=8, seed=0):
    """Analytic two-view features of a textured slanted plane n . X = 1 (current camera frame).

    Returns (current [h, w, C], lookup [h, w, C], true depth of the current pixels [h, w]).
    """
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(3.0, 8.0, size=(channels, 3)) * rng.choice([-1, 1], size=(channels, 3))
    phases = rng.uniform(0, 2 * np.pi, size=channels)
    normal = np.array([0.03, -0.06, 0.28])  # depth 3..4.5 m across the view
    K, inv_K = _intrinsics(1, height, width, focal)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.einsum("ij,hwj->hwi", inv_K[0, :3, :3], np.stack([xs, ys, np.ones_like(xs)], -1))

    def texture(points):  # [h, w, 3] -> [h, w, C]
        return np.sin(points @ freqs.T + phases)

    depth = 1.0 / (rays @ normal)  # ray z = 1, so the scale along the ray is the depth
    current = texture(rays * depth[..., None])
    # Lookup pixel rays back in the current frame: X_c = R^T (s * r_l - t), on the plane.
    R, t = T[:3, :3], T[:3, 3]
    r_back = rays @ R  # R^T r_l per pixel
    t_back = R.T @ t
    s = (1.0 + normal @ t_back) / (r_back @ normal)
    lookup = texture(s[..., None] * r_back - t_back)
    return current, lookup, depth


def test_correct_hypothesis_has_lowest_cost_on_rendered_pair():
    height, width, focal = 48, 64, 48.0
    T = _pose(0.01, -0.02, 0.0, 0.4, 0.05, -0.3)  # lookup camera behind and to the side
    current, lookup, depth = _render_slanted_plane(height, width, focal, T)
    assert 2.0 < depth.min() and depth.max() < 6.0
    bins = np.linspace(1.5, 8.0, 53)  # spacing 0.125 m, ~0.2 px of parallax per bin
    K, inv_K = _intrinsics(1, height, width, focal)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    cost, aux = cv.cost_volume(f32(current[None]), f32(lookup[None, None]), f32(T[None, None]),
                               f32(K), f32(inv_K), f32(bins))
    confident = np.asarray(aux["confidence"])[0, ..., 0] > 0
    assert confident.mean() > 0.4
    found = np.asarray(aux["lowest_cost_depth"])[0, ..., 0]
    error = np.abs(found - depth)[confident]
    spacing = bins[1] - bins[0]
    # The bin nearest the true depth wins almost everywhere (bilinear sampling of the lookup
    # features is the only approximation).
    assert np.mean(error <= spacing) > 0.95, np.percentile(error, [50, 90, 99])
    # ...and at the true depth the cost is near zero while the worst hypothesis is far off.
    costs = np.asarray(cost)[0][confident]
    assert np.median(costs.min(-1)) < 0.05 * np.median(costs.max(-1))


def test_validity_rules():
    B, h, w, C = 1, 12, 16, 4
    rng = np.random.default_rng(1)
    feats = jnp.asarray(rng.uniform(0.5, 1.5, size=(B, h, w, C)), jnp.float32)
    K, inv_K = (jnp.asarray(a, jnp.float32) for a in _intrinsics(B, h, w, focal=10.0))
    bins = jnp.linspace(1.0, 4.0, 5)
    identity = jnp.eye(4)[None, None]

    # Identity pose: every hypothesis lands on the pixel itself. Inside the 2-pixel border all
    # bins are valid (comparing different features gives a cost > 0); the border is missing.
    other = jnp.asarray(rng.uniform(0.5, 1.5, size=(B, h, w, C)), jnp.float32)
    cost, aux = cv.cost_volume(feats, other[:, None], identity, K, inv_K, bins)
    conf = np.asarray(aux["confidence"])[0, ..., 0]
    assert np.all(conf[3:-3, 3:-3] == 1)
    # Row/column 2 sit exactly on the projection limit x >= 2 (float round trip decides), so only
    # the 2-pixel border of the current frame is asserted.
    assert not conf[:2].any() and not conf[-2:].any()
    assert not conf[:, :2].any() and not conf[:, -2:].any()
    assert np.all(np.asarray(cost)[0, :2] == 0)  # border pixels: nothing valid, max of zeros

    # A zero pose marks the frame missing: all-zero volume, no confidence.
    cost, aux = cv.cost_volume(feats, other[:, None], jnp.zeros((B, 1, 4, 4)), K, inv_K, bins)
    assert float(jnp.abs(cost).max()) == 0 and float(aux["confidence"].max()) == 0

    # A sideways shift pushes the near hypotheses out of [2, w-2]: those entries are missing and
    # take the per-pixel maximum of the valid ones.
    T = jnp.asarray(_pose(0, 0, 0, 0.6, 0, 0), jnp.float32)[None, None]
    cost, aux = cv.cost_volume(feats, other[:, None], T, K, inv_K, bins)
    missing = np.asarray(aux["missing"])[0]
    y, x = 6, w - 4  # shifted by 10*0.6/d px: d=1 -> 6 px (outside), d=4 -> 1.5 px (inside)
    assert missing[y, x, 0] and not missing[y, x, -1]
    c = np.asarray(cost)[0, y, x]
    assert c[0] == pytest.approx(c[~missing[y, x]].max())
    assert np.asarray(aux["confidence"])[0, y, x, 0] == 0


def test_shapes_at_reference_size():
    """640x192, batch 12 -> a [12, 48, 160, 96] volume (traced only, nothing computed)."""
    B, h, w, C, D = 12, 48, 160, 64, 96
    spec = jax.ShapeDtypeStruct
    out = jax.eval_shape(
        lambda c, l, p, k, ik: cv.cost_volume(c, l, p, k, ik, cv.depth_bins(0.1, 10.0, D)),
        spec((B, h, w, C), jnp.float32), spec((B, 1, h, w, C), jnp.float32),
        spec((B, 1, 4, 4), jnp.float32), spec((B, 4, 4), jnp.float32),
        spec((B, 4, 4), jnp.float32),
    )
    cost, aux = out
    assert cost.shape == (B, h, w, D)
    assert aux["missing"].shape == (B, h, w, D)
    assert aux["confidence"].shape == aux["lowest_cost_depth"].shape == (B, h, w, 1)
    with pytest.raises(ValueError, match="poses"):
        cv.cost_volume(jnp.zeros((1, 8, 8, 2)), jnp.zeros((1, 1, 8, 8, 2)), jnp.zeros((1, 4, 4)),
                       jnp.eye(4)[None], jnp.eye(4)[None], jnp.ones(3))
