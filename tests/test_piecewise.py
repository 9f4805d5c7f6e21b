"""Piece-wise pose (jdepth/training/piecewise.py): composed warp, batched instance calls, step."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import load_config, random_batch, tiny_config
from flax import linen as nn
from panoptic_helpers import fast_compiles, fill_like  # noqa: F401 (autouse fixture)
from parity_helpers import max_diff, one_vs_two_devices
from piecewise_scene import (
    CAR,
    CAR_MOTION,
    EGO,
    GainPoseNet,
    H,
    W,
    erode,
    intrinsics,
    one_instance_pair,
    scene,
    transform,
)

from jdepth import geometry
from jdepth.data import instances
from jdepth.losses import monodepth as monodepth_losses
from jdepth.losses import motion_prior as motion_prior_lib
from jdepth.training import monodepth, piecewise, recipes
from jdepth.training import parallel as parallel_lib
from jdepth.training.state import TrainState


def test_composed_warp_aligns_the_moving_car_and_the_global_warp_does_not():
    """The issue's must-show: with the true poses, only the composed warp explains the car."""
    target, depth, car_mask, source = scene()
    assert 0.05 < car_mask.mean() < 0.2
    K = jnp.asarray(intrinsics(), jnp.float32)[None]
    inv_K = jnp.linalg.inv(K)
    masks = np.stack([car_mask, np.zeros_like(car_mask)])[None]  # slot 1: padding
    garbage = transform([0.3, 0.0, 0.0], [5.0, 0.0, 0.0])  # must be ignored (invalid slot)
    per_pixel = piecewise.compose_transforms(
        jnp.asarray(EGO, jnp.float32)[None],
        jnp.asarray(np.stack([CAR, garbage]), jnp.float32)[None],
        jnp.asarray(masks), jnp.asarray([[True, False]]))
    assert per_pixel.shape == (1, H, W, 4, 4)
    errors, _ = monodepth_losses.reprojection_errors(
        jnp.asarray(depth)[None, ..., None], jnp.asarray(target)[None],
        {"composed": jnp.asarray(source)[None], "global": jnp.asarray(source)[None]},
        {"composed": per_pixel, "global": jnp.asarray(EGO, jnp.float32)[None]}, K, inv_K)
    errors = np.asarray(errors[0])
    car = erode(car_mask, 2)  # the car's outline samples across the occlusion boundary
    inner = np.zeros((H, W), bool)
    inner[4:-4, 4:-4] = True  # away from the border padding of the sampler
    wall = erode(~car_mask, 3) & inner
    composed_car, global_car = errors[car, 0].mean(), errors[car, 1].mean()
    print(f"photometric error on car pixels: composed {composed_car:.4f}, global {global_car:.4f}")
    assert composed_car < 0.01
    assert global_car > 10 * composed_car and global_car > 0.05
    # Off the car both warps use the ego pose (the per-pixel path rounds differently).
    np.testing.assert_allclose(errors[wall, 0], errors[wall, 1], atol=1e-4)
    assert errors[wall, 0].mean() < 0.01


def test_monodepth_loss_takes_per_pixel_transforms():
    rng = np.random.default_rng(0)
    batch, height, width = 2, 16, 24
    target = jnp.asarray(rng.uniform(size=(batch, height, width, 3)), jnp.float32)
    sources = {-1: jnp.roll(target, 1, axis=2), 1: jnp.roll(target, -1, axis=2)}
    poses = {f: geometry.transformation_from_parameters(
        jnp.full((batch, 3), 0.01 * f), jnp.full((batch, 3), 0.1 * f)) for f in sources}
    K = jnp.asarray(np.broadcast_to(np.array(
        [[20.0, 0, 12, 0], [0, 20, 8, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), (batch, 4, 4)), jnp.float32)
    disps = {0: jnp.full((batch, height, width, 1), 0.3), 1: jnp.full((batch, 8, 12, 1), 0.4)}
    pyramid = {0: target, 1: target[:, ::2, ::2]}
    loss = functools.partial(monodepth_losses.monodepth_loss, disps, target, sources,
                             K=K, inv_K=jnp.linalg.inv(K), target_pyramid=pyramid, key=None)
    dense = {f: jnp.broadcast_to(T[:, None, None], (batch, height, width, 4, 4))
             for f, T in poses.items()}
    np.testing.assert_allclose(loss(dense)[0], loss(poses)[0], rtol=1e-5)
    with pytest.raises(ValueError, match=r"poses\[1\]"):
        loss({-1: poses[-1], 1: dense[1][:, :8]})


def test_depth_frozen_pixels_send_no_depth_gradient_and_the_same_pose_gradient():
    rng = np.random.default_rng(1)
    batch, height, width = 2, 16, 24
    target = jnp.asarray(rng.uniform(size=(batch, height, width, 3)), jnp.float32)
    sources = {1: jnp.roll(target, -1, axis=2)}
    K = jnp.asarray(np.broadcast_to(np.array(
        [[20.0, 0, 12, 0], [0, 20, 8, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), (batch, 4, 4)), jnp.float32)
    disp = jnp.asarray(rng.uniform(0.2, 0.6, size=(batch, height, width, 1)), jnp.float32)
    frozen = np.zeros((batch, height, width, 1), bool)
    frozen[:, 4:10, 6:15] = True

    def loss(disp, translation, mask):
        pose = geometry.transformation_from_parameters(jnp.zeros((batch, 3)), translation)
        total, _ = monodepth_losses.monodepth_loss(
            {0: disp}, target, sources, {1: pose}, K, jnp.linalg.inv(K), {0: target}, key=None,
            smoothness_weight=0.0, depth_frozen_mask=mask)
        return total

    t = jnp.full((batch, 3), 0.1)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))  # op by op it took 15 s of the default run
    d_disp, d_t = grad(disp, t, None)
    d_disp_frozen, d_t_frozen = grad(disp, t, jnp.asarray(frozen))
    assert float(jnp.abs(d_disp[frozen]).sum()) > 0  # the pixels do train depth without the mask
    np.testing.assert_array_equal(np.asarray(d_disp_frozen)[frozen], 0.0)
    np.testing.assert_array_equal(np.asarray(d_disp_frozen)[~frozen], np.asarray(d_disp)[~frozen])
    np.testing.assert_allclose(d_t_frozen, d_t, rtol=1e-6)  # the poses still learn from them
    loss = jax.jit(loss)
    assert float(loss(disp, t, jnp.asarray(frozen))) == float(loss(disp, t, None))


def test_depth_frozen_mask_covers_kept_target_instances_after_the_start_step():
    _, batch = one_instance_pair(0, dropped_pixel=(5, 0))
    section = ml_collections.ConfigDict({"instance_depth_gradient": True, "start_step": 3})
    assert piecewise.depth_frozen_mask(batch, section, jnp.asarray(5)) is None
    section.instance_depth_gradient = False
    mask = np.asarray(piecewise.depth_frozen_mask(batch, section, jnp.asarray(5)))
    np.testing.assert_array_equal(mask[..., 0], np.asarray(batch["instance_masks"][:, 0, 0]))
    assert not mask[0, 5, 0, 0]  # a dropped pixel is not an instance pixel (it has weight 0)
    before = piecewise.depth_frozen_mask(batch, section, jnp.asarray(2))
    assert not np.asarray(before).any()  # warm-up: Monodepth2's objective


def test_compose_transforms_picks_the_instance_inside_its_mask_only():
    g = jnp.asarray(EGO, jnp.float32)[None]
    inst = jnp.asarray(np.stack([CAR, 2 * np.eye(4)]), jnp.float32)[None]
    masks = np.zeros((1, 2, 4, 5), bool)
    masks[0, 0, 1:3, 1:3] = True
    masks[0, 1, 3, :] = True
    out = np.asarray(piecewise.compose_transforms(g, inst, jnp.asarray(masks),
                                                  jnp.asarray([[True, False]])))
    np.testing.assert_allclose(out[0, 1, 1], CAR, atol=1e-6)
    np.testing.assert_array_equal(out[0, 3, 0], np.asarray(g[0]))  # invalid slot: global, exact
    np.testing.assert_array_equal(out[0, 0, 0], np.asarray(g[0]))


def test_residual_instance_pose_is_the_ego_pose_then_the_object_motion():
    g = jnp.asarray(EGO, jnp.float32)[None]
    net = jnp.asarray(np.stack([CAR_MOTION, np.eye(4)]), jnp.float32)[None]
    out = np.asarray(piecewise.instance_transforms(g, net, "residual"))
    np.testing.assert_allclose(out[0, 0], CAR, atol=1e-6)  # EGO @ CAR_MOTION, the scene's car
    np.testing.assert_allclose(out[0, 1], EGO, atol=1e-7)  # no own motion: moves with the ego
    np.testing.assert_array_equal(piecewise.instance_transforms(g, net, "absolute"), net)
    with pytest.raises(ValueError, match="instance_pose"):
        piecewise.instance_transforms(g, net, "relative")


def test_residual_instance_pose_sends_no_gradient_into_the_ego_pose():
    g = jnp.asarray(EGO, jnp.float32)[None]
    net = jnp.asarray(CAR_MOTION, jnp.float32)[None, None]

    def total(global_T, net_T):
        return jnp.sum(piecewise.instance_transforms(global_T, net_T, "residual") ** 2)

    d_global, d_net = jax.grad(total, argnums=(0, 1))(g, net)
    np.testing.assert_array_equal(d_global, 0.0)
    assert float(jnp.abs(d_net).sum()) > 0


def test_coupled_residual_instance_pose_is_the_same_transform_with_an_ego_gradient():
    g = jnp.asarray(EGO, jnp.float32)[None]
    net = jnp.asarray(CAR_MOTION, jnp.float32)[None, None]
    np.testing.assert_array_equal(piecewise.instance_transforms(g, net, "residual_coupled"),
                                  piecewise.instance_transforms(g, net, "residual"))

    def total(global_T, net_T):
        return jnp.sum(piecewise.instance_transforms(global_T, net_T, "residual_coupled") ** 2)

    d_global, d_net = jax.grad(total, argnums=(0, 1))(g, net)
    # d sum((G N)^2) / dG = 2 (G N) N^T, exactly.
    expected = 2 * np.einsum("ij,kj->ik", EGO @ CAR_MOTION, CAR_MOTION)
    np.testing.assert_allclose(np.asarray(d_global[0]), expected, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(d_net).sum()) > 0


# --------------------------------------------------------------------------------------------
# The batched instance call.
_CALLS = []  # input shapes of every _CountingPoseNet call (flax turns list fields into tuples)


class _CountingPoseNet(nn.Module):
    """PoseNet's interface with a per-pair result (pixel means) and a BatchNorm to update."""

    @nn.compact
    def __call__(self, frame_a, frame_b, train):
        _CALLS.append(frame_a.shape)
        pair = jnp.concatenate([frame_a, frame_b], axis=-1)
        normalised = nn.BatchNorm(use_running_average=not train, momentum=0.5)(pair)
        means = jnp.mean(pair, axis=(1, 2)) + 0.0 * jnp.mean(normalised)
        return (0.1 * means[:, :3], means[:, 3:]), {}


def test_instance_poses_are_one_batched_call_per_slot_pair():
    rng = np.random.default_rng(1)
    batch, slots, height, width = 2, 3, 8, 10
    target = jnp.asarray(rng.uniform(size=(batch, height, width, 3)), jnp.float32)
    source = jnp.asarray(rng.uniform(size=(batch, height, width, 3)), jnp.float32)
    target_masks = jnp.asarray(rng.uniform(size=(batch, slots, height, width)) > 0.5)
    source_masks = jnp.asarray(rng.uniform(size=(batch, slots, height, width)) > 0.5)
    net = _CountingPoseNet()
    variables = net.init(jax.random.PRNGKey(0), target, source, train=False)
    _CALLS.clear()
    T = piecewise.instance_poses(net, variables["params"], variables["batch_stats"], -1, target,
                                 source, target_masks, source_masks)
    assert T.shape == (batch, slots, 4, 4)
    assert _CALLS == [(batch * slots, height, width, 3)]  # one call over all B * M slots
    for b in range(batch):
        for m in range(slots):
            (axisangle, translation), _ = net.apply(
                variables, source[b:b + 1] * source_masks[b, m, ..., None],
                target[b:b + 1] * target_masks[b, m, ..., None], train=False)
            expected = geometry.transformation_from_parameters(axisangle, translation, invert=True)
            np.testing.assert_allclose(T[b, m], expected[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# The train step.
SH, SW, SLOTS = 64, 64, 2


def _config(enabled: bool, frame_ids=(0, 1)):
    # One source frame: every pose-net call is a ResNet to compile, and compiling is the cost here.
    config = tiny_config(height=SH, width=SW, batch_size=2)
    config.data.frame_ids = frame_ids
    config.data.load_panoptic = enabled
    config.piecewise.enabled = enabled
    config.piecewise.max_instances = SLOTS
    config.train.steps_per_epoch = 10
    return config


def _batch_with_instances(config, seed: int, cars: int) -> dict:
    batch = random_batch(config, 2, seed=seed)
    frames = len(config.data.frame_ids)
    ids = np.zeros((2, frames, SH, SW), np.int32)
    for c in range(cars):  # one car per slot, shifted by a pixel per frame
        for f in range(frames):
            ids[:, f, 8:24, 4 + 20 * c + f:20 + 20 * c + f] = 13001 + c
    ids[:, :, 28:30, 60:62] = 13009  # 4 px < alpha: dropped, masked out of the loss
    batch["panoptic"] = ids
    targets = [instances.match_instances(ids[b], SLOTS, 0.01) for b in range(2)]
    for key in instances.KEYS:
        batch[key] = np.stack([t[key] for t in targets])
    return batch


def _state(config, networks, tx):
    shapes = jax.eval_shape(
        functools.partial(monodepth.init_variables, networks, config), jax.random.PRNGKey(0))
    params, batch_stats = fill_like(shapes)
    return TrainState.create(params, batch_stats, tx)


def test_separate_instance_network_makes_the_instance_poses():
    frames, batch = one_instance_pair(2)
    net = GainPoseNet()
    ego = {"gain": jnp.float32(1.0)}
    other = {"gain": jnp.float32(3.0)}

    def poses(instance_net):
        return piecewise.predict_piecewise_poses(net, ego, {}, frames, batch, (0, 1),
                                                 "absolute", instance_net=instance_net)

    global_shared, warp_shared, _, _ = poses(None)
    global_separate, warp_separate, _, _ = poses((net, other, {}))
    np.testing.assert_array_equal(global_shared[1], global_separate[1])  # ego: the pose net
    np.testing.assert_array_equal(warp_separate[1][0, 0, 0], global_separate[1][0])
    target_masks = batch["instance_masks"][:, 0]
    for params, warp in ((ego, warp_shared), (other, warp_separate)):
        expected = piecewise.instance_poses(net, params, {}, 1, frames[0], frames[1],
                                            target_masks, batch["instance_masks"][:, 1])
        np.testing.assert_allclose(warp[1][0, 2, 3], expected[0, 0], rtol=1e-6)
    assert not np.allclose(warp_shared[1][0, 2, 3], warp_separate[1][0, 2, 3])


def test_warmup_is_the_global_step_until_start_step_then_piecewise():
    frames, batch = one_instance_pair(3, dropped_pixel=(5, 0))
    net, params = GainPoseNet(), {"gain": jnp.float32(1.0)}
    section = load_config("demo_piecewise").piecewise
    section.start_step = 5

    @jax.jit
    def poses_at(step):
        return piecewise.train_poses(net, params, {}, frames, batch, (0, 1), section, step)

    g0, w0, _, aux0, weights0, _ = poses_at(jnp.int32(4))
    g1, w1, _, aux1, weights1, _ = poses_at(jnp.int32(5))
    assert poses_at._cache_size() == 1  # one program, the branch picked by the traced step
    # Before: unmasked ego pair (Monodepth2's call), the global warp everywhere, nothing dropped.
    (axisangle, translation), _ = net.apply({"params": params}, frames[0], frames[1], train=False)
    np.testing.assert_allclose(
        g0[1], geometry.transformation_from_parameters(axisangle, translation), rtol=1e-6)
    np.testing.assert_array_equal(w0[1], jnp.broadcast_to(g0[1][:, None, None], w0[1].shape))
    assert np.all(np.asarray(weights0) == 1.0) and float(aux0["piecewise/active"]) == 0.0
    # From the start step: exactly predict_piecewise_poses and the dropped-pixel weights.
    g, w, _, _ = piecewise.predict_piecewise_poses(net, params, {}, frames, batch, (0, 1),
                                                   section.instance_pose)
    np.testing.assert_allclose(g1[1], g[1], rtol=1e-6)
    np.testing.assert_allclose(w1[1], w[1], rtol=1e-6)
    assert not np.allclose(g1[1], g0[1])  # the thing-masked pair gives another ego pose
    assert float(weights1[0, 5, 0, 0]) == 0.0 and float(jnp.sum(1 - weights1)) == 1.0
    assert float(aux1["piecewise/active"]) == 1.0
    assert aux0["piecewise/matched"] == aux1["piecewise/matched"] == 1.0


def test_instance_pose_none_is_the_thing_masked_ego_pose_everywhere():
    frames, batch = one_instance_pair(4, dropped_pixel=(5, 0))
    section = load_config("demo_piecewise").piecewise
    section.instance_pose = "none"
    calls = []

    class Recording(GainPoseNet):
        def __call__(self, frame_a, frame_b, train):
            calls.append(frame_a.shape)
            return super().__call__(frame_a, frame_b, train)

    net, params = Recording(), {"gain": jnp.float32(1.0)}
    g, w, _, _, weights, motions = piecewise.train_poses(
        net, params, {}, frames, batch, (0, 1), section, jnp.int32(0))
    assert motions is None  # no residual motions to put a prior on
    assert calls == [frames[0].shape]  # the ego call only, no B * M instance call
    assert weights is None  # no pixel dropped
    np.testing.assert_array_equal(w[1], g[1])
    keep = 1.0 - batch["thing_mask"].astype(jnp.float32)[..., None]
    (axisangle, translation), _ = net.apply(
        {"params": params}, frames[0] * keep[:, 0], frames[1] * keep[:, 1], train=False)
    np.testing.assert_allclose(
        g[1], geometry.transformation_from_parameters(axisangle, translation), rtol=1e-6)


def test_residual_modes_return_the_motions_of_their_valid_slots_for_the_prior():
    frames, batch = one_instance_pair(5)
    net, params = GainPoseNet(), {"gain": jnp.float32(1.0)}
    section = load_config("demo_piecewise").piecewise
    section.instance_pose = "residual_coupled"
    g, _, _, _, _, motions = piecewise.train_poses(net, params, {}, frames, batch, (0, 1),
                                                   section, jnp.int32(0))
    expected = piecewise.instance_poses(net, params, {}, 1, frames[0], frames[1],
                                        batch["instance_masks"][:, 0],
                                        batch["instance_masks"][:, 1])
    assert set(motions) == {1}
    np.testing.assert_allclose(motions[1].residual_T, expected, rtol=1e-6)
    np.testing.assert_array_equal(motions[1].global_T, g[1])
    np.testing.assert_array_equal(motions[1].valid, [[True]])
    depth = jnp.full((1, 6, 8, 1), 2.0)
    inv_K = jnp.eye(4)[None]
    prior, aux = piecewise.motion_prior(motions, depth, inv_K)
    reference, ratio = motion_prior_lib.residual_motion_prior(
        depth, inv_K, g[1], expected, batch["instance_masks"][:, 0], jnp.ones((1, 1), bool))
    np.testing.assert_allclose(prior, reference, rtol=1e-6)
    assert float(prior) > 0 and float(aux["piecewise/residual_flow_ratio"]) == float(ratio)
    assert piecewise.motion_prior(None, depth, inv_K) == (0.0, {})

    section.instance_pose = "absolute"  # no residual: nothing for the prior to hold at identity
    assert piecewise.train_poses(net, params, {}, frames, batch, (0, 1), section,
                                 jnp.int32(0))[-1] is None
    section.motion_prior_weight = 0.05
    with pytest.raises(ValueError, match="motion_prior_weight"):
        piecewise.train_poses(net, params, {}, frames, batch, (0, 1), section, jnp.int32(0))


def test_separate_instance_network_is_initialised_and_learns_at_the_pose_rate():
    config = load_config("demo_piecewise")
    config.piecewise.instance_network = "separate"
    networks = monodepth.build_networks(config)
    params, batch_stats = jax.eval_shape(
        functools.partial(monodepth.init_variables, networks, config), jax.random.PRNGKey(0))
    assert set(params) == {"depth", "pose", piecewise.INSTANCE_NET}
    assert set(batch_stats) == {"depth", "pose", piecewise.INSTANCE_NET}
    assert jax.tree_util.tree_structure(params["pose"]) == jax.tree_util.tree_structure(
        params[piecewise.INSTANCE_NET])
    from jdepth.training import state as state_lib

    tx = state_lib.make_optimizer(config.optim, steps_per_epoch=10)
    toy = {"depth": jnp.ones(2), "pose": jnp.ones(2), piecewise.INSTANCE_NET: jnp.ones(2)}
    updates, _ = tx.update(toy, tx.init(toy), toy)  # Adam's first step: -lr * sign(grad)
    lr = config.optim.lr
    np.testing.assert_allclose(updates["depth"], -lr, rtol=1e-4)
    np.testing.assert_allclose(updates["pose"], -lr * config.optim.pose_lr_scale, rtol=1e-4)
    np.testing.assert_allclose(updates[piecewise.INSTANCE_NET],
                               -lr * config.optim.pose_lr_scale, rtol=1e-4)
    config.piecewise.instance_network = "own"
    with pytest.raises(ValueError, match="instance_network"):
        monodepth.build_networks(config)


def test_config_switch_and_pipeline_settings():
    base, demo = load_config("monodepth2"), load_config("demo_piecewise")
    assert not piecewise.is_enabled(base) and piecewise.pipeline_settings(base) == {
        "max_instances": 0}
    assert piecewise.is_enabled(demo) and demo.data.load_panoptic
    assert piecewise.pipeline_settings(demo) == {"max_instances": 8, "min_instance_area": 0.01}
    assert (demo.data.height, demo.data.width, demo.train.batch_size) == (64, 192, 8)
    base.piecewise.enabled = True
    with pytest.raises(ValueError, match="load_panoptic"):
        piecewise.pipeline_settings(base)


@pytest.mark.slow
@pytest.mark.parametrize("instance_input", ["masked", "ego_warped"])
def test_piecewise_step_compiles_once_for_different_instance_counts(instance_input):
    config = _config(True, frame_ids=(0, -1))  # an earlier frame: the inverted pair order
    # The motion prior and the ego-warped input need residual instance motions (the default,
    # the paper's "absolute", has none).
    config.piecewise.instance_pose = "residual"
    config.piecewise.motion_prior_weight = 0.05
    config.piecewise.size_prior_weight = 0.1
    config.piecewise.contact_prior_weight = 0.1
    config.piecewise.instance_input = instance_input
    networks = monodepth.build_networks(config)
    state = _state(config, networks, optax.adam(1e-4))
    step_fn = functools.partial(monodepth.train_step, networks=networks, config=config)
    dp = parallel_lib.DataParallel(step_fn, mode="jit", devices=jax.local_devices()[:1])
    current = dp.put_state(state)
    metrics = []
    for seed, cars in ((0, 1), (1, 2)):
        batch = _batch_with_instances(config, seed, cars)
        current, step_metrics = dp.step(current, dp.put_batch(batch), jax.random.PRNGKey(1))
        metrics.append(dp.metrics_to_host(step_metrics))
    assert dp.num_traces == 1
    assert [m["piecewise/instances"] for m in metrics] == [1.0, 2.0]
    assert [m["piecewise/matched"] for m in metrics] == [1.0, 2.0]
    assert metrics[0]["piecewise/dropped_fraction"] == pytest.approx(4 / (SH * SW))
    for step_metrics in metrics:
        assert all(np.isfinite(v) for v in step_metrics.values()), step_metrics
        assert step_metrics["piecewise/motion_prior"] >= 0.0
        assert step_metrics["size/deviation"] >= 0.0
        assert step_metrics["contact/deviation"] >= 0.0
    final = dp.get_state(current)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(final.params))


def _capture_grads() -> optax.GradientTransformation:
    """An 'optimizer' that leaves params alone and keeps the raw gradients as its state."""
    return optax.GradientTransformation(
        lambda params: jax.tree_util.tree_map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree_util.tree_map(jnp.zeros_like, grads), grads))


@pytest.mark.slow
def test_switched_off_is_the_global_pose_step_bit_for_bit():
    """OFF == the global-pose objective rebuilt from public pieces, even with instance keys in
    the batch: same loss and gradients, bit for bit."""
    config = _config(False)
    networks = monodepth.build_networks(config)
    state = _state(config, networks, _capture_grads())
    batch = _batch_with_instances(config, 0, 2)
    rng = jax.random.PRNGKey(3)

    def reference(state, batch):
        step_rng = jax.random.fold_in(rng, state.step)
        frames, frames_aug, pyramid, K, inv_K = monodepth.prepare_batch(batch, config)
        keys = monodepth.automask_noise_key(step_rng, batch["index"])

        def loss_fn(params):
            (disps, _), _ = networks["depth"].apply(
                {"params": params["depth"], "batch_stats": state.batch_stats["depth"]},
                frames_aug[0], train=True, mutable=["batch_stats"])
            poses, _ = monodepth.predict_poses(
                networks["pose"], params["pose"], state.batch_stats["pose"], frames_aug, True)
            total, _ = monodepth.photometric_objective(
                disps, frames, pyramid, poses, K, inv_K, keys, config, step=state.step)
            return total

        return jax.value_and_grad(loss_fn)(state.params)

    step = jax.jit(functools.partial(monodepth.train_step, networks=networks, config=config,
                                     axis_name=None))
    loss, grads = jax.jit(reference)(state, batch)
    new_state, metrics = step(state, batch, rng)
    assert np.asarray(metrics["loss"]) == np.asarray(loss)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_state.opt_state, grads)
    assert not any(k.startswith("piecewise/") for k in metrics)


def test_pixel_weighted_mean_is_over_the_global_batch_under_pmap():
    """Dropped pixels differ per device: the per-device masked mean would weigh a device's
    pixels by its own kept count; with the axis the device average is the global masked mean."""
    devices = jax.local_devices()
    assert len(devices) >= 2, "tests/conftest.py must force 2 host devices"
    rng = np.random.default_rng(0)
    values = rng.random((2, 4, 4, 1)).astype(np.float32)
    weights = np.ones((2, 4, 4, 1), np.float32)
    weights[0, :3] = 0.0  # sample 0 keeps 4 pixels, sample 1 all 16
    expected = np.sum(weights * values) / np.sum(weights)
    one = jax.jit(monodepth_losses.masked_mean)(values, weights)
    assert float(one) == pytest.approx(expected, rel=1e-6)

    def on_devices(axis_name):
        fn = functools.partial(monodepth_losses.masked_mean, axis_name=axis_name)
        out = jax.pmap(fn, axis_name="batch", devices=devices[:2])(
            values.reshape(2, 1, 4, 4, 1), weights.reshape(2, 1, 4, 4, 1))
        return float(np.mean(out))

    assert on_devices("batch") == pytest.approx(expected, rel=1e-6)
    assert abs(on_devices(None) - expected) > 0.01  # the per-device mean it replaces


def _parity_batch(config, seed: int) -> dict:
    """Sample 0: one car over a crowd region (cars without instance ids: dropped, 3/8 of the
    image); sample 1: two cars, nothing dropped. On 2 devices each holds one sample, so the
    kept-pixel counts differ per device by far more than the tolerances below."""
    batch = random_batch(config, 2, seed=seed)
    frames = len(config.data.frame_ids)
    ids = np.zeros((2, frames, SH, SW), np.int32)
    ids[0, :, 40:] = 13  # crowd: weight 0 in the photometric mean
    for b, cars in ((0, 1), (1, 2)):
        for c in range(cars):
            for f in range(frames):
                ids[b, f, 8 + 24 * b:24 + 24 * b, 4 + 20 * c + f:20 + 20 * c + f] = 13001 + c
    batch["panoptic"] = ids
    targets = [instances.match_instances(ids[b], SLOTS, 0.01) for b in range(2)]
    for key in instances.KEYS:
        batch[key] = np.stack([t[key] for t in targets])
    return batch


@pytest.mark.slow
@pytest.mark.parametrize("instance_pose", [
    "absolute",
    # Open (issue 24, item 8), the deviation option only: with the crowd's zero pixel weights the
    # pose encoder differs by ~2e-5 after 2 SGD steps (update 1.1e-2; 6 % of layer4_1's own
    # update) while loss, photometric term and BatchNorm statistics agree. Without the crowd it
    # matches to 2e-7; the paper's "absolute" matches to 1.2e-7 with it. Strict: a fix shows.
    pytest.param("residual", marks=pytest.mark.xfail(strict=True, reason="issue 24 item 8")),
])
def test_pmap_two_devices_match_one_device_piecewise_step(instance_pose):
    config = _config(True)
    config.piecewise.instance_pose = instance_pose
    recipe = recipes.get(config.recipe)
    shapes = jax.eval_shape(functools.partial(
        recipe.init_variables, recipe.build_networks(config), config), jax.random.PRNGKey(0))
    params, batch_stats = fill_like(shapes)
    batches = [_parity_batch(config, seed) for seed in (0, 1)]
    assert batches[0]["dropped_mask"][0].mean() > 0.3 and not batches[0]["dropped_mask"][1].any()
    (single, m1), (double, m2) = one_vs_two_devices(recipe, config, params, batch_stats, batches)
    for a, b in zip(m1, m2):
        for name in ("loss", "photometric", "piecewise/dropped_fraction"):
            assert b[name] == pytest.approx(a[name], rel=1e-4), name
    # The per-device masked mean this replaces weighs the devices' pixels 5 : 8 here: its loss is
    # 0.8 % off the 1-device loss, far outside the tolerance above.
    assert max_diff(single.batch_stats, double.batch_stats) < 1e-4
    update = max_diff(single.params, params)
    difference = max_diff(single.params, double.params)
    assert difference < 1e-4 * update, (difference, update)
