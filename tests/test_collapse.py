"""The collapse of self-supervised depth training: its mechanism, its detection and its remedies.

The mechanism (README, "When training collapses"), reproduced on a tiny analytic scene:
  1. the photometric loss depends on depth and translation only through their ratio, so the depth
     net can shrink its depth to grow the warps as well as the pose net can grow its translation;
  2. Adam moves every weight by about the learning rate per step whatever the gradient's size, so
     a pose output layer of many weights moves the translation by lr x (sum of its input features)
     x 0.01 per step: with a 10x pose learning rate, past the basin within a few steps;
  3. once every warp leaves the image, border padding clamps every sample and the photometric
     gradient is exactly zero (and the automask prefers the unwarped frames everywhere): an
     absorbing state that no later step leaves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdepth import geometry
from jdepth.losses import monodepth as monodepth_losses
from jdepth.training import collapse
from jdepth.training.state import learning_rate_schedule

H, W = 24, 64
FX = 40.0
CX, CY = (W - 1) / 2, (H - 1) / 2
PLANE = 1.0  # depth of the fronto-parallel textured plane (model units)
# Mean input of the pose decoder's output layer: 14,000 / 256 channels reproduces the 0.03 -> 0.31
# jump of the translation in one step of the collapsed real-drive run (issue 23, base code).
FEATURE = 55.0
TRUE_T = 0.1  # forward motion between target and source, in the same units
K = jnp.asarray([[[FX, 0, CX, 0], [0, FX, CY, 0], [0, 0, 1, 0], [0, 0, 0, 1]]], jnp.float32)
INV_K = jnp.linalg.inv(K)


def _render(distance: float) -> jax.Array:
    """[1, H, W, 3] view of a textured plane from `distance`.

    The texture is noise on a grid of one pixel at the plane's distance, like real images: the
    photometric gradient points the right way only within a pixel or two of the true warp.
    """
    texture = jnp.asarray(np.random.default_rng(0).random((1, 400, 400, 3)), jnp.float32)
    v, u = jnp.meshgrid(jnp.arange(H, dtype=jnp.float32), jnp.arange(W, dtype=jnp.float32),
                        indexing="ij")
    plane_x, plane_y = (u - CX) * distance / FX, (v - CY) * distance / FX
    cells = jnp.stack([200 + plane_x * FX, 200 + plane_y * FX], -1)[None]
    return geometry.bilinear_sample(texture, cells)


TARGET = _render(PLANE)
SOURCE = _render(PLANE - TRUE_T)


def _forward(t: jax.Array) -> jax.Array:
    """[1, 4, 4] target->source transform of a camera that moved forward by t."""
    return jnp.eye(4).at[2, 3].add(-t)[None]


def _loss(depth_scale, t, automask=False, depth_normalization=False):
    depth = depth_scale * jnp.full((1, H, W, 1), PLANE)
    if depth_normalization:
        depth = depth / jnp.mean(depth)
    identity = (monodepth_losses.identity_errors(TARGET, {1: SOURCE}) if automask else None)
    loss, aux = monodepth_losses.photometric_loss_for_depth(
        depth, TARGET, {1: SOURCE}, {1: _forward(t)}, K, INV_K, identity=identity)
    return loss, aux


def test_the_loss_sees_only_the_ratio_of_translation_to_depth():
    a, _ = _loss(1.0, 0.08)
    b, _ = _loss(3.0, 0.24)
    np.testing.assert_allclose(float(a), float(b), rtol=2e-5)


def _sideways(t: float) -> jax.Array:
    return jnp.eye(4).at[0, 3].add(-t)[None]


def test_warps_out_of_the_image_are_an_absorbing_state():
    """Every warp outside the image (a sideways move of 2.5 depths): zero gradient for depth and
    translation, with or without the automask.
    A forward move past the scene is not quite absorbing: points behind the camera project to
    mirrored coordinates, whose small, meaningless gradient Adam turns into full-size steps."""
    depth = jnp.full((1, H, W, 1), 0.2)
    diag = collapse.step_diagnostics(depth, {1: _sideways(0.5)}, K, INV_K, 0.1, 100.0)
    assert float(diag["warp/outside_frac"]) == 1.0

    def loss(scale, t, automask):
        identity = monodepth_losses.identity_errors(TARGET, {1: SOURCE}) if automask else None
        return monodepth_losses.photometric_loss_for_depth(
            scale * depth, TARGET, {1: SOURCE}, {1: _sideways(t)}, K, INV_K, identity=identity)

    for automask in (False, True):
        grads = jax.grad(lambda s, t: loss(s, t, automask)[0], argnums=(0, 1))(1.0, 0.5)
        assert max(abs(float(g)) for g in grads) < 1e-6, automask  # float32 rounding only
    # ... while a small move has both gradients alive.
    grads = jax.grad(lambda s, t: loss(s, t, False)[0], argnums=(0, 1))(1.0, 0.01)
    assert all(abs(float(g)) > 1e-3 for g in grads)


def _train(pose_lr, depth_lr, steps, warmup=0, depth_normalization=False):
    """Adam on a toy depth net (one bias through Monodepth2's sigmoid disparity) and a toy pose
    net (a zero-initialised output layer over 256 ReLU features, x 0.01 as Monodepth2's).
    Returns the per-step diagnostics."""
    features = jnp.full((256,), FEATURE)
    params = {"depth_bias": jnp.array(0.0), "pose_w": jnp.zeros(256)}

    def depth_scale(p):
        disp = jax.nn.sigmoid(p["depth_bias"])
        return 1.0 / (0.01 + (10.0 - 0.01) * disp) / 0.2  # 1.0 at init (depth 0.2 -> PLANE)

    def loss_fn(p):
        t = 0.01 * jnp.dot(p["pose_w"], features)
        return _loss(depth_scale(p), t, depth_normalization=depth_normalization)[0]

    def sgd_schedule(lr):
        return learning_rate_schedule(lr, 1000, (), 1.0, warmup)

    tx = optax.multi_transform(
        {"depth": optax.adam(sgd_schedule(depth_lr)), "pose": optax.adam(sgd_schedule(pose_lr))},
        {"depth_bias": "depth", "pose_w": "pose"})
    state = tx.init(params)
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    history = []
    for _ in range(steps):
        loss, grads = value_and_grad(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        depth = depth_scale(params) * PLANE
        t = 0.01 * jnp.dot(params["pose_w"], features)
        warp_depth = 1.0 if depth_normalization else depth
        diag = collapse.step_diagnostics(jnp.full((1, H, W, 1), warp_depth), {1: _forward(t)},
                                         K, INV_K, 0.1, 100.0)
        history.append({"loss": float(loss), "ratio": float(t / warp_depth),
                        "outside": float(diag["warp/outside_frac"]),
                        "grad": float(optax.global_norm(grads))})
    return history


@pytest.mark.parametrize("depth_normalization", [False, True])
def test_a_large_pose_learning_rate_overshoots_and_stays_lost(depth_normalization):
    """The demo's former setting (pose lr x10 = 2e-3, no warm-up): the first Adam step moves the
    translation to almost 3x the truth (t / depth 0.28 against 0.1); past the basin, the noise
    texture gives no useful gradient: the translation random-walks (Adam's normalised steps on
    gradient noise) with most warps outside the image and the loss no better than at the start,
    for most of the run (whether it stumbles back late is chance)."""
    history = _train(pose_lr=2e-3, depth_lr=2e-4, steps=60,
                     depth_normalization=depth_normalization)
    assert history[0]["ratio"] > 2.5 * TRUE_T
    lost = [h for h in history if h["ratio"] > 2 * TRUE_T and h["outside"] > 0.5]
    assert len(lost) > 0.7 * len(history)
    assert np.median([h["loss"] for h in history]) > 0.9 * history[0]["loss"]


@pytest.mark.parametrize("depth_normalization", [False, True])
def test_warm_up_and_the_reference_pose_learning_rate_converge(depth_normalization):
    """The fix in the recipes (configs/demo.py): the reference's pose learning rate and a linear
    warm-up. The same toy finds the true motion."""
    history = _train(pose_lr=2e-4, depth_lr=2e-4, steps=120, warmup=26,
                     depth_normalization=depth_normalization)
    assert history[-1]["ratio"] == pytest.approx(TRUE_T, rel=0.05)
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]


def test_depth_normalization_makes_the_loss_blind_to_the_depth_scale():
    normalized = jax.grad(lambda s: _loss(s, 0.05, depth_normalization=True)[0])(0.7)
    plain = jax.grad(lambda s: _loss(s, 0.05)[0])(0.7)
    assert abs(float(normalized)) < 1e-4 * abs(float(plain))
    a, _ = _loss(0.3, 0.05, depth_normalization=True)
    b, _ = _loss(4.0, 0.05, depth_normalization=True)
    np.testing.assert_allclose(float(a), float(b), rtol=2e-5)


def test_monodepth_loss_depth_normalization_flag():
    """monodepth_loss(depth_normalization=True) warps with depth / mean: scaling every disparity's
    depth leaves the photometric term unchanged."""
    rng = np.random.default_rng(0)
    disps = {s: jnp.asarray(rng.uniform(0.05, 0.3, (1, H // 2**s, W // 2**s, 1)), jnp.float32)
             for s in range(2)}
    pyramid = {0: TARGET, 1: TARGET[:, ::2, ::2]}

    def photometric(disps, normalize):
        _, aux = monodepth_losses.monodepth_loss(
            disps, TARGET, {1: SOURCE}, {1: _forward(0.05)}, K, INV_K, pyramid, key=None,
            depth_normalization=normalize)
        return float(aux["photometric"])

    # Disparities (near 0.1-0.3 sigmoid outputs) -> depths; halving the sigmoid output roughly
    # doubles every depth: the normalised loss does not care, the plain one does.
    halved = {s: d * 0.5 for s, d in disps.items()}
    assert photometric(disps, True) == pytest.approx(photometric(halved, True), rel=2e-2)
    assert abs(photometric(disps, False) - photometric(halved, False)) > 1e-3


def test_diagnostics_and_warnings():
    depth = jnp.full((1, H, W, 1), 0.1)
    healthy = collapse.step_diagnostics(depth * 50, {1: _forward(0.0), -1: _forward(0.0)}, K,
                                        INV_K, 0.1, 100.0, jnp.ones((1, H, W, 1)))
    assert float(healthy["warp/outside_frac"]) == 0.0
    assert float(healthy["depth/at_min_frac"]) == 0.0
    assert float(healthy["automask/identity_frac"]) == 0.0
    pinned = collapse.step_diagnostics(depth, {1: _forward(5.0)}, K, INV_K, 0.1, 100.0,
                                       jnp.zeros((1, H, W, 1)))
    assert float(pinned["depth/at_min_frac"]) == 1.0
    assert float(pinned["pose/t_over_depth"]) == pytest.approx(50.0)
    host = {k: float(v) for k, v in pinned.items()} | {"grad_norm": 0.0}
    text = " | ".join(collapse.warnings(host))
    for phrase in ("minimum depth", "leave the source image", "unwarped frames", "nothing trains"):
        assert phrase in text
    assert collapse.warnings({k: float(v) for k, v in healthy.items()} | {"grad_norm": 0.3}) == []
