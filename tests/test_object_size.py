"""The object-size prior of piece-wise pose (jdepth/losses/object_size.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth.losses import object_size
from jdepth.training import piecewise

FOCAL, CAR_HEIGHT = 100.0, 1.5  # a car at depth D spans FOCAL * CAR_HEIGHT / D rows
H, W = 48, 64


def _cars(depths, columns=None, top=4):
    """One frame of box 'cars' of the same real height, each spanning f H / D rows.

    Returns (depth ``[1, H, W, 1]``: the background at 50 and every car at its depth, masks
    ``[1, M, H, W]``, valid ``[1, M]``).
    """
    depth = np.full((1, H, W, 1), 50.0, np.float32)
    masks = np.zeros((1, len(depths), H, W), bool)
    for m, d in enumerate(depths):
        rows = int(round(FOCAL * CAR_HEIGHT / d))
        left = columns[m] if columns else 2 + 8 * m
        masks[0, m, top:top + rows, left:left + 6] = True
        depth[0, top:top + rows, left:left + 6] = d
    return jnp.asarray(depth), jnp.asarray(masks), jnp.ones((1, len(depths)), bool)


def test_hand_computed_prior_and_gradient():
    depth = np.ones((1, 8, 6, 1), np.float32)
    masks = np.zeros((1, 3, 8, 6), bool)
    masks[0, 0, 1:3, 0:2] = True  # 2 rows at depth 4: D h = 8
    masks[0, 1, 2:6, 2:4] = True  # 4 rows at depth 3: D h = 12
    masks[0, 2, 0:3, 4:6] = True  # touches the top row: cut by the frame, left out
    depth[0, 1:3, 0:2] = 4.0
    depth[0, 2:6, 2:4] = 3.0
    valid = jnp.ones((1, 3), bool)
    spans, clear = object_size.instance_heights(jnp.asarray(masks))
    np.testing.assert_array_equal(spans, [[2.0, 4.0, 3.0]])
    np.testing.assert_array_equal(clear, [[True, True, False]])

    prior, aux = object_size.size_prior(jnp.asarray(depth), jnp.asarray(masks), valid)
    # The median of two is their mean: log sqrt(96); both deviate by log(12 / 8) / 2. The
    # two cover 12 of the 48 pixels.
    half = np.log(1.5) / 2
    np.testing.assert_allclose(prior, 12 / 48 * half, rtol=1e-5)
    np.testing.assert_allclose(aux["size/deviation"], half, rtol=1e-5)
    assert aux["size/instances"] == 2.0

    grad = jax.grad(lambda d: object_size.size_prior(d, jnp.asarray(masks), valid)[0])(
        jnp.asarray(depth))[0, :, :, 0]
    # d/dD_p of coverage |log(mean D h) - ref| / N = coverage sign / (N area mean D).
    np.testing.assert_allclose(grad[1:3, 0:2], -0.25 / (2 * 4 * 4.0), rtol=1e-5)
    np.testing.assert_allclose(grad[2:6, 2:4], 0.25 / (2 * 8 * 3.0), rtol=1e-5)
    assert np.count_nonzero(grad) == 4 + 8  # nothing on the cut car or the background


def test_cars_of_one_height_at_their_true_depths_cost_nothing_at_any_scale():
    depth, masks, valid = _cars([5.0, 10.0, 15.0, 25.0])
    for scale in (1.0, 0.01, 7.0):
        prior, aux = object_size.size_prior(scale * depth, masks, valid)
        assert float(prior) == pytest.approx(0.0, abs=1e-6)
        assert aux["size/instances"] == 4.0


@pytest.mark.parametrize("cars", [4, 5])
def test_the_prior_does_not_move_the_common_depth_scale(cars):
    """On a flat depth (from scratch) the near cars are all above the median and the far ones
    below; an area-weighted prior would push every depth down, this one has no gradient along
    a common log-depth shift."""
    true_depth, masks, valid = _cars([5.0, 8.0, 12.0, 20.0, 30.0][:cars])
    flat = jnp.where(true_depth < 50.0, 10.0, true_depth)
    shift = jax.grad(lambda s: object_size.size_prior(jnp.exp(s) * flat, masks, valid)[0])(0.0)
    assert float(object_size.size_prior(flat, masks, valid)[0]) > 0.01
    assert float(shift) == pytest.approx(0.0, abs=1e-7)


def test_descending_the_prior_moves_the_odd_car_to_the_depth_its_size_says():
    """Three cars at their true depth and one at twice its depth (a car driving with the camera,
    pushed away by the photometric loss): the prior's gradient steps bring that car back."""
    true_depth, masks, valid = _cars([5.0, 10.0, 15.0, 25.0])
    wrong = jnp.where(masks[0, 1][None, :, :, None], 2.0 * true_depth, true_depth)
    _, aux = object_size.size_prior(wrong, masks, valid)
    # One car of four is off by log 2; the other three hold the median.
    np.testing.assert_allclose(aux["size/deviation"], np.log(2.0) / 4, rtol=1e-4)

    log_depth = jnp.log(wrong)
    loss = jax.jit(jax.grad(lambda x: object_size.size_prior(jnp.exp(x), masks, valid)[0]))
    for i in range(400):  # subgradient descent on an L1 prior: a decaying step settles
        log_depth = log_depth - 40.0 * 0.99 ** i * loss(log_depth)
    final = np.asarray(jnp.exp(log_depth))[0, :, :, 0]
    ratios = [final[np.asarray(masks[0, m])].mean() / d
              for m, d in enumerate((5.0, 10.0, 15.0, 25.0))]
    # Only depths relative to each other are the prior's: the odd car ends at the scale of the
    # other three (all four at one ratio to the truth), which moved little on the way.
    np.testing.assert_allclose(ratios, ratios[0], rtol=0.01)
    assert 0.9 < ratios[0] < 1.1
    assert float(object_size.size_prior(jnp.exp(log_depth), masks, valid)[1]["size/deviation"]
                 ) < 0.01


def test_no_signal_without_two_usable_instances_and_finite_gradients():
    depth, masks, _ = _cars([5.0, 10.0])
    for valid in (jnp.asarray([[True, False]]), jnp.zeros((1, 2), bool)):
        value = lambda d: object_size.size_prior(d, masks, valid)[0]  # noqa: E731
        assert float(value(2.0 * depth)) == 0.0
        grad = jax.grad(value)(depth)
        assert np.all(np.isfinite(grad)) and not np.any(grad)
    empty = jnp.zeros_like(masks)  # padded slots: empty masks, whatever their flag
    prior, aux = object_size.size_prior(depth, empty, jnp.ones((1, 2), bool))
    assert float(prior) == 0.0 and aux["size/instances"] == 0.0
    assert np.all(np.isfinite(jax.grad(
        lambda d: object_size.size_prior(d, empty, jnp.ones((1, 2), bool))[0])(depth)))


def test_cars_cut_by_the_bottom_of_the_frame_are_left_out():
    depth, masks, valid = _cars([5.0, 10.0, 15.0], top=H - 30)  # the 5 m car reaches row H
    _, clear = object_size.instance_heights(masks)
    np.testing.assert_array_equal(clear, [[False, True, True]])
    wrong = jnp.where(masks[0, 0][None, :, :, None], 3.0 * depth, depth)
    prior, aux = object_size.size_prior(wrong, masks, valid)
    assert float(prior) == pytest.approx(0.0, abs=1e-6) and aux["size/instances"] == 2.0


def test_target_instances_are_frame_zero_slots_from_the_start_step():
    masks = jnp.zeros((2, 3, 4, 5, 6), bool).at[:, 0, :, 1:3, 1:3].set(True)
    valid = jnp.zeros((2, 3, 4), bool).at[:, 0, :2].set(True).at[:, 1, :].set(True)
    batch = {"instance_masks": masks, "instance_valid": valid}
    section = {"start_step": 10}
    got_masks, got_valid = piecewise.target_instances(batch, section, jnp.int32(10))
    np.testing.assert_array_equal(got_masks, masks[:, 0])
    np.testing.assert_array_equal(got_valid, valid[:, 0])
    _, before = piecewise.target_instances(batch, section, jnp.int32(9))
    assert not np.any(before)
