"""The ego-warped instance input of piece-wise pose (`piecewise.instance_input='ego_warped'`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from piecewise_scene import CAR, EGO, GainPoseNet, erode, intrinsics, one_instance_pair, render

from jdepth.training import piecewise


def _slot_error(warped: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(warped - target * mask[..., None])[mask].mean())


def test_identity_ego_motion_leaves_each_masked_source_instance_in_place():
    rng = np.random.default_rng(0)
    batch, slots, height, width = 2, 3, 10, 14
    source = jnp.asarray(rng.uniform(size=(batch, height, width, 3)), jnp.float32)
    masks = jnp.asarray(rng.uniform(size=(batch, slots, height, width)) > 0.5)
    depth = jnp.asarray(rng.uniform(1.0, 30.0, size=(batch, height, width, 1)), jnp.float32)
    K = jnp.asarray(np.broadcast_to(np.array(
        [[12.0, 0, 6.5, 0], [0, 12, 4.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), (batch, 4, 4)),
        jnp.float32)
    warped = piecewise.ego_warped_slots(source, masks, depth, jnp.tile(jnp.eye(4), (batch, 1, 1)),
                                        K, jnp.linalg.inv(K))
    assert warped.shape == (batch, slots, height, width, 3)
    np.testing.assert_allclose(warped, piecewise.masked_slots(source, masks), atol=1e-5)


@pytest.mark.parametrize("parked", [True, False])
def test_after_the_ego_warp_only_the_object_motion_is_left_to_see(parked):
    """A parked car lands on itself after the ego warp with the true depth (the residual to see
    is identity); a moving one does not. Both move in the raw masked pair (the paper's input)."""
    target, depth, target_mask = render(np.eye(4), np.eye(4))
    car = EGO if parked else CAR  # target -> source of the car's points
    source, _, source_mask = render(EGO, car)
    K = jnp.asarray(intrinsics(), jnp.float32)[None]
    warped = piecewise.ego_warped_slots(
        jnp.asarray(source)[None], jnp.asarray(source_mask)[None, None],
        jnp.asarray(depth)[None, ..., None], jnp.asarray(EGO, jnp.float32)[None], K,
        jnp.linalg.inv(K))
    inner = erode(target_mask, 2)  # the outline samples across the mask edge
    after_ego = _slot_error(np.asarray(warped[0, 0]), target, inner)
    raw = _slot_error(source * source_mask[..., None], target, inner)
    print(f"parked={parked}: car error after the ego warp {after_ego:.4f}, raw pair {raw:.4f}")
    assert raw > 0.1
    if parked:  # what is left is the sampler's interpolation of the fine car texture
        assert after_ego < 0.02 and after_ego < 0.1 * raw
    else:
        assert after_ego > 0.1


def _section(instance_input="ego_warped", instance_pose="residual_coupled"):
    section = load_config("demo_piecewise").piecewise
    section.instance_input = instance_input
    section.instance_pose = instance_pose
    return section


def _ego_view(height=6, width=8):
    K = jnp.asarray([[[5.0, 0, 3.5, 0], [0, 5, 2.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]]])
    depth = jnp.linspace(2.0, 9.0, height * width).reshape(1, height, width, 1)
    return depth, K, jnp.linalg.inv(K)


def test_ego_warped_input_feeds_the_instance_call_and_trains_neither_depth_nor_ego_pose():
    frames, batch = one_instance_pair(6)
    net, params = GainPoseNet(), {"gain": jnp.float32(1.0)}
    depth, K, inv_K = _ego_view()

    def residual(params, depth):
        g, _, _, _, _, motions = piecewise.train_poses(
            net, params, {}, frames, batch, (0, 1), _section(), jnp.int32(0),
            ego_view=(depth, K, inv_K))
        return motions[1].residual_T, g[1]

    residual_T, g = residual(params, depth)
    target_masks, source_masks = batch["instance_masks"][:, 0], batch["instance_masks"][:, 1]
    expected = piecewise.slot_poses(
        net, params, {}, 1, piecewise.masked_slots(frames[0], target_masks),
        piecewise.ego_warped_slots(frames[1], source_masks, depth, g, K, inv_K))
    np.testing.assert_allclose(residual_T, expected, rtol=1e-6)
    masked = piecewise.instance_poses(net, params, {}, 1, frames[0], frames[1], target_masks,
                                      source_masks)
    assert not np.allclose(residual_T, masked, atol=1e-4)  # another input than the paper's

    def total(params, depth):
        return jnp.sum(residual(params, depth)[0] ** 2)

    d_params, d_depth = jax.grad(total, argnums=(0, 1))(params, depth)
    np.testing.assert_array_equal(d_depth, 0.0)  # the ego view is a constant input
    assert float(jnp.abs(d_params["gain"])) > 0  # through the ego pose and the instance call


def test_ego_warped_input_is_validated():
    frames, batch = one_instance_pair(7)
    net, params = GainPoseNet(), {"gain": jnp.float32(1.0)}

    def call(section, ego_view=_ego_view()):
        return piecewise.train_poses(net, params, {}, frames, batch, (0, 1), section,
                                     jnp.int32(0), ego_view=ego_view)

    with pytest.raises(ValueError, match="needs ego_view"):
        call(_section(), ego_view=None)
    with pytest.raises(ValueError, match="'residual' or 'residual_coupled'"):
        call(_section(instance_pose="absolute"))
    with pytest.raises(ValueError, match="instance_input must be"):
        call(_section(instance_input="warped"))
    # "masked" (the default) ignores an ego view: the paper's input.
    g, w, _, _, _, motions = call(_section(instance_input="masked"))
    np.testing.assert_allclose(motions[1].residual_T, piecewise.instance_poses(
        net, params, {}, 1, frames[0], frames[1], batch["instance_masks"][:, 0],
        batch["instance_masks"][:, 1]), rtol=1e-6)
    assert load_config("monodepth2").piecewise.instance_input == "masked"
