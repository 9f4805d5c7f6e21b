"""The ground-contact prior of piece-wise pose (jdepth/losses/ground_contact.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth.losses import ground_contact

H, W = 10, 8


def _scene():
    """Road at depth 5 everywhere; car 0 (rows 2-4, cols 1-3) at depth 8; car 1 (rows 6-8) ends
    one row above the image bottom, so it has no full ground band below it."""
    masks = np.zeros((1, 2, H, W), bool)
    masks[0, 0, 2:5, 1:4] = True
    masks[0, 1, 6:9, 5:8] = True
    depth = np.full((1, H, W, 1), 5.0, np.float32)
    depth[0, 2:5, 1:4] = 8.0
    return jnp.asarray(depth), jnp.asarray(masks), jnp.asarray(masks.any(1))


def test_base_is_the_lowest_rows_and_ground_the_road_rows_below_within_the_span():
    _, masks, thing = _scene()
    base, ground = ground_contact.contact_regions(masks, thing)
    expected_base = np.zeros((H, W), bool)
    expected_base[3:5, 1:4] = True
    expected_ground = np.zeros((H, W), bool)
    expected_ground[5:7, 1:4] = True
    np.testing.assert_array_equal(base[0, 0], expected_base)
    np.testing.assert_array_equal(ground[0, 0], expected_ground)
    # Car 1's ground band would run off the image: only row 9 is left below it.
    assert int(jnp.sum(ground[0, 1])) == 3


def test_thing_pixels_below_a_car_are_not_its_ground():
    depth, masks, thing = _scene()
    occluder = thing.at[0, 5:7, 1:3].set(True)  # another car's pixels under two of the columns
    _, ground = ground_contact.contact_regions(masks, occluder)
    assert int(jnp.sum(ground[0, 0])) == 2  # column 3 only, rows 5 and 6
    hidden = thing.at[0, 5:7, 1:4].set(True)
    prior, aux = ground_contact.contact_prior(depth, masks, jnp.ones((1, 2), bool), hidden)
    assert float(prior) == 0.0 and aux["contact/instances"] == 0.0  # no ground: not used


def test_hand_computed_prior_and_gradient_reach_the_car_base_only():
    depth, masks, thing = _scene()
    valid = jnp.ones((1, 2), bool)
    prior, aux = ground_contact.contact_prior(depth, masks, valid, thing)
    # One usable car: |log 8 - log 5|, its 6 base pixels over the 80 pixels of the batch.
    np.testing.assert_allclose(prior, 6 / 80 * np.log(8 / 5), rtol=1e-6)
    np.testing.assert_allclose(aux["contact/deviation"], np.log(8 / 5), rtol=1e-6)
    assert aux["contact/instances"] == 1.0

    grad = jax.grad(lambda d: ground_contact.contact_prior(d, masks, valid, thing)[0])(depth)
    grad = np.asarray(grad[0, :, :, 0])
    # d/dD_p (6/80) |log(mean base depth) - log(mean ground depth)|: (6/80) / (6 * 8) on each
    # base pixel, -(6/80) / (6 * 5) on each ground pixel; the car's upper row gets nothing.
    np.testing.assert_allclose(grad[3:5, 1:4], 6 / 80 / (6 * 8.0), rtol=1e-6)
    np.testing.assert_allclose(grad[5:7, 1:4], -6 / 80 / (6 * 5.0), rtol=1e-6)
    assert np.count_nonzero(grad) == 12
    # No gradient along a common log-depth shift: the prior cannot move the depth scale.
    shift = jax.grad(lambda s: ground_contact.contact_prior(jnp.exp(s) * depth, masks, valid,
                                                            thing)[0])(0.0)
    assert float(shift) == pytest.approx(0.0, abs=1e-8)


def test_zero_when_the_car_base_is_at_the_road_depth_at_any_scale():
    depth, masks, thing = _scene()
    flat = jnp.full_like(depth, 5.0)
    for scale in (1.0, 0.02, 30.0):
        prior, _ = ground_contact.contact_prior(scale * flat, masks, jnp.ones((1, 2), bool), thing)
        assert float(prior) == pytest.approx(0.0, abs=1e-7)


def test_descending_the_prior_joins_the_car_base_and_the_road_below_it_only():
    depth, masks, thing = _scene()
    valid = jnp.ones((1, 2), bool)
    grad = jax.jit(jax.grad(lambda x: ground_contact.contact_prior(
        jnp.exp(x), masks, valid, thing)[0]))
    log_depth = jnp.log(depth)
    for i in range(300):
        log_depth = log_depth - 40.0 * 0.98 ** i * grad(log_depth)
    final = np.asarray(jnp.exp(log_depth))[0, :, :, 0]
    # Equal pulls in log depth on the two sides: they meet at the geometric mean.
    np.testing.assert_allclose(final[3:7, 1:4], np.sqrt(8.0 * 5.0), rtol=0.01)
    np.testing.assert_array_equal(final[2, 1:4], 8.0)  # above the base: untouched
    rest = np.ones((H, W), bool)
    rest[2:7, 1:4] = False
    np.testing.assert_array_equal(final[rest], 5.0)


def test_empty_and_invalid_slots_give_no_signal_and_finite_gradients():
    depth, masks, thing = _scene()
    for valid, slots in ((jnp.zeros((1, 2), bool), masks), (jnp.ones((1, 2), bool),
                                                             jnp.zeros_like(masks))):
        value = lambda d: ground_contact.contact_prior(d, slots, valid, thing)[0]  # noqa: E731
        assert float(value(depth)) == 0.0
        grad = jax.grad(value)(depth)
        assert np.all(np.isfinite(grad)) and not np.any(grad)


def test_both_object_priors_hold_on_the_rendered_drives_and_catch_a_wrong_car(synthetic_root):
    """On exact depth the contact and size priors are small; a car pushed to twice its depth
    (what the photometric loss does to a car driving with the camera) stands out in both."""
    import os

    from jdepth.data import kitti, pipeline
    from jdepth.eval import regions
    from jdepth.losses import object_size

    cfg = pipeline.PipelineConfig(root=synthetic_root, height=64, width=96, load_panoptic=True,
                                  max_instances=8)
    refs = kitti.read_split_file(f"{synthetic_root}/splits/train_files.txt")
    contact_devs, size_devs, pushed_devs = [], [], []
    for index, ref in enumerate(refs):
        sample = pipeline.load_sample((index, ref), None, cfg, train=False)
        depth = kitti.load_benchmark_depth(kitti.benchmark_gt_path(synthetic_root, ref))
        masks = jnp.asarray(sample["instance_masks"][None, 0])
        valid = jnp.asarray(sample["instance_valid"][None, 0])
        thing = jnp.asarray(sample["thing_mask"][None, 0])
        exact = jnp.asarray(depth[None, :, :, None])
        _, aux = ground_contact.contact_prior(exact, masks, valid, thing)
        if aux["contact/instances"] > 0:
            contact_devs.append(float(aux["contact/deviation"]))
        _, aux = object_size.size_prior(exact, masks, valid)
        if aux["size/instances"] > 0:
            size_devs.append(float(aux["size/deviation"]))
        moving = regions.moving_panoptic_ids(os.path.join(synthetic_root, ref.folder))
        for slot in np.flatnonzero(sample["instance_valid"][0]):
            car = sample["instance_masks"][0, slot]
            if int(np.unique(sample["panoptic"][0][car])[0]) not in moving:
                continue
            one = jnp.asarray(np.eye(masks.shape[1], dtype=bool)[slot][None]) & valid
            pushed = jnp.where(jnp.asarray(car)[None, :, :, None], 2.0 * exact, exact)
            _, aux = ground_contact.contact_prior(pushed, masks, one, thing)
            if aux["contact/instances"] > 0:
                pushed_devs.append(float(aux["contact/deviation"]))
    assert len(contact_devs) >= 5 and len(size_devs) >= 5 and len(pushed_devs) >= 2
    assert np.mean(contact_devs) < 0.04, contact_devs  # 0.018 at 96x64
    assert np.mean(size_devs) < 0.08, size_devs  # 0.038
    np.testing.assert_allclose(pushed_devs, np.log(2.0), atol=0.04)
