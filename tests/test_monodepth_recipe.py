"""Pieces of the Monodepth2 train step that are not losses: the logged pose summary."""

import jax
import jax.numpy as jnp
import numpy as np

from jdepth import geometry
from jdepth.training import monodepth


def test_pose_summary_reports_the_translation_to_the_first_later_frame():
    forward = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    to_later = geometry.transformation_from_parameters(
        forward, jnp.array([[0.1, -0.2, -1.0], [0.3, 0.0, -2.0]])
    )
    to_earlier = geometry.transformation_from_parameters(
        forward, jnp.array([[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    )
    summary = monodepth.pose_summary({-1: to_earlier, 1: to_later})
    np.testing.assert_allclose(summary["pose/t_x"], 0.2, atol=1e-6)
    np.testing.assert_allclose(summary["pose/t_y"], -0.1, atol=1e-6)
    np.testing.assert_allclose(summary["pose/t_z"], -1.5, atol=1e-6)
    expected_norm = (np.sqrt(0.01 + 0.04 + 1.0) + np.sqrt(0.09 + 4.0)) / 2
    np.testing.assert_allclose(summary["pose/t_norm"], expected_norm, rtol=1e-6)
    # Only earlier frames (e.g. ManyDepth's lookup pair): fall back to those.
    only_earlier = monodepth.pose_summary({-1: to_later})
    np.testing.assert_allclose(only_earlier["pose/t_z"], -1.5, atol=1e-6)


def test_hold_depth_steps_freezes_only_the_depth_network_for_that_many_steps():
    import optax
    from ml_collections import config_dict

    from jdepth.training.state import make_optimizer

    optim = config_dict.ConfigDict(dict(
        lr=0.1, b1=0.9, b2=0.999, decay_epochs=(), decay_factor=0.1, grad_clip_norm=0.0,
        hold_depth_steps=2, pose_lr_scale=1.0,
    ))
    tx = make_optimizer(optim, steps_per_epoch=10)
    params = {"depth": {"w": jnp.ones(3)}, "pose": {"w": jnp.ones(2), "b": jnp.zeros(())}}
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    state = tx.init(params)
    history = []
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    np.testing.assert_array_equal(history[0]["depth"]["w"], 1.0)
    np.testing.assert_array_equal(history[1]["depth"]["w"], 1.0)
    # Adam's first step moves by lr whatever the gradient scale; the pose net moves from step 1.
    np.testing.assert_allclose(history[0]["pose"]["w"], 0.9, rtol=1e-5)
    np.testing.assert_allclose(history[2]["pose"]["w"], 0.7, rtol=1e-4)
    np.testing.assert_allclose(history[2]["depth"]["w"], 0.9, rtol=1e-4)
