"""ISSL (jdepth/losses/issl.py): self-sample geometry, schedule, loss and the wired train step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config, random_batch, tiny_config

from jdepth import geometry
from jdepth.losses import issl
from jdepth.training import issl_plugin
from jdepth.training import collapse, monodepth
from jdepth.training import parallel as parallel_lib
from jdepth.training.state import TrainState

H, W, F, Z = 8, 12, 10.0, 5.0

# One compilation per shape instead of op-by-op dispatch.
_generate = jax.jit(issl.generate_self_samples, static_argnums=5)


def _camera():
    K = np.array([[F, 0, 5.5, 0], [0, F, 3.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    return K[None], np.linalg.inv(K).astype(np.float32)[None]


def _plane(depth=Z):
    """A fronto-parallel plane: constant depth."""
    return np.full((1, H, W, 1), depth, np.float32)


def _transform(axisangle=(0.0, 0.0, 0.0), translation=(0.0, 0.0, 0.0)):
    """[1, 1, 4, 4] M = T(t) @ R(v) as the generator uses it."""
    m = geometry.transformation_from_parameters(
        jnp.asarray([axisangle], jnp.float32), jnp.asarray([translation], jnp.float32)
    )
    return np.asarray(m)[None]


def _random_image(seed=0):
    return np.random.default_rng(seed).random((1, H, W, 3)).astype(np.float32)


def test_identity_transform_reproduces_image_and_depth_and_gives_zero_loss():
    K, inv_K = _camera()
    image = _random_image()
    depth = np.random.default_rng(1).uniform(1.0, 4.0, (1, H, W, 1)).astype(np.float32)
    identity = np.broadcast_to(np.eye(4, dtype=np.float32), (1, 2, 4, 4))
    for in_self_frame in (True, False):
        samples = _generate(image, depth, identity, K, inv_K, in_self_frame)
        assert samples.image.shape == (2, H, W, 3) and samples.valid.shape == (2, H, W, 1)
        inner = (slice(None), slice(1, -1), slice(1, -1))
        np.testing.assert_allclose(samples.image[inner], np.repeat(image, 2, 0)[inner], atol=1e-5)
        np.testing.assert_allclose(samples.depth[inner], np.repeat(depth, 2, 0)[inner], atol=1e-5)
        assert bool(np.all(samples.valid[inner]))
        # The network predicting exactly the sampled depth: zero loss, with or without scaling.
        for median_scaling in (True, False):
            loss = issl.issl_loss(samples.depth, samples.depth, samples.valid, median_scaling)
            assert float(loss) == 0.0


def test_x_translation_shifts_by_f_t_over_z_and_masks_pixels_leaving_the_image():
    K, inv_K = _camera()
    shift = 1.5  # pixels: f * t / Z
    move = _transform(translation=(shift * Z / F, 0.0, 0.0))
    ramp = np.broadcast_to(0.1 * np.arange(W, dtype=np.float32)[None, None, :, None], (1, H, W, 3))
    samples = _generate(ramp, _plane(), move, K, inv_K)
    cols = np.arange(W)
    # X_t = X_self + t: self-sample pixel u shows the target's pixel u + f t / Z.
    valid_cols = cols + shift <= W - 1
    expected = 0.1 * (cols + shift)
    got = np.asarray(samples.image)[0][:, valid_cols]
    np.testing.assert_allclose(got, np.broadcast_to(expected[valid_cols, None], got.shape),
                               atol=1e-5)
    np.testing.assert_array_equal(samples.valid[0, :, :, 0], np.broadcast_to(valid_cols, (H, W)))
    # A sideways move of a fronto-parallel plane leaves its depth unchanged.
    np.testing.assert_allclose(samples.depth[0][samples.valid[0]], Z, rtol=1e-6)


def test_validity_mask_rejects_points_behind_the_camera():
    K, inv_K = _camera()
    behind = _transform(translation=(0.0, 0.0, -2.0 * Z))  # moved z = Z - 2Z < 0
    samples = _generate(_random_image(), _plane(), behind, K, inv_K)
    assert not bool(np.any(samples.valid))


def test_target_depth_is_the_self_sample_camera_depth():
    K, inv_K = _camera()
    # Pure rotation: the warp is an exact homography; on the plane z = Z (frame t) the self
    # camera (X_t = R X_self) sees depth Z / (R[2, :] . K^-1 (u, v, 1)) at pixel (u, v).
    move = _transform(axisangle=(0.03, -0.15, 0.05))
    rotation = move[0, 0, :3, :3]
    xs, ys = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([xs, ys, np.ones_like(xs)], -1).astype(np.float32) @ inv_K[0, :3, :3].T
    expected = Z / (rays @ rotation[2])
    samples = _generate(_random_image(), _plane(), move, K, inv_K)
    valid = samples.valid[0, ..., 0]
    assert 0.3 < valid.mean() < 1.0
    np.testing.assert_allclose(samples.depth[0, ..., 0][valid], expected[valid], rtol=1e-5)
    literal = _generate(_random_image(), _plane(), move, K, inv_K, False)
    np.testing.assert_allclose(literal.depth[0, ..., 0][valid], Z, rtol=1e-6)
    # Forward translation by t_z: the plane is t_z closer to the self camera.
    forward = _transform(translation=(0.0, 0.0, 0.5))
    samples = _generate(_random_image(), _plane(), forward, K, inv_K)
    np.testing.assert_allclose(samples.depth[samples.valid], Z - 0.5, rtol=1e-6)


def test_theta_r_schedule_endpoints_and_linearity():
    def theta(step):
        return float(issl.theta_r_schedule(step, steps_per_epoch=100, num_epochs=20))

    assert theta(0) == pytest.approx(0.005, abs=1e-9)
    assert theta(99) == pytest.approx(0.005, abs=1e-9)  # constant within an epoch
    assert theta(100) == pytest.approx(0.005 + 0.195 / 19, rel=1e-6)
    assert theta(19 * 100) == pytest.approx(0.2, rel=1e-6)  # the last epoch
    assert theta(20 * 100 - 1) == pytest.approx(0.2, rel=1e-6)
    assert theta(50 * 100) == pytest.approx(0.2, rel=1e-6)  # clipped after the end
    jitted = jax.jit(lambda s: issl.theta_r_schedule(s, 100, 20))(jnp.int32(1000))
    assert float(jitted) == pytest.approx(0.005 + 0.195 * 10 / 19, rel=1e-6)


def test_training_epochs_follow_max_steps_and_need_steps_per_epoch():
    config = load_config("monodepth2")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        issl_plugin.training_epochs(config)
    config.train.steps_per_epoch = 10
    assert issl_plugin.training_epochs(config) == (10, 20)
    config.train.max_steps = 35
    assert issl_plugin.training_epochs(config) == (10, 4)


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_random_transform_ranges(distribution):
    key = jax.random.PRNGKey(3)
    rot, trans = issl.sample_rigid_parameters(key, 4000, 0.2, 0.005, distribution)
    rot, trans = np.asarray(rot), np.asarray(trans)
    assert rot.shape == trans.shape == (4000, 3)
    assert np.abs(rot).max() <= 0.2 + 1e-7 and np.abs(trans).max() <= 0.005 + 1e-9
    if distribution == "uniform":
        assert np.abs(rot).max() > 0.199
        assert np.std(rot) == pytest.approx(0.2 / np.sqrt(3), rel=0.05)
    else:  # std theta / 2, clipped at theta (about 4.6 % of the draws)
        assert np.std(rot) == pytest.approx(0.0962, rel=0.05)
        assert 0.02 < np.mean(np.abs(rot) >= 0.2 - 1e-7) < 0.08
    with pytest.raises(ValueError, match="distribution"):
        issl.sample_rigid_parameters(key, 4, 0.2, 0.005, "laplace")


def test_sample_transforms_are_rigid_and_keyed_per_image():
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(3))
    moves = np.asarray(issl.sample_transforms(keys, 4, 0.2, 0.005))
    assert moves.shape == (3, 4, 4, 4)
    rotations = moves[..., :3, :3]
    np.testing.assert_allclose(rotations @ np.swapaxes(rotations, -1, -2),
                               np.broadcast_to(np.eye(3), rotations.shape), atol=1e-6)
    # The draw of image i depends on its key only (not on the batch it is in).
    alone = np.asarray(issl.sample_transforms(keys[1:2], 4, 0.2, 0.005))
    np.testing.assert_array_equal(alone[0], moves[1])
    assert not np.allclose(moves[0], moves[1])


def test_masked_median_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.random((3, 4, 5, 1)).astype(np.float32)
    mask = rng.random((3, 4, 5, 1)) > 0.4
    mask[2] = False
    got = np.asarray(issl.masked_median(values, mask))
    for n in range(2):
        assert got[n] == pytest.approx(np.median(values[n][mask[n]]), rel=1e-6)
    assert got[2] == 1.0


def test_median_scaling_makes_the_loss_scale_invariant():
    rng = np.random.default_rng(0)
    target = rng.uniform(1.0, 10.0, (2, 6, 7, 1)).astype(np.float32)
    pred = (target * rng.uniform(0.8, 1.25, target.shape)).astype(np.float32)
    valid = rng.random(target.shape) > 0.2
    base = float(issl.issl_loss(pred, target, valid))
    assert base > 0.01
    assert float(issl.issl_loss(7.3 * pred, target, valid)) == pytest.approx(base, rel=1e-5)
    unscaled = float(issl.issl_loss(pred, target, valid, median_scaling=False))
    assert float(issl.issl_loss(7.3 * pred, target, valid, False)) > unscaled + 0.5
    # Hand value: |1 - 3| / (1 + 3) on the valid pixels; invalid garbage ignored.
    ones, threes = np.ones((1, 2, 2, 1), np.float32), np.full((1, 2, 2, 1), 3.0, np.float32)
    mask = np.array([True, True, True, False]).reshape(1, 2, 2, 1)
    garbage = np.where(mask, threes, -5.0)
    assert float(issl.issl_loss(ones, garbage, mask, median_scaling=False)) == pytest.approx(0.5)
    # Gradient exists and is finite even for a self-sample without valid pixels.
    grad = jax.grad(lambda p: issl.issl_loss(p, target, np.zeros_like(valid)))(pred)
    assert np.all(np.isfinite(grad))


def test_objective_trains_the_self_sample_prediction_only():
    K, inv_K = _camera()
    image, depth = _random_image(), _plane() + np.linspace(0, 1, W, dtype=np.float32)[:, None]
    keys = jax.random.PRNGKey(0)[None]
    issl_config = load_config("monodepth2").issl

    def depth_fn(params, batch_stats, images):
        assert images.shape == (4, H, W, 3)  # n_k self-samples in one call
        return 1.0 + params["a"] * jnp.mean(images, axis=-1, keepdims=True)

    def objective(params, image, depth):
        return issl.issl_objective(depth_fn, params, None, image, depth, K, inv_K, keys, 0.1,
                                   issl_config)[0]

    grads = jax.grad(objective, argnums=(0, 1, 2))({"a": jnp.float32(0.5)}, image, depth)
    assert abs(float(grads[0]["a"])) > 1e-4
    # The self-samples and their target depth are data: no gradient into D_t or I_t.
    assert not np.any(grads[1]) and not np.any(grads[2])


def _reference_step(state, batch, rng, *, networks, config, axis_name):
    """The Monodepth2 step without any plug-in, written out (the plug-in protocol absent)."""
    step_rng = jax.random.fold_in(rng, state.step)
    frames, frames_aug, pyramid, K, inv_K = monodepth.prepare_batch(batch, config)
    sample_keys = monodepth.automask_noise_key(step_rng, batch["index"])

    def loss_fn(params):
        depth_vars = {"params": params["depth"], "batch_stats": state.batch_stats["depth"]}
        (disps, _), depth_updates = networks["depth"].apply(
            depth_vars, frames_aug[0], train=True, mutable=["batch_stats"]
        )
        depth = geometry.disp_to_depth(disps[0], config.model.min_depth, config.model.max_depth)[1]
        poses, pose_stats = monodepth.predict_poses(
            networks["pose"], params["pose"], state.batch_stats["pose"], frames_aug, train=True
        )
        total, aux = monodepth.photometric_objective(
            disps, frames, pyramid, poses, K, inv_K, sample_keys, config
        )
        # Logging only, added after ISSL: pose summary and collapse diagnostics.
        aux = {**aux, **monodepth.pose_summary(poses), **collapse.step_diagnostics(
            depth, poses, K, inv_K, config.model.min_depth, config.model.max_depth,
            aux.get("identity_selection"), warp_depth=aux.get("depth"))}
        return total, (aux, {"depth": depth_updates["batch_stats"], "pose": pose_stats})

    (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, batch_stats)
    metrics = {"loss": loss, **{k: v for k, v in aux.items() if jnp.ndim(v) == 0}}
    metrics["grad_norm"] = monodepth._global_norm(grads)
    return new_state, metrics


def _setup(enabled: bool, abstract: bool = False):
    """Tiny config, networks and a fresh state (shapes only when ``abstract``).

    The concrete state is filled in numpy (He-normal kernels, unit BatchNorm) from the abstract
    one: initialising two ResNet-18s costs more than compiling the step, op by op or jitted.
    """
    config = tiny_config(height=64, width=64, batch_size=2)
    config.issl.enabled = enabled
    config.train.steps_per_epoch = 10
    networks = monodepth.build_networks(config, bn_axis_name=None)
    shapes = jax.eval_shape(
        functools.partial(monodepth.init_variables, networks, config), jax.random.PRNGKey(0)
    )
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)
        if name in ("bias", "mean"):
            return np.zeros(leaf.shape, leaf.dtype)
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        raise ValueError(f"tests/test_issl.py: no filler for parameter {name!r}")

    params, batch_stats = shapes if abstract else jax.tree_util.tree_map_with_path(fill, shapes)
    create = functools.partial(TrainState.create, tx=optax.adam(1e-4))
    state = jax.eval_shape(create, params, batch_stats) if abstract else create(params, batch_stats)
    return config, networks, state


def test_disabled_issl_leaves_the_step_program_unchanged():
    config, networks, state = _setup(enabled=False, abstract=True)
    batch = jax.tree_util.tree_map(jnp.asarray, random_batch(config, 2))
    args = (state, batch, jax.random.PRNGKey(1))
    current = jax.make_jaxpr(functools.partial(
        monodepth.train_step, networks=networks, config=config, axis_name=None))(*args)
    reference = jax.make_jaxpr(functools.partial(
        _reference_step, networks=networks, config=config, axis_name=None))(*args)
    # Identical programs: the loss (and everything else) is bit-identical to the pre-ISSL step.
    assert str(current) == str(reference)


@pytest.mark.slow
def test_train_step_with_issl_runs_once_compiled_and_logs_the_term():
    config, networks, state = _setup(enabled=True)
    batches = [random_batch(config, 2, seed=i) for i in range(2)]
    # What the main pass alone does to the depth network's BatchNorm running statistics.
    depth_vars = {"params": state.params["depth"], "batch_stats": state.batch_stats["depth"]}

    @jax.jit
    def main_pass_statistics(batch):
        _, frames_aug, *_ = monodepth.prepare_batch(batch, config)
        _, updates = networks["depth"].apply(
            depth_vars, frames_aug[0], train=True, mutable=["batch_stats"]
        )
        return updates["batch_stats"]

    expected_stats = jax.device_get(main_pass_statistics(batches[0]))

    step_fn = functools.partial(monodepth.train_step, networks=networks, config=config)
    dp = parallel_lib.DataParallel(step_fn, mode="jit", devices=jax.local_devices()[:1])
    current = dp.put_state(state)
    metrics, states = [], []
    for batch in batches:
        current, step_metrics = dp.step(current, dp.put_batch(batch), jax.random.PRNGKey(1))
        metrics.append(dp.metrics_to_host(step_metrics))
        states.append(dp.get_state(current))
    assert dp.num_traces == 1  # two steps, one compilation
    for step_metrics in metrics:
        for key in ("loss", "issl", "issl/unweighted", "grad_norm"):
            assert np.isfinite(step_metrics[key]), key
        assert step_metrics["issl"] > 0.0
    first = metrics[0]
    assert first["issl"] == pytest.approx(0.1 * first["issl/unweighted"], rel=1e-6)
    assert first["issl/theta_r"] == pytest.approx(0.005, rel=1e-6)
    assert 0.3 < first["issl/valid_fraction"] <= 1.0
    assert first["loss"] == pytest.approx(
        first["photometric"] + first["smoothness"] + first["issl"], rel=1e-5)
    # BatchNorm running statistics are the main pass's; the self-sample pass leaves them alone.
    for got, want in zip(jax.tree_util.tree_leaves(states[0].batch_stats["depth"]),
                         jax.tree_util.tree_leaves(expected_stats)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(states[1].params))
