"""Monodepth2's --v1_multiscale objective (each scale warped at its own resolution)."""

import jax
import jax.numpy as jnp
import numpy as np

from jdepth.losses import monodepth as losses


def _inputs(seed=0, b=2, h=16, w=24):
    rng = np.random.default_rng(seed)
    target = jnp.asarray(rng.random((b, h, w, 3)), jnp.float32)
    sources = {f: jnp.asarray(rng.random((b, h, w, 3)), jnp.float32) for f in (-1, 1)}
    K = np.array([[20, 0, w / 2, 0], [0, 20, h / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    K = jnp.asarray(np.broadcast_to(K, (b, 4, 4)))
    poses = {f: jnp.broadcast_to(jnp.eye(4).at[2, 3].set(0.1 * f), (b, 4, 4)) for f in (-1, 1)}
    disp = jnp.asarray(rng.random((b, h, w, 1)), jnp.float32)
    return target, sources, K, poses, disp


def test_single_full_resolution_scale_equals_the_full_res_objective():
    target, sources, K, poses, disp = _inputs()
    inv_K = jnp.linalg.inv(K)
    full, _ = losses.monodepth_loss(
        {0: disp}, target, sources, poses, K, inv_K, {0: target}, key=None)
    v1, aux = losses.monodepth_loss_v1(
        {0: disp}, {0: target}, {f: {0: s} for f, s in sources.items()}, poses,
        K[:, None], inv_K[:, None], key=None)
    np.testing.assert_allclose(float(v1), float(full), rtol=1e-6)
    assert set(aux) >= {"photometric", "smoothness", "photometric/s0", "smoothness/s0"}


def test_coarse_scale_uses_its_own_images_and_intrinsics():
    target, sources, K, poses, disp = _inputs()
    half = lambda x: jax.image.resize(x, (x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3]),
                                      "linear")
    K1 = K.at[:, :2].multiply(0.5)
    Ks = jnp.stack([K, K1], axis=1)
    inv_Ks = jnp.linalg.inv(Ks)
    disps = {0: disp, 1: half(disp)}
    total, aux = losses.monodepth_loss_v1(
        disps, {0: target, 1: half(target)},
        {f: {0: s, 1: half(s)} for f, s in sources.items()}, poses, Ks, inv_Ks, key=None)
    _, alone_aux = losses.monodepth_loss_v1(
        {0: half(disp)}, {0: half(target)}, {f: {0: half(s)} for f, s in sources.items()},
        poses, K1[:, None], inv_Ks[:, 1:2], key=None)
    # Scale 1's photometric term is exactly the objective of the half-resolution problem.
    np.testing.assert_allclose(float(aux["photometric/s1"]), float(alone_aux["photometric/s0"]), rtol=1e-6)
    assert np.isfinite(float(total))


def test_gradients_are_finite():
    target, sources, K, poses, disp = _inputs()
    inv_K = jnp.linalg.inv(K)

    def f(d):
        return losses.monodepth_loss_v1(
            {0: d}, {0: target}, {f: {0: s} for f, s in sources.items()}, poses,
            K[:, None], inv_K[:, None], key=jax.random.PRNGKey(0))[0]

    g = jax.grad(f)(disp)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0
